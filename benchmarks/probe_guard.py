"""The layer probe's one-standard-error guard, on and off, next to the linear probe, on every dataset.

    python benchmarks/probe_guard.py DATASET ... [--input-size 128] [--json out.jsonl]

Same split, taps and features for all three (one extraction, cached): the linear probe on
pre_logits, the layer probe keeping the best cross-validated candidate ("best"), and the layer
probe keeping the simplest candidate within one standard error of the best ("guarded", the
default). Prints validation accuracy and the taps each layer probe kept.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import strategies.probe as probe
from advisor.decide.models import RunPlan
from advisor.execute.runner import run_plan


def run(dataset: str, strategy: str, size: int, tmp: Path, tag: str) -> tuple[float, list[str]]:
    plan = RunPlan(dataset=dataset, backbone="efficientnet_lite0", strategy=strategy, rule_ids=["bench"], input_size=size)
    out = run_plan(plan, run_dir=tmp / f"{Path(dataset).name}-{strategy}-{tag}")
    return out.result.metrics.val_accuracy, out.result.selected["taps"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    guarded = probe._one_standard_error

    def best_only(results):
        # The previous rule: the best CV score, ties to fewer features.
        cand = max(results, key=lambda r: (float("-inf") if r[3] != r[3] else r[3], -r[1].shape[1]))
        return (*cand[:3], None)

    print(f"{'dataset':14s} {'linear':>7s} {'layer best':>11s} {'layer guarded':>14s}  taps (best / guarded)")
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.datasets:
            lin, _ = run(d, "linear-probe", args.input_size, Path(tmp), "lin")
            probe._one_standard_error = best_only
            try:
                best, best_taps = run(d, "layer-probe", args.input_size, Path(tmp), "best")
            finally:
                probe._one_standard_error = guarded
            safe, safe_taps = run(d, "layer-probe", args.input_size, Path(tmp), "guarded")
            print(f"{Path(d).name:14s} {lin:7.4f} {best:11.4f} {safe:14.4f}  {'+'.join(best_taps)} / {'+'.join(safe_taps)}",
                  flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"dataset": Path(d).name, "input_size": args.input_size, "linear": lin,
                                        "layer_best": best, "layer_guarded": safe, "taps_best": best_taps,
                                        "taps_guarded": safe_taps}) + "\n")


if __name__ == "__main__":
    main()
