"""Does a larger training batch keep the accuracy? Full fine-tunes at batch 32 and at a larger batch, paired.

    python benchmarks/batch_check.py DATASET [DATASET ...] [--batch 128] [--input-size 224] [--epochs N]

A GPU trains faster at a larger batch (benchmarks/bare_speed.py), but the loop's recipe was tuned
at 32. For each dataset: the plan `advisor recommend` makes for a full fine-tune, run at batch 32
and at ``--batch`` with the learning rates scaled by sqrt(batch / 32) (the square-root rule for
Adam-type optimisers; the schedule keeps its epochs, so the larger batch takes fewer steps).
Prints both accuracies, the difference with a 95 % interval (from the two runs' intervals) and
whether the larger batch is within noise. The loop's default batch changes
only where every dataset is.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time

import advisor
from advisor.decide.advise import recommend_once


def difference(a, b) -> tuple[float, float, float]:
    """(b - a accuracy, low, high): a 95 % interval from the two runs' own intervals (unpaired, so conservative)."""
    half = math.hypot((a.val_accuracy_ci[1] - a.val_accuracy_ci[0]) / 2, (b.val_accuracy_ci[1] - b.val_accuracy_ci[0]) / 2)
    diff = b.val_accuracy - a.val_accuracy
    return diff, diff - half, diff + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    verdicts = []
    for ds in args.datasets:
        base = recommend_once(ds, device=args.device, similarity=False, force_strategy="full-finetune",
                              epochs_cap=args.epochs, input_size=args.input_size).plan
        scale = math.sqrt(args.batch / base.batch_size)
        big = base.with_batch_size(args.batch)  # the same rule as `advisor run --batch-size`
        out = {}
        for label, plan in (("32", base), (str(args.batch), big)):
            with tempfile.TemporaryDirectory() as runs:
                t0 = time.perf_counter()
                res = advisor.run(plan=plan, dataset=ds, runs_dir=runs, device=args.device)
                out[label] = (res.result.metrics, time.perf_counter() - t0)
        (a, a_s), (b, b_s) = out["32"], out[str(args.batch)]
        a_acc, b_acc = a.val_accuracy, b.val_accuracy
        diff, low, high = difference(a, b)
        within = low <= 0 <= high or diff >= 0
        verdicts.append(within)
        print(f"{ds}: batch 32 {a_acc:.3f} ({a_s:.0f} s); batch {args.batch} (lr x{scale:.2f}) {b_acc:.3f} ({b_s:.0f} s); "
              f"difference {100 * diff:+.1f} points [95 % {100 * low:+.1f}, {100 * high:+.1f}] -> "
              f"{'within noise or better' if within else 'WORSE'}", flush=True)
    print(f"batch {args.batch} keeps the accuracy on {sum(verdicts)} of {len(verdicts)} sets"
          f"{'' if all(verdicts) else ': keep batch 32'}")


if __name__ == "__main__":
    main()
