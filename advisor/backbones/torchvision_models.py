"""torchvision classifiers as backbones: weights from the torch hub cache, taps found by probing output shapes."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from advisor.backbones.backbone import (
    PRE_LOGITS,
    Backbone,
    TapInfo,
    TransformConfig,
    _module_path,
    _on_meta,
)
from advisor.backbones.weights import (
    _WEIGHTS_HINT,
    WeightsPath,
    _load_state_dict,
    _random_init,
    _read_state_dict,
    _seeded,
    _torch_hub_checkpoint,
    _WeightsLocation,
)
from advisor.core.errors import BackboneError

# --------------------------------------------------------------------------- torchvision models


def _create_torchvision_model(arch: str) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        raise BackboneError(
            f"unknown torchvision classification model {arch!r}"
            + (f"; close matches: {', '.join(close)}" if close else ""),
            hint="see torchvision.models.list_models(module=torchvision.models)",
        )
    return torchvision.models.get_model(arch, weights=None)


def _torchvision_default_weights(arch: str) -> Any | None:
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except Exception:  # architectures without published weights
        return None




def _locate_torchvision_weights(arch: str) -> _WeightsLocation:
    default = _torchvision_default_weights(arch)
    if default is None:
        return _WeightsLocation(False, None, f"torchvision publishes no weights for {arch}; {_WEIGHTS_HINT}")
    path = _torch_hub_checkpoint(default.url)
    if os.path.isfile(path):
        return _WeightsLocation(True, path, None)
    hint = (
        f"{_WEIGHTS_HINT}, or download once with network: "
        f"python -c \"import torchvision; torchvision.models.get_model('{arch}', weights='DEFAULT')\""
    )
    return _WeightsLocation(False, path, hint)


def _torchvision_taps(arch: str, model: nn.Module, size: int) -> tuple[list[TapInfo], list[str]]:
    """Find stage outputs and the classifier input; channels and strides come from a dummy pass."""
    name = f"torchvision/{arch}"
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):  # ResNet, ResNeXt, Wide ResNet
        candidates = [f"layer{i}" for i in range(1, 5)]
    else:
        sequentials = ("features", "trunk_output")
        container = next((a for a in sequentials if isinstance(getattr(model, a, None), nn.Sequential)), None)
        if container is None:
            raise BackboneError(
                f"{name}: unsupported structure (no layer1..layer4, features or trunk_output stages)",
                hint=f"try timm/{arch} if timm has it",
            )
        candidates = [f"{container}.{child}" for child, _ in getattr(model, container).named_children()]
    heads = ("fc", "classifier", "heads", "head")
    head = next((getattr(model, a) for a in heads if isinstance(getattr(model, a, None), nn.Module)), None)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)] if head is not None else []
    if not linears:
        raise BackboneError(f"{name}: unsupported structure (no nn.Linear classifier to tap pre_logits from)")
    head_path = _module_path(model, linears[-1])

    shapes = _probe_output_shapes(arch, model, candidates, size)
    taps: list[TapInfo] = []
    channels_last: list[str] = []
    # A stage ends where the next candidate changes stride; its last module is the stage output.
    strided = [
        (path, *_channels_stride(shapes[path], size))
        for path in candidates
        if len(shapes.get(path, ())) == 4
    ]
    for i, (path, channels, stride, nhwc) in enumerate(strided):
        if i + 1 < len(strided) and strided[i + 1][2] == stride:
            continue
        tap = TapInfo(name=f"stage{len(taps) + 1}", channels=channels, stride=stride, module=path)
        taps.append(tap)
        if nhwc:
            channels_last.append(tap.name)
    if not taps:
        raise BackboneError(f"{name}: unsupported structure (its stages do not produce feature maps)")
    # avgpool -> flatten -> (dropout) -> the last Linear: pre_logits is the mean of avgpool's input map.
    between = [m for m in head.modules() if m is not head and m is not linears[-1] and not isinstance(m, nn.Sequential)]
    pool = getattr(model, "avgpool", None)
    averaged = (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1)) and len(linears) == 1
                and all(isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)) for m in between))
    taps.append(TapInfo(name=PRE_LOGITS, channels=linears[-1].in_features, module=head_path,
                        pooled_from="avgpool" if averaged else None))
    return taps, channels_last


def _channels_stride(shape: torch.Size, size: int) -> tuple[int, int, bool]:
    # The probe input is square, so the two equal dims are spatial (NCHW unless NHWC is clear).
    nhwc = shape[1] == shape[2] and shape[2] != shape[3]
    channels, spatial = (shape[3], shape[1]) if nhwc else (shape[1], shape[2])
    return int(channels), max(1, round(size / spatial)), nhwc


def _probe_output_shapes(
    arch: str, model: nn.Module, paths: Sequence[str], size: int
) -> dict[str, torch.Size]:
    def run(net: nn.Module, device: str) -> dict[str, torch.Size]:
        shapes: dict[str, torch.Size] = {}

        def record(path: str, out: Any) -> None:
            shapes[path] = (out[0] if isinstance(out, (tuple, list)) else out).shape

        handles = [
            net.get_submodule(p).register_forward_hook(lambda _m, _a, out, p=p: record(p, out))
            for p in paths
        ]
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, 3, size, size, device=device))
        finally:
            for h in handles:
                h.remove()
        return shapes

    try:  # a meta twin costs no compute, which matters for large models on slow CPUs
        return run(_on_meta(lambda: _create_torchvision_model(arch)), "meta")
    except Exception:
        if next(model.parameters()).is_meta:
            raise
        return run(model, "cpu")


def _build_torchvision(
    arch: str, *, weights: WeightsPath | None = None, pretrained: bool = True, seed: int = 0
) -> Backbone:
    name = f"torchvision/{arch}"
    model = _seeded(seed, lambda: _create_torchvision_model(arch))
    default = _torchvision_default_weights(arch)
    if default is not None:
        t = default.transforms()
        transform = TransformConfig(
            input_size=int(t.crop_size[0]),
            interpolation=t.interpolation.value,
            mean=tuple(t.mean),
            std=tuple(t.std),
            crop_pct=t.crop_size[0] / t.resize_size[0],
        )
    else:
        transform = TransformConfig(input_size=224, interpolation="bilinear")
    taps, channels_last = _torchvision_taps(arch, model, transform.input_size)
    if not pretrained:
        digest, source = _random_init(seed)
    else:
        if weights is None:
            where = _locate_torchvision_weights(arch)
            if not where.available:
                problem = f"{where.location} does not exist" if where.location else "torchvision has none"
                raise BackboneError(f"no offline weights for {name}: {problem}", hint=where.hint)
            weights = where.location
        source = os.fspath(weights)
        digest = _load_state_dict(model, _read_state_dict(source), name=name, origin=source)
    categories = list(default.meta.get("categories") or []) if default is not None else []
    head_out = model.get_submodule(taps[-1].module).out_features
    return Backbone(
        name,
        model,
        taps=taps,
        transform_config=transform,
        class_names=categories if len(categories) == head_out else None,
        weights_digest=digest,
        weights_source=source,
        channels_last_taps=channels_last,
    )

