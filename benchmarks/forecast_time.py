"""Forecast wall time against measured wall time.

    python benchmarks/forecast_time.py DATASET... [--input-size 64] [--epochs 3] [--runs-dir DIR] [--standalone]

For every strategy: the forecast made by ``recommend`` before training (``advisor/decide/forecast.py``)
and the seconds the run took, their ratio, and the target (within +-30 %). Run it on an idle
machine: the forecast times the device as it is when ``recommend`` runs.

Default: one ``compare`` per dataset, both figures read from its result. Its strategies share one
feature cache, so a strategy that runs after another finds the features it needs already extracted
while the forecast, made before any of them, counts their extraction: probes after the first and
the fine-tunes' warm-up heads run faster than forecast there. ``--standalone`` instead runs each
strategy on its own with an empty feature cache (as a first ``advisor run --strategy S`` or
``run --auto`` does), timing the run itself (from the plan to the written report, as a
comparison's row), against ``recommend``'s forecast from another empty cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from advisor.execute.compare import compare

STRATEGY_ORDER = ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")


def row(dataset: str, strategy: str, forecast: float, measured: float) -> str:
    ratio = forecast / measured
    return (f"| {dataset.rstrip('/').rsplit('/', 1)[-1]} | {strategy} | {forecast:.1f} | {measured:.1f} | {ratio:.2f} | "
            f"{'yes' if 0.7 <= ratio <= 1.3 else 'no'} |")


def standalone(ds: str, tmp: Path, *, input_size: int | None, epochs: int | None) -> list[tuple[str, float, float]]:
    import advisor

    rec = advisor.recommend(ds, input_size=input_size, epochs=epochs, cache_dir=tmp / "cache-recommend")
    fc = {f.strategy: f for f in (rec.forecast.strategies if rec.forecast else []) if f.seconds is not None}
    out = []
    for s in STRATEGY_ORDER:
        if s not in fc:
            continue
        started = {}
        advisor.run(ds, strategy=s, input_size=input_size, epochs=epochs, cache_dir=tmp / f"cache-{s}",
                    runs_dir=tmp / f"runs-{s}", on_recommendation=lambda _rec: started.setdefault("t", time.perf_counter()))
        out.append((s, fc[s].seconds, time.perf_counter() - started["t"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--standalone", action="store_true", help="each strategy alone from an empty cache (see above)")
    args = ap.parse_args()
    print("| dataset | strategy | forecast s | measured s | ratio | within 30 % |")
    print("|---|---|---|---|---|---|")
    within = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, ds in enumerate(args.datasets):
            if args.standalone:
                rows = standalone(ds, Path(tmp) / str(i), input_size=args.input_size, epochs=args.epochs)
            else:
                res = compare(ds, runs_dir=args.runs_dir or tmp, input_size=args.input_size, epochs=args.epochs)
                fc = {f.strategy: f for f in (res.recommendation.forecast.strategies if res.recommendation.forecast else [])}
                rows = [(r.strategy, fc[r.strategy].seconds, r.seconds) for r in res.rows
                        if r.strategy in fc and fc[r.strategy].seconds is not None]
            for strategy, forecast, measured in rows:
                within.append(0.7 <= forecast / measured <= 1.3)
                print(row(ds, strategy, forecast, measured), flush=True)
    if within:
        print(f"within +-30 %: {sum(within)} of {len(within)}")


if __name__ == "__main__":
    main()
