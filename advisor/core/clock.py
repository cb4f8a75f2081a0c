"""Named wall-clock stages: where a command's seconds went (``recommend``'s profile, forecast, ...)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageClock:
    """Accumulates wall seconds per named stage, in the order stages first ran.

    ``with clock("features"): ...`` adds the block's wall time to ``clock.seconds["features"]``;
    a stage entered twice adds up. Exceptions propagate and the time spent still counts.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def rounded(self, digits: int = 2) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}


def top_stages(seconds: dict[str, float], n: int = 4) -> str:
    """'features 12.1 s, forecast 8.2 s, ...': the ``n`` costliest stages, costliest first."""
    ranked = sorted(seconds.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {v:.1f} s" for k, v in ranked)
