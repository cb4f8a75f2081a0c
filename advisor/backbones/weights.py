"""Weights files: reading state dicts (safetensors or weights-only torch files), matching them to a model, digests."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from advisor.core.errors import BackboneError, one_line

_WEIGHTS_HINT = "pass --weights FILE (weights=FILE in Python)"

WeightsPath = str | os.PathLike[str]


class _WeightsLocation(NamedTuple):
    available: bool
    location: str | None
    hint: str | None


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
            f"cannot read weights file {path}: {type(err).__name__}: {one_line(err)}",
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



def _random_init(seed: int) -> tuple[str, str]:
    return f"random-seed{seed}", "random init"


def _torch_hub_checkpoint(url: str) -> str:
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)
