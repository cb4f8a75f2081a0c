"""Few-shot training splits: the linear probe on pre_logits vs the layer probe (rule R5's decision).

    python benchmarks/few_shot.py DATASET ... [--per-class 3,8] [--input-size 128] [--json out.json]

Each dataset's training split is cut to K images per class (seeded, stratified, symlinks; the
validation split unchanged: benchmarks/sweeps.py's ``subsample``), then both probes run on it
with the rules' own plans. R5 used to force the linear probe whenever a class had fewer than 5
training images; this measures whether the layer probe (guarded by its one-standard-error
rule) is the safer choice there.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sweeps import subsample

from advisor.decide.models import RunPlan
from advisor.execute.runner import run_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--per-class", default="3,8")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ks = [int(k) for k in args.per_class.split(",")]
    print(f"{'dataset':14s} {'K':>3s} {'linear-probe':>13s} {'layer-probe':>12s}  layer-probe chose")
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.datasets:
            for k in ks:
                sub = subsample(path, k, Path(tmp) / f"{Path(path).name}-{k}")
                acc = {}
                for strategy in ("linear-probe", "layer-probe"):
                    plan = RunPlan(dataset=str(sub), backbone="efficientnet_lite0", strategy=strategy, rule_ids=["bench"],
                                   input_size=args.input_size)
                    out = run_plan(plan, run_dir=Path(tmp) / f"run-{Path(path).name}-{k}-{strategy}")
                    acc[strategy] = out.result.metrics.val_accuracy
                    chose = out.result.selected.get("taps")
                print(f"{Path(path).name:14s} {k:>3d} {acc['linear-probe']:>13.4f} {acc['layer-probe']:>12.4f}  {'+'.join(chose)}",
                      flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"dataset": Path(path).name, "per_class": k, "input_size": args.input_size,
                                            "accuracy": acc, "layer_probe_taps": chose}) + "\n")


if __name__ == "__main__":
    main()
