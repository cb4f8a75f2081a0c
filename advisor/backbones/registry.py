"""The registry of named backbones and the one builder funnel, :func:`create_backbone`."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from collections.abc import Callable
from typing import Literal

from advisor.backbones.backbone import (
    Backbone,
    BackboneInfo,
    _on_meta,
)
from advisor.backbones.timm_models import (
    _build_timm,
    _create_timm_model,
    _locate_timm_weights,
)
from advisor.backbones.torchvision_models import (
    _build_torchvision,
    _create_torchvision_model,
    _locate_torchvision_weights,
)
from advisor.backbones.weights import (
    WeightsPath,
    _WeightsLocation,
)
from advisor.core.errors import BackboneError

_FAMILIES = ("timm", "torchvision")

@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    builder: Callable[..., Backbone]
    description: str
    source: str
    locate_weights: Callable[[], _WeightsLocation] | None


_REGISTRY: dict[str, _Entry] = {}


def register_backbone(
    name: str,
    *,
    description: str = "",
    source: Literal["bundled", "test"] = "bundled",
    locate_weights: Callable[[], _WeightsLocation] | None = None,
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Register ``fn(*, weights, pretrained, seed) -> Backbone`` under a stable ``name``.

    ``locate_weights`` is a cheap, side-effect-free lookup used by :func:`backbone_info`.
    """
    if name.partition("/")[0] in _FAMILIES:
        raise ValueError(f"backbone names starting with {name.partition('/')[0]}/ are reserved")

    def decorator(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = _Entry(name, fn, doc, source, locate_weights)
        return fn

    return decorator


def create_backbone(
    name: str,
    *,
    weights: WeightsPath | None = None,
    pretrained: bool = True,
    seed: int = 0,
) -> Backbone:
    """Build backbone ``name`` in eval mode on the CPU.

    Args:
        name: a registered name, ``timm/<model>`` or ``torchvision/<model>``.
        weights: a state dict file (``.safetensors`` or a ``torch.save`` file) to load instead
            of the default weights.
        pretrained: ``False`` gives a random init drawn with ``seed``.
        seed: seed of the random init (the global RNG is left untouched).
    """
    if weights is not None and not pretrained:
        raise BackboneError(
            "weights=FILE and pretrained=False contradict each other",
            hint="drop one of them",
        )
    builder = _resolve(name)
    return builder(weights=weights, pretrained=pretrained, seed=seed).eval()


TEST_BACKBONES_ENV = "ADVISOR_TEST_BACKBONES"


def _user_visible(name: str) -> bool:
    """Test fixtures (random weights) exist only where ``$ADVISOR_TEST_BACKBONES`` is set, i.e. in tests."""
    return _REGISTRY[name].source != "test" or bool(os.environ.get(TEST_BACKBONES_ENV))


def list_backbones() -> list[BackboneInfo]:
    """Registered backbones, with whether their weights are available offline (test fixtures left out)."""
    return [backbone_info(name) for name in _REGISTRY if _user_visible(name)]


def backbone_info(name: str) -> BackboneInfo:
    """Describe ``name`` without loading weights (the architecture is built on the meta device)."""
    entry = _REGISTRY.get(name)
    if entry is not None:
        where = entry.locate_weights() if entry.locate_weights else _WeightsLocation(False, None, None)
        return BackboneInfo(
            name=name,
            source=entry.source,
            description=entry.description,
            params=_meta_num_params(name),
            weights_available=where.available,
            weights_location=where.location,
            hint=where.hint,
        )
    family, arch = _split_family(name)
    if family == "timm":
        model = _on_meta(lambda: _create_timm_model(arch))
        where, _ = _locate_timm_weights(model.pretrained_cfg, arch)
        description = f"timm model {arch}"
    else:
        model = _on_meta(lambda: _create_torchvision_model(arch))
        where = _locate_torchvision_weights(arch)
        description = f"torchvision model {arch}"
    return BackboneInfo(
        name=name,
        source=family,
        description=description,
        params=sum(p.numel() for p in model.parameters()),
        weights_available=where.available,
        weights_location=where.location,
        hint=where.hint,
    )


def _resolve(name: str) -> Callable[..., Backbone]:
    if name in _REGISTRY:
        if not _user_visible(name):
            raise BackboneError(f"{name!r} is a test fixture with random weights: advice built on it would be meaningless",
                                hint=f"choose a backbone from `advisor backbones` (tests set {TEST_BACKBONES_ENV}=1)")
        return _REGISTRY[name].builder
    family, arch = _split_family(name)
    return functools.partial(_build_timm if family == "timm" else _build_torchvision, arch)


def _split_family(name: str) -> tuple[str, str]:
    family, sep, arch = name.partition("/")
    if sep and arch and family in _FAMILIES:
        return family, arch
    visible = [n for n in _REGISTRY if _user_visible(n)]
    close = difflib.get_close_matches(name, visible, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise BackboneError(
        f"unknown backbone {name!r}{guess}; registered: {', '.join(visible)}",
        hint="any timm or torchvision classifier also works as timm/<name> or torchvision/<name>, "
        "e.g. timm/resnet50 or torchvision/resnet50",
    )


@functools.lru_cache(maxsize=None)
def _meta_num_params(name: str) -> int | None:
    try:
        backbone = _on_meta(lambda: _REGISTRY[name].builder(weights=None, pretrained=False, seed=0))
    except Exception:  # a count is nice to have; never fail a listing over it
        return None
    return backbone.num_params()

