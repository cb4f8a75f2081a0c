"""What the learning curve and the label check add to `recommend`, with the features cached.

    python benchmarks/insight_cost.py DATASET [DATASET ...] [--repeats 3]

Runs ``advisor.recommend`` once to fill the cache, then ``--repeats`` more times with the probe
curve (``advisor.measure.curve.probe_curve``) and the label check
(``advisor.measure.labels.label_report``) timed where the profiler calls them. Prints, per dataset,
the median wall time of the warm ``recommend`` and the two answers' share of it (issue 27's
target: at most 10 % on sets of 200+ images).
"""

from __future__ import annotations

import argparse
import statistics
import time

import advisor
import advisor.measure.profiler as profiler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spent = {"curve": 0.0, "labels": 0.0}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t0
        return wrapper

    profiler.probe_curve = timed("curve", profiler.probe_curve)
    profiler.label_report = timed("labels", profiler.label_report)
    for ds in args.datasets:
        advisor.recommend(ds)  # fills the feature cache
        walls, curve, labels = [], [], []
        for _ in range(args.repeats):
            spent.update(curve=0.0, labels=0.0)
            t0 = time.perf_counter()
            rec = advisor.recommend(ds)
            walls.append(time.perf_counter() - t0)
            curve.append(spent["curve"])
            labels.append(spent["labels"])
        wall, c, lab = statistics.median(walls), statistics.median(curve), statistics.median(labels)
        base = wall - c - lab
        print(f"{ds}: {rec.profile.train_images} training images; warm recommend {wall:.2f} s, of which the learning "
              f"curve {c:.2f} s and the label check {lab:.2f} s: {100 * (c + lab) / base:.1f} % on top of the rest "
              f"(target <= 10 %)", flush=True)


if __name__ == "__main__":
    main()
