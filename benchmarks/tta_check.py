"""What does averaging each image with its mirror image (``--tta``) buy? Paired, on each run's validation split.

    python benchmarks/tta_check.py RUN_DIR [RUN_DIR ...] [--out tta.jsonl]

For each run, its validation images (the ones in ``result.json``, on which nothing was chosen) are
scored twice through the same pass ``advisor evaluate`` uses: as the model sees them, and with
each image's logits averaged with its mirror image's. Printed: accuracy, log-loss and calibration
error both ways, and the paired count of images the mirror fixes and breaks. Runs whose flip
check fired (R17) are skipped, as ``--tta`` refuses them. Rows are appended to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from advisor.backbones.classifier import load_classifier
from advisor.core.errors import AdvisorError
from advisor.data.scan import Sample
from advisor.execute.evaluate import score_samples
from advisor.execute.predict import check_tta
from strategies.results import RunResult


def check(run_dir: Path) -> dict | None:
    try:
        check_tta(run_dir)
    except AdvisorError:
        return None
    model, card = load_classifier(run_dir)
    result = RunResult.model_validate_json((run_dir / "result.json").read_text())
    samples = [Sample(path=path, label=true, split="val") for path, true, _ in result.predictions]
    scores, picks = {}, {}
    for tta in (False, True):
        scored: list = []
        scores[tta] = score_samples(model, samples, list(card.classes), split="val", workers=0, scored=scored, tta=tta)
        picks[tta] = {s.path: (pred == s.label) for s, pred, _ in scored}
    fixed = sum(picks[True][p] and not picks[False][p] for p in picks[True])
    broken = sum(picks[False][p] and not picks[True][p] for p in picks[True])
    one, two = scores[False], scores[True]
    return {"run": run_dir.name, "strategy": card.strategy, "images": one.n, "accuracy": one.accuracy,
            "accuracy_tta": two.accuracy, "loss": round(one.loss, 4), "loss_tta": round(two.loss, 4),
            "ece": one.ece, "ece_tta": two.ece, "fixed": fixed, "broken": broken}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    print(f"{'run':44s}{'images':>7s}{'accuracy':>10s}{'with tta':>10s}{'points':>8s}{'fixed':>7s}{'broken':>7s}"
          f"{'log-loss':>10s}{'with tta':>10s}{'ECE %':>7s}{'tta':>6s}")
    for run_dir in args.runs:
        row = check(run_dir)
        if row is None:
            print(f"{run_dir.name[:43]:44s} skipped: its flip check found that flips change labels (R17)")
            continue
        print(f"{row['run'][:43]:44s}{row['images']:7d}{row['accuracy']:10.4f}{row['accuracy_tta']:10.4f}"
              f"{100 * (row['accuracy_tta'] - row['accuracy']):+8.2f}{row['fixed']:7d}{row['broken']:7d}"
              f"{row['loss']:10.4f}{row['loss_tta']:10.4f}{100 * row['ece']:7.1f}{100 * row['ece_tta']:6.1f}", flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
