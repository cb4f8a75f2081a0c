"""This machine: its cores and their load, the device a time was measured on, on/off environment switches.

Imports nothing of advisor, and torch only inside ``machine_name``: ``apply_shared_cpu_policy``
must run before torch is first imported (``advisor/__init__.py`` calls it).
"""

from __future__ import annotations

import os
import time


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average (other processes' claim on the cores), or None where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


BUSY_WINDOW_SECONDS = 0.2  # how long busy_cores watches the cores
BUSY_REUSE_SECONDS = 5.0  # a measurement this recent answers again (the CLI asks at import and at start)
_last_busy: tuple[float, float | None] | None = None  # (monotonic time, busy cores)


def _cpu_jiffies(cpus: set[int], stat: str) -> tuple[int, int] | None:
    """(busy, total) clock ticks of ``cpus`` in the text of /proc/stat; None when none of them is listed."""
    busy = total = 0
    found = False
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        ticks = [int(x) for x in rest.split()[:8]]  # user nice system idle iowait irq softirq steal
        if len(ticks) < 5:
            continue
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]  # idle and iowait are free time; steal is another guest's
        found = True
    return (busy, total) if found else None


def busy_from_samples(before: tuple[int, int], after: tuple[int, int], own_seconds: float, cores: int,
                      ticks_per_second: float) -> float:
    """Cores other processes kept busy between two /proc/stat samples: the busy share of the cores' time,
    less this process's own CPU time over the window, in cores."""
    total = (after[1] - before[1]) / ticks_per_second
    if total <= 0:
        return 0.0
    busy = (after[0] - before[0]) / ticks_per_second - max(0.0, own_seconds)
    return max(0.0, min(float(cores), cores * busy / total))


def busy_cores(window: float = BUSY_WINDOW_SECONDS) -> float | None:
    """Cores other processes keep busy now, watched over ``window`` seconds (Linux: /proc/stat); None elsewhere.

    Not the load average: it decays over a minute, so a command started within a minute of the
    previous one counted that finished command as other work and ran on one thread with passive
    OpenMP waits for its whole length (an 8-epoch fine-tune after a 40-second job: 1 thread on an
    idle 2-core machine).
    """
    global _last_busy
    now = time.monotonic()
    if _last_busy is not None and now - _last_busy[0] < BUSY_REUSE_SECONDS:
        return _last_busy[1]
    value = None
    try:
        cpus = os.sched_getaffinity(0)
        tick = os.sysconf("SC_CLK_TCK")

        def sample() -> tuple[tuple[int, int] | None, float]:
            with open("/proc/stat") as fh:
                text = fh.read()
            t = os.times()
            return _cpu_jiffies(cpus, text), t.user + t.system

        first, own0 = sample()
        time.sleep(window)
        second, own1 = sample()
        if first is not None and second is not None:
            value = busy_from_samples(first, second, own1 - own0, len(cpus), tick)
    except (AttributeError, OSError, ValueError):
        value = None
    _last_busy = (time.monotonic(), value)
    return value


def busy_elsewhere() -> float | None:
    """Cores other processes keep busy now (:func:`busy_cores`), or the 1-minute load average where that
    cannot be watched; None where neither can."""
    busy = busy_cores()
    return busy if busy is not None else load_average()


def free_cores() -> int:
    """Cores not busy with other work: the usable cores minus :func:`busy_elsewhere`, at least 1."""
    cores = cpu_cores()
    return max(1, min(cores, round(cores - (busy_elsewhere() or 0.0))))


def env_switch(name: str) -> bool | None:
    """An on/off environment switch: True for 1/on/true/yes, False for 0/off/false/no, None when unset or other."""
    value = os.environ.get(name, "").strip().lower()
    return True if value in ("1", "on", "true", "yes") else False if value in ("0", "off", "false", "no") else None


def machine_name(device=None) -> str:
    """The device a time was measured on: the GPU's name, or the CPU with its thread count."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu x{torch.get_num_threads()}"


def apply_shared_cpu_policy() -> None:
    """Passive OpenMP waiting when other work holds some of the cores (before torch loads OpenMP)."""
    # OpenMP reads its wait policy when torch loads it, so this runs before any torch import.
    # Measured (benchmarks/busy_cpu.py, 2 cores, one taken by another job): spinning OpenMP threads
    # fell to 0.34x of the lone throughput; a passive wait gave 0.56x, and one thread per free core
    # 0.62x (passive: 0.68x). Alone, passive costs 26 %, so it is applied only when cores are busy.
    # Not under torchrun (as the thread rule): the sibling ranks, importing at the same moment, would read as
    # other work to a watch of the cores.
    if "OMP_WAIT_POLICY" not in os.environ and os.environ.get("ADVISOR_THREADS") != "default" \
            and os.environ.get("WORLD_SIZE", "1") == "1" and free_cores() < cpu_cores():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
