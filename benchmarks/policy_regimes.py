"""Would one policy per setting beat one policy for all? Nested leave one dataset out, a study (not shipped).

    python benchmarks/policy_regimes.py [--records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl]

The shipped policy is the one with the lowest mean regret over every cell (benchmarks/policy.py).
Since the probes' re-measurement (2026-12-07) the tie-break policy is the most accurate at 2-10
images per class and the least on full sets, so a rule "policy A below B training images per
class, policy C from B up" might beat any single one. Choosing A, B and C on the rows it is
scored on would flatter it, so the choice is nested: for each dataset held out, benchmarks/
policy.py's whole leave-one-dataset-out evaluation runs on the *other* datasets, (B, A, C) is the
combination with the lowest mean regret there (B from 5, 10, 20, 50), and it is then scored on the
held-out dataset's own cells (whose forecasts and table were fitted without it, as in policy.py).
Prints the nested result beside the single policies'.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from policy import POLICIES, ROOT, evaluate, load_cells

BOUNDARIES = (5, 10, 20, 50)


def pick(rows: list[dict]) -> tuple[int, str, str]:
    best = None
    for b in BOUNDARIES:
        low = [r for r in rows if r["per_class"] < b]
        high = [r for r in rows if r["per_class"] >= b]
        for a in POLICIES:
            for c in POLICIES:
                total = sum(r["scores"][a]["regret"] for r in low) + sum(r["scores"][c]["regret"] for r in high)
                if best is None or total < best[0]:
                    best = (total, b, a, c)
    return best[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", default=[str(ROOT / "docs/records/cpu.jsonl"), str(ROOT / "docs/records/cpu64_legacy.jsonl")])
    args = ap.parse_args()
    cells = load_cells([Path(p) for p in args.records])
    _, _, outer = evaluate(cells)
    scored = []
    for g in sorted({c["dataset"] for c in cells}):
        _, _, inner = evaluate([c for c in cells if c["dataset"] != g])
        b, a, c = pick(inner)
        mine = [r for r in outer if r["dataset"] == g]
        scored += [r["scores"][a if r["per_class"] < b else c] for r in mine]
        print(f"{g:14s} chose: {a} below {b} per class, {c} from {b} up", flush=True)
    for name, s in [("nested per-setting", scored)] + [(p, [r["scores"][p] for r in outer]) for p in POLICIES]:
        print(f"{name:20s} mean regret {statistics.fmean(x['regret'] for x in s):.2f} max {max(x['regret'] for x in s):.2f} "
              f"tied {sum(x['tied'] for x in s) / len(s):.0%} time {statistics.fmean(x['time_ratio'] for x in s):.2f}x")


if __name__ == "__main__":
    main()
