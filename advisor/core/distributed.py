"""Several processes, one run: torchrun + DistributedDataParallel, and the CPU thread policy.

``advisor run|compare|features`` work unchanged under ``torchrun --nproc_per_node N -m advisor
...``: the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``)
starts a process group here (NCCL on GPUs, gloo on the CPU) and the rest of the code asks this
module who it is. ``advisor run --devices N`` runs that command for the user.

What each layer does under it:

* extraction: every rank computes its share (``rank::world``) of the uncached images; the
  shares are gathered so every rank holds all features (and all write to the one cache);
* fine-tunes: each global batch of the plan's size is split across ranks, gradients are
  averaged by DDP, BatchNorm that trains is synchronised (SyncBatchNorm); the global batch,
  and so the learning rate, stay the plan's (linear scaling with a factor of 1), which is why
  a run resumes under any world size from the same step;
* only rank 0 writes run artifacts, checkpoints and events, and only rank 0 prints.

A rank that dies makes torchrun stop the others (no hang); collectives also time out after
``ADVISOR_DIST_TIMEOUT`` seconds (default 600).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from advisor.core.errors import AdvisorError
from advisor.core.machine import cpu_cores, free_cores

T = TypeVar("T")
TIMEOUT_ENV = "ADVISOR_DIST_TIMEOUT"
_local_only = 0  # > 0 inside rank_zero_only(): no collectives


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env() -> Rank:
    """This process's place as torchrun's environment states it (one process when unset)."""
    env = os.environ
    try:
        return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                    int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))
    except ValueError:
        return Rank()


DEVICE_ENV = "ADVISOR_DEVICE"  # what --device auto means on this machine (e.g. cpu on a shared GPU host)


def requested_device(device: str | None) -> str | None:
    """``device``, with ``auto``/None replaced by ``$ADVISOR_DEVICE`` when that is set."""
    if device in (None, "auto") and os.environ.get(DEVICE_ENV, "").strip() not in ("", "auto"):
        return os.environ[DEVICE_ENV].strip()
    return device


def init_from_env(device: str | None = None) -> Rank:
    """Start the process group when launched by torchrun with more than one process (idempotent)."""
    me = from_env()
    if me.world <= 1 or (dist.is_available() and dist.is_initialized()):
        return me
    device = requested_device(device)
    use_nccl = torch.cuda.is_available() and (device is None or device == "auto" or str(device).startswith("cuda"))
    if use_nccl:
        torch.cuda.set_device(me.local_rank % torch.cuda.device_count())
    timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 600)))
    dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timeout)
    return me


def active() -> bool:
    """True when collectives run: a process group of more than one rank, outside :func:`rank_zero_only`."""
    return _local_only == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> Rank:
    if dist.is_available() and dist.is_initialized():
        env = from_env()
        return Rank(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world)
    return Rank()


def is_main() -> bool:
    return rank().main


@contextlib.contextmanager
def rank_zero_only() -> Iterator[None]:
    """Code in this block runs on one rank: it must not enter collectives (the others are not there)."""
    global _local_only
    _local_only += 1
    try:
        yield
    finally:
        _local_only -= 1


def share(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (every world-th, from its rank); all of them in one process."""
    if not active():
        return list(items)
    me = rank()
    return list(items[me.rank::me.world])


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_command(args: Sequence[str], *, nproc: int, nnodes: int = 1, node_rank: int | None = None,
                     rdzv_endpoint: str | None = None) -> list[str]:
    """The torchrun command that runs ``advisor ARGS`` on ``nproc`` processes per node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes > 1:
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
        if node_rank is not None:
            cmd.append(f"--node_rank={node_rank}")
    else:
        cmd += ["--standalone"]
    return cmd + ["-m", "advisor", *args]


def launch(args: Sequence[str], *, nproc: int) -> tuple[int, str | None]:
    """Run ``advisor ARGS`` under torchrun on ``nproc`` local processes: (exit status, what failed, in words).

    The ranks' own output passes through; torchrun's report of a failed rank (a traceback and a
    table) is read and returned as one line instead.
    """
    cmd = torchrun_command(args, nproc=nproc)
    env = {**os.environ, "ADVISOR_LAUNCHED": shlex.join(cmd)}
    # torchrun sets OMP_NUM_THREADS=1 per process unless told; threads are chosen per rank instead.
    env.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []
    in_report = False
    assert proc.stderr is not None
    for line in proc.stderr:
        in_report = in_report or line.startswith("Traceback (most recent call last)")
        if in_report or "torch.distributed.elastic" in line or "torch/distributed/run.py" in line:
            held.append(line)
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = proc.wait()
    return rc, (_root_cause("".join(held)) if rc else None)


def _root_cause(report: str) -> str:
    """torchrun's failure table -> 'rank 1 exited with signal 9 (SIGKILL)'."""
    import re

    tail = report.split("Root Cause", 1)[-1]
    rank_m = re.search(r"rank\s*:\s*(\d+)", tail)
    code_m = re.search(r"exitcode\s*:\s*(-?\d+)", tail)
    if not rank_m or not code_m:
        return "a process failed"
    code = int(code_m.group(1))
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"rank {rank_m.group(1)} was killed by signal {-code} ({name})"
    return f"rank {rank_m.group(1)} exited with status {code}"


# ------------------------------------------------------------------ CPU threads


def threads_per_process(processes: int = 1) -> int:
    """Compute threads for one of ``processes`` processes sharing this machine's free cores."""
    return max(1, free_cores() // max(1, processes))


def apply_thread_policy() -> int | None:
    """One compute thread per free core when other work holds some of the cores (unless OMP_NUM_THREADS is set).

    Busy or not is read once, at start: torch's default (every core) spins against the other job
    (measured 0.34x of the lone throughput with one of two cores taken; 0.62-0.68x with one thread).
    ``ADVISOR_THREADS=default`` keeps torch's choice (the tests do: results that must match to
    the bit need the same thread count every run; a resumed run on a machine under other load
    may differ from an uninterrupted one in float rounding).
    Returns the thread count set, or None when nothing changed.
    """
    if "OMP_NUM_THREADS" in os.environ or os.environ.get("ADVISOR_THREADS") == "default" or from_env().world > 1:
        return None
    free = threads_per_process(1)
    if free >= cpu_cores() or free >= torch.get_num_threads():
        return None
    torch.set_num_threads(free)
    return free


MAX_WORKERS = 16


def default_num_workers() -> int:
    """One decoding worker per free core beyond the process's own, the cores shared among this
    machine's ranks, between 1 and ``MAX_WORKERS``.

    On 2 cores one worker keeps the model fed. On a GPU host the workers are the limit: on an
    H200 with 16 cores, 8 workers extracted 1,964 images/s (~4 ms per 224-px JPEG per worker)
    against 5,700 for the bare forward; the cap was 8 then and is 16 now (not re-measured).
    """
    share = free_cores() // max(1, from_env().local_world)
    return max(1, min(MAX_WORKERS, share - 1))


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``'auto'`` picks ``$ADVISOR_DEVICE`` when set, else CUDA when available, else the CPU."""
    device = requested_device(device)
    if device in (None, "auto", "cuda") and torch.cuda.is_available() and active():
        return torch.device("cuda", rank().local_rank % torch.cuda.device_count())  # one GPU per rank
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise AdvisorError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdvisorError(f"device {device!r} requested but CUDA is not available", hint="use --device cpu")
    return dev
