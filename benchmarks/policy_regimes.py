"""Would one policy per setting beat one policy for all? Nested leave one dataset out.

    python benchmarks/policy_regimes.py [--records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl]

The shipped policy is the one with the lowest mean regret over every cell (benchmarks/policy.py).
Since the probes' re-measurement (2026-12-07) the tie-break policy is the most accurate at 2-10
images per class and the least on full sets, so a rule "policy A below B training images per
class, policy C from B up" might beat any single one. Choosing A, B and C on the rows it is
scored on would flatter it, so the choice is nested: for each dataset held out, benchmarks/
policy.py's whole leave-one-dataset-out evaluation runs on the *other* datasets, (B, A, C) is the
combination with the lowest mean regret there (B from 5, 10, 20, 50), and it is then scored on the
held-out dataset's own cells (whose forecasts and table were fitted without it, as in policy.py).
Prints the nested result beside the single policies' (in sample for per-setting, whose rule is what the
same procedure picks on all the records: since the few-shot holdout was withdrawn, hybrid below 20
images per class and best-forecast from there up). The nested figure is also in benchmarks/policy.py's
output and the generated docs.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from policy import POLICIES, ROOT, evaluate, load_cells, nested_per_setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", default=[str(ROOT / "docs/records/cpu.jsonl"), str(ROOT / "docs/records/cpu64_legacy.jsonl")])
    args = ap.parse_args()
    cells = load_cells([Path(p) for p in args.records])
    _, _, rows = evaluate(cells)
    nested = nested_per_setting(cells, rows)
    for g, (b, a, c) in nested["folds"].items():
        print(f"{g:14s} chose: {a} below {b} per class, {c} from {b} up")
    print(f"{'nested per-setting':20s} mean regret {nested['mean_regret']:.2f} max {nested['max_regret']:.2f} "
          f"tied {nested['tied_share']:.0%} time {nested['time_ratio']:.2f}x")
    for p in POLICIES:
        s = [r["scores"][p] for r in rows]
        print(f"{p:20s} mean regret {statistics.fmean(x['regret'] for x in s):.2f} max {max(x['regret'] for x in s):.2f} "
              f"tied {sum(x['tied'] for x in s) / len(s):.0%} time {statistics.fmean(x['time_ratio'] for x in s):.2f}x")


if __name__ == "__main__":
    main()
