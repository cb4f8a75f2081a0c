"""Which backbone, measured: Kendall tau between advisor's backbone ranking and the fine-tuned accuracy each reaches.

    python benchmarks/backbone_rank.py [--data ../shared/data] [--datasets a,b,...] [--backbones lite0,lite1,lite2]
        [--input-size 128] [--epochs 8] [--strategy full-finetune] [--out docs/records/backbone_rank.jsonl] [--dry-run]

For each set: ``advisor.recommend(..., backbones=...)`` ranks the backbones by their best forecast
(profiling sample, forecaster); then each backbone is fine-tuned (``--strategy``, same split, input
size and epoch cap) and its validation accuracy recorded. Per set: Kendall tau of the ranking
against the measured order, and of the baseline "bigger is better" (ImageNet top-1 order:
lite2 > lite1 > lite0). Resumable: a set already in OUT is skipped. The CPU takes ~1 h for six
small sets at 128 px; on a GPU it is minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BIGGER_IS_BETTER = ["efficientnet_lite2", "efficientnet_lite1", "efficientnet_lite0"]  # ImageNet top-1, best first


def kendall_tau(order_a: list[str], order_b: list[str]) -> float:
    """Kendall's tau-a between two orders of the same items (1: same order, -1: reversed)."""
    pos_a, pos_b = {x: i for i, x in enumerate(order_a)}, {x: i for i, x in enumerate(order_b)}
    pairs = list(itertools.combinations(order_a, 2))
    score = sum(1 if (pos_a[x] - pos_a[y]) * (pos_b[x] - pos_b[y]) > 0 else -1 for x, y in pairs)
    return score / len(pairs) if pairs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--datasets", default="hymenoptera,brain-mri,malaria,caltech20,dtd10,intel-scenes")
    ap.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--strategy", default="full-finetune")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "records" / "backbone_rank.jsonl")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import advisor

    backbones = args.backbones.split(",")
    done = {json.loads(line)["dataset"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    todo = [d for d in args.datasets.split(",") if d not in done]
    print(f"{len(todo)} set(s) to run: {', '.join(todo)}; {len(done)} recorded")
    if args.dry_run:
        return
    for name in todo:
        with tempfile.TemporaryDirectory() as tmp:
            rec = advisor.recommend(args.data / name, backbone=backbones[0], backbones=backbones, input_size=args.input_size,
                                    epochs=args.epochs, device=args.device, cache_dir=Path(tmp) / "cache")
            ranking = [o.backbone for o in rec.backbones.options]
            measured = {}
            for b in backbones:
                out = advisor.run(args.data / name, strategy=args.strategy, backbone=b, input_size=args.input_size,
                                  epochs=args.epochs, device=args.device, runs_dir=Path(tmp) / "runs",
                                  cache_dir=Path(tmp) / "cache")
                measured[b] = out.result.metrics.val_accuracy
        order = sorted(backbones, key=lambda b: -measured[b])
        row = {"dataset": name, "input_size": args.input_size, "epochs": args.epochs, "strategy": args.strategy,
               "ranking": ranking, "forecast": {o.backbone: o.best_accuracy for o in rec.backbones.options},
               "measured": measured, "tau_advisor": round(kendall_tau(ranking, order), 3),
               "tau_bigger_is_better": round(kendall_tau([b for b in BIGGER_IS_BETTER if b in backbones], order), 3)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if rows:
        ta = sum(r["tau_advisor"] for r in rows) / len(rows)
        tb = sum(r["tau_bigger_is_better"] for r in rows) / len(rows)
        print(f"mean Kendall tau over {len(rows)} sets: advisor's ranking {ta:+.2f}, bigger is better {tb:+.2f}")


if __name__ == "__main__":
    os.environ.setdefault("ADVISOR_THREADS", "default")
    main()
