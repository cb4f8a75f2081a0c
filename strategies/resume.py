"""What makes a fine-tune exactly resumable: the data order, the RNG, Ctrl-C between updates, checkpoints.

* :class:`EpochBatchSampler`: a permutation per ``(seed, epoch)``, resumable at any batch;
* :func:`get_rng_state` / :func:`set_rng_state`, :func:`defer_sigint`;
* :func:`save_checkpoint` (atomic) and :func:`load_checkpoint` (``weights_only``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from advisor.core.errors import AdvisorError
from advisor.core.io import atomic_path

# --------------------------------------------------------------------------- determinism


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch; a final batch of a single image is dropped (train-mode BN cannot use it)."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (1 if rest > 1 else 0))


class EpochBatchSampler(torch.utils.data.Sampler):
    """One epoch's batches of ``(epoch, index)`` keys, from batch ``start`` on.

    The order is a permutation drawn from ``torch.Generator().manual_seed(seed * 100003 +
    epoch)``, or with ``weights`` a with-replacement draw proportional to them (class-balanced
    sampling), so skipping ``start`` batches reproduces exactly the rest of an interrupted
    epoch. Keys carry the epoch so that the dataset can seed its augmentation per sample.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int = 0, start: int = 0,
                 weights: torch.Tensor | None = None, rank: int = 0, world: int = 1) -> None:
        # Under DDP each rank serves its share (``rank::world``) of the same global batches.
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.num_batches = steps_per_epoch(n, batch_size)
        self.weights = weights
        self.set_epoch(epoch, start)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve ``epoch`` from batch ``start`` on: one DataLoader (and its persistent workers) serves every epoch."""
        self.epoch = epoch
        self.start = min(max(0, start), self.num_batches)

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights.double(), self.n, replacement=True, generator=g).tolist()
        return torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.order()
        for b in range(self.start, self.num_batches):
            yield [(self.epoch, i) for i in order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world]]


def get_rng_state() -> dict[str, Any]:
    """Torch (CPU and initialised CUDA devices) and Python ``random`` states, ``weights_only``-safe."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def defer_sigint() -> Iterator[None]:
    """Hold a Ctrl-C until the block ends, so a checkpoint never sees half an update.

    Only in the main thread and while Python's default SIGINT handler is installed; elsewhere
    the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- checkpoints


_TREE_KEY = "advisor.tree"


def _encode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON-able tree with every tensor moved into ``tensors`` (dict keys and tuples kept exact)."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"$t": name}
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"checkpoint keys must be scalars, got {type(k).__name__}")
        return {"$d": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"a checkpoint holds tensors, numbers, strings and containers of them, not {type(obj).__name__}")


def _decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "$t" in tree:
            return tensors[tree["$t"]]
        if "$d" in tree:
            return {k: _decode(v, tensors) for k, v in tree["$d"]}
        if "$tuple" in tree:
            return tuple(_decode(v, tensors) for v in tree["$tuple"])
        raise ValueError(f"unknown node {sorted(tree)[:3]}")
    if isinstance(tree, list):
        return [_decode(v, tensors) for v in tree]
    return tree


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` as safetensors (tensors) plus a JSON tree in its header: no pickle, atomic, fsynced.

    ``state`` holds tensors, numbers, strings, bools, None and lists/tuples/dicts of them (an
    optimizer's ``state_dict`` qualifies); a kill at any point leaves the previous checkpoint.
    """
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors))
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + len(tree)
    with atomic_path(path, needed=needed) as tmp:
        save_file(tensors, str(tmp), metadata={_TREE_KEY: tree})
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a damaged file is one clear error."""
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            tree = json.loads((f.metadata() or {})[_TREE_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _decode(tree, tensors)
    except Exception as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise AdvisorError(f"checkpoint {path} is damaged ({type(err).__name__}: {first})",
                           hint="delete it to start the run over") from None
