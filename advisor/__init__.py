"""advisor: measure a dataset, place it in the transfer-learning 2x2 table, run the advice."""

import os as _os

__version__ = "0.1.0"


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(_os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return _os.cpu_count() or 1


def free_cores() -> int:
    """Cores not busy with other work: the usable cores minus the 1-minute load average (at least 1)."""
    cores = cpu_cores()
    try:
        load = _os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(cores, round(cores - load)))


def env_switch(name: str) -> bool | None:
    """An on/off environment switch: True for 1/on/true/yes, False for 0/off/false/no, None when unset or other."""
    value = _os.environ.get(name, "").strip().lower()
    return True if value in ("1", "on", "true", "yes") else False if value in ("0", "off", "false", "no") else None


def _shared_cpu_policy() -> None:
    # OpenMP reads its wait policy when torch loads it, so this runs before any torch import.
    # Measured (benchmarks/busy_cpu.py, 2 cores, one taken by another job): spinning OpenMP threads
    # fell to 0.34x of the lone throughput; a passive wait gave 0.56x, and one thread per free core
    # 0.62x (passive: 0.68x). Alone, passive costs 26 %, so it is applied only when cores are busy.
    if "OMP_WAIT_POLICY" not in _os.environ and _os.environ.get("ADVISOR_THREADS") != "default" \
            and free_cores() < cpu_cores():
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_shared_cpu_policy()
