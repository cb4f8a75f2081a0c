"""The Backbone module and its records: taps, the evaluation transform, BatchNorm layers, listings."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from advisor.core.errors import BackboneError
from advisor.data.imagefile import DECODE_RULE

DEFAULT_BACKBONE = "efficientnet_lite0"
PRE_LOGITS = "pre_logits"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- public records


class TapInfo(BaseModel):
    """One feature tap: a stage output, or ``pre_logits`` (the classifier's input)."""

    model_config = ConfigDict(frozen=True)

    name: str
    channels: int
    stride: int | None = None  # None for pre_logits, which has no spatial grid
    module: str | None = None  # for pre_logits: the classifier whose *input* is tapped
    # For pre_logits: the average-pooling module whose *input* is the feature map pre_logits is the mean of (nothing
    # but dropout or a flatten between). Declared where that holds, so evidence maps can place the head's logit on
    # that map (advisor.backbones.evidence); None where a layer between (a norm, an MLP) breaks it.
    pooled_from: str | None = None


class TransformConfig(BaseModel):
    """Eval-time preprocessing: resize shorter side, center crop, normalise."""

    # Read back from model cards and export sidecars: only values a real preprocessing can have.
    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    input_size: int = Field(gt=0, le=4096)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: tuple[float, float, float] = _IMAGENET_MEAN
    std: tuple[float, float, float] = _IMAGENET_STD
    crop_pct: float = Field(default=0.875, gt=0.05, le=1.0)

    @field_validator("mean")
    @classmethod
    def _mean_in_range(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(-10.0 <= x <= 10.0 for x in v):
            raise ValueError(f"each mean must be between -10 and 10, got {list(v)}")
        return v

    @field_validator("std")
    @classmethod
    def _std_in_range(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(1e-3 <= x <= 10.0 for x in v):
            raise ValueError(f"each std must be between 0.001 and 10, got {list(v)}")
        return v

    @property
    def resize_size(self) -> int:
        # The epsilon keeps e.g. 240 / (240 / 255) at 255 rather than 254.
        return math.floor(self.input_size / self.crop_pct + 1e-6)

    def eval_transform(self, *, uint8: bool = False) -> Callable[[Any], torch.Tensor]:
        """A picklable PIL image -> ``[3, input_size, input_size]`` float tensor transform.

        ``uint8=True`` stops before ToTensor + Normalize and gives the crop's 8-bit pixels:
        :meth:`normalize` then computes, to the bit, what the float transform gives, on any device
        (4x fewer bytes between DataLoader workers and the device, and the arithmetic there).
        """
        from torchvision import transforms as T

        steps = [
            T.Lambda(_to_rgb),
            T.Resize(self.resize_size, interpolation=T.InterpolationMode(self.interpolation)),
            T.CenterCrop(self.input_size),
        ]
        if uint8:
            return T.Compose([*steps, T.PILToTensor()])
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` uint8 -> float as ToTensor + Normalize compute it (float32 /255, -mean, /std), on x's device."""
        m = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return x.to(torch.float32).div_(255).sub_(m).div_(s)

    def with_input_size(self, size: int) -> TransformConfig:
        return TransformConfig(**{**self.model_dump(), "input_size": size})

    def digest(self) -> str:
        """Short stable hash of the config and of how files are decoded (``DECODE_RULE``), for cache keys."""
        return hashlib.sha256((self.model_dump_json() + DECODE_RULE).encode()).hexdigest()[:16]


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
        self._transform_config = transform_config
        self.class_names = list(class_names) if class_names is not None else None
        self.weights_digest = weights_digest
        self.weights_source = weights_source
        self._taps_by_name = {t.name: t for t in self.taps}
        # Pooling picks the channel axis by size; this settles the rare NHWC ambiguity.
        self._channels_last = frozenset(channels_last_taps)

    @property
    def transform_config(self) -> TransformConfig:
        """How images are prepared for this backbone. Read-only: see :meth:`with_transform`."""
        return self._transform_config

    def with_transform(self, transform_config: TransformConfig) -> Backbone:
        """This backbone (the same module and weights, not a copy of them) under another transform.

        The original keeps its own transform, so a strategy that runs at another input size
        changes nothing for whoever else holds the backbone.
        """
        if transform_config == self._transform_config:
            return self
        other = copy.copy(self)  # a new Backbone object; its submodules and parameters are shared
        other.__dict__["_transform_config"] = transform_config
        return other

    def with_input_size(self, size: int) -> Backbone:
        """:meth:`with_transform` at another input size."""
        return self.with_transform(self._transform_config.with_input_size(size))

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
                    mean, var = _spatial_moments(args[0].float())
                    captured[f"bn:{layer.name}:mean"] = mean
                    captured[f"bn:{layer.name}:var"] = var

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


def _spatial_moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and (biased) variance of ``a`` [B, C, H, W] over (H, W).

    A channels_last map on the CPU (how extraction runs there) takes two batched matrix products
    with a row of 1/N, the mean and then the mean squared deviation (two passes, so a large mean
    cannot cancel the variance away): torch.var_mean reduces the middle axis of such a map slowly
    (Lite0 at 224 px, batch 32, 2 cores: 112x112x96 70 ms against 110, 56x56x144 30 against 42).
    Elsewhere torch.var_mean, which needs no temporary the size of the map.
    """
    b, c = a.shape[:2]
    if a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous():
        flat = a.permute(0, 2, 3, 1).reshape(b, -1, c)  # a view: [B, H*W, C]
        if a.device.type == "cpu":
            w = a.new_full((b, 1, flat.shape[1]), 1.0 / flat.shape[1])
            mean = torch.bmm(w, flat)  # [B, 1, C]
            dev = flat - mean
            dev.mul_(dev)
            return mean.squeeze(1), torch.bmm(w, dev).squeeze(1)
        var, mean = torch.var_mean(flat, dim=1, unbiased=False)
        return mean, var
    var, mean = torch.var_mean(a.reshape(b, c, -1), dim=2, unbiased=False)
    return mean, var


def memory_format_of(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's spatial convolution weights are laid out so (1x1 kernels say nothing), else
    contiguous: what to restore after a pass that converted it for speed."""
    w = next((p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    if w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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


def _on_meta(fn: Callable[[], Any]) -> Any:
    # Shapes without memory or init cost, so listing never builds real models.
    with torch.device("meta"):
        return fn()



def _has_submodule(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True




def _module_path(model: nn.Module, target: nn.Module) -> str | None:
    return next((path for path, m in model.named_modules() if m is target), None)


