"""Validation accuracy and wall time of all four strategies on real datasets.

    python benchmarks/strategies.py [DATASET ...] [--input-size 128] [--epochs 4] [--json OUT]

For each dataset (default: hymenoptera, brain-mri, mnist-small from ../shared/data) the plan
comes from `advisor recommend`; each strategy then runs on the same split, backbone and input
size, sharing the feature cache (so the probes' features are extracted once). On the CPU use a
reduced --input-size and a small --epochs cap; on a GPU run at 224 px with the plans' epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `strategies` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from advisor.advise import recommend_dataset
from advisor.runner import apply_overrides, run_plan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT = ["hymenoptera", "brain-mri", "mnist-small"]
STRATEGIES = ["linear-probe", "layer-probe", "partial-finetune", "full-finetune"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*")
    ap.add_argument("--input-size", type=int, default=None, help="default: the backbone's (224)")
    ap.add_argument("--epochs", type=int, default=None, help="cap for the fine-tunes (default: the plan's)")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    paths = args.datasets or [str(SHARED / d) for d in DEFAULT]
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for path in paths:
            advised = recommend_dataset(path, device=args.device).strategy
            for name in args.strategies.split(","):
                rec = recommend_dataset(path, device=args.device, force_strategy=name)
                plan = apply_overrides(rec.plan, input_size=args.input_size,
                                       epochs=min(args.epochs, rec.plan.epochs) if args.epochs and name.endswith("finetune") else None)
                t0 = time.perf_counter()
                out = run_plan(plan, dataset=path, runs_dir=runs, device=args.device)
                wall = time.perf_counter() - t0
                m = out.result["metrics"]
                row = {"dataset": Path(path).name, "strategy": name, "recommended": name == advised,
                       "val_accuracy": m["val_accuracy"], "ci": m["val_accuracy_ci"], "n_val": m["n_val"],
                       "seconds": round(wall, 1), "trainable_params": out.result["trainable_params"],
                       "input_size": plan.input_size, "epochs": out.result.get("epochs_completed"),
                       "selected": {k: v for k, v in out.result["selected"].items() if k in ("taps", "l2", "frozen_stages", "best_epoch")}}
                rows.append(row)
                print(f"{row['dataset']:12s} {name:17s}{'*' if row['recommended'] else ' '} acc {row['val_accuracy']:.4f} "
                      f"[{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]  {wall:7.1f} s  trainable {row['trainable_params']:>9,}  "
                      f"{plan.input_size}px  {row['selected']}", flush=True)
    print("\n| dataset | strategy | val accuracy [95% CI] | wall time | trainable params |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['strategy']}{' (recommended)' if r['recommended'] else ''} | {r['val_accuracy']:.3f} "
              f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['seconds']:.0f} s | {r['trainable_params']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
