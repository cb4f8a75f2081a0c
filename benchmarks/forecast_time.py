"""Forecast wall time against measured wall time: run ``compare`` and read both from its result.

    python benchmarks/forecast_time.py DATASET... [--input-size 64] [--epochs 3] [--runs-dir DIR]

For every strategy: the forecast made by ``recommend`` before training (``advisor/decide/forecast.py``)
and the seconds the run took, their ratio, and the target (within +-30 %). Run it on an idle
machine: the forecast times the device as it is when ``recommend`` runs.
"""

from __future__ import annotations

import argparse
import tempfile

from advisor.execute.compare import compare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--runs-dir", default=None)
    args = ap.parse_args()
    print("| dataset | strategy | forecast s | measured s | ratio | within 30 % |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets:
            res = compare(ds, runs_dir=args.runs_dir or tmp, input_size=args.input_size, epochs=args.epochs)
            fc = {f.strategy: f for f in (res.recommendation.forecast.strategies if res.recommendation.forecast else [])}
            for row in res.rows:
                f = fc.get(row.strategy)
                if f is None or f.seconds is None:
                    continue
                ratio = f.seconds / row.seconds
                print(f"| {res.dataset.rsplit('/', 1)[-1]} | {row.strategy} | {f.seconds:.0f} | {row.seconds:.0f} | {ratio:.2f} | "
                      f"{'yes' if 0.7 <= ratio <= 1.3 else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
