"""This machine: its cores and their load, the device a time was measured on, on/off environment switches.

Imports nothing of advisor, and torch only inside ``machine_name``: ``apply_shared_cpu_policy``
must run before torch is first imported (``advisor/__init__.py`` calls it).
"""

from __future__ import annotations

import os


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


def free_cores() -> int:
    """Cores not busy with other work: the usable cores minus the 1-minute load average (at least 1)."""
    cores = cpu_cores()
    return max(1, min(cores, round(cores - (load_average() or 0.0))))


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
    if "OMP_WAIT_POLICY" not in os.environ and os.environ.get("ADVISOR_THREADS") != "default" \
            and free_cores() < cpu_cores():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
