"""timm models as backbones: architecture, weights from the local Hugging Face cache, taps from feature_info."""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import torch
from torch import nn

from advisor.backbones.backbone import (
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    PRE_LOGITS,
    Backbone,
    TapInfo,
    TransformConfig,
    _has_submodule,
    _module_path,
)
from advisor.backbones.weights import (
    _WEIGHTS_HINT,
    WeightsPath,
    _load_state_dict,
    _random_init,
    _read_state_dict,
    _seeded,
    _state_dict_mismatch,
    _torch_hub_checkpoint,
    _WeightsLocation,
)
from advisor.core.errors import BackboneError

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
    pool = getattr(model, "global_pool", None)  # timm CNNs: global_pool -> (dropout) -> classifier
    averaged = (getattr(pool, "pool_type", None) == "avg" and _module_path(model, pool) == "global_pool"
                and int(head_in) == getattr(model, "num_features", None))  # no conv head after the pool (MobileNetV3)
    taps.append(TapInfo(name=PRE_LOGITS, channels=int(head_in), module=head_path,
                        pooled_from="global_pool" if averaged else None))

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

