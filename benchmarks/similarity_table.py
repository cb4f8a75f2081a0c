"""Similarity signals and placement of every dataset in ../shared/data (or the paths given).

    python benchmarks/similarity_table.py [DATASET ...] [--sample-size 300] [--json OUT]

Prints, per dataset: sample size, KID, Fréchet excess over its same-N null, BN shift (total
and per depth), ImageNet-head confidence, greyscale share, near/exact duplicates, the combined
similarity score with its 95% interval, and the time taken.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from advisor.decide.advise import recommend_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT = ["hymenoptera", "flowers", "dtd10", "brain-mri", "mnist-small"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*")
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    paths = args.datasets or [str(SHARED / d) for d in DEFAULT]
    rows = []
    for path in paths:
        t0 = time.perf_counter()
        rec = recommend_dataset(path, sample_size=args.sample_size)
        prof = rec.profile
        dt = time.perf_counter() - t0
        sim = prof.similarity
        sig = {s.name: s for s in sim.signals}
        row = {
            "dataset": Path(path).name, "n": sim.sample_size, "seconds": round(dt, 1),
            "kid": sig["kid"].raw.model_dump() if sig["kid"].available else None,
            "frechet_excess": sig["frechet"].raw.value if sig["frechet"].available else None,
            "frechet_null": sig["frechet"].null,
            "bn_shift": sig["bn_shift"].raw.model_dump(),
            "bn_by_depth": {d.stage: round(d.excess if d.excess is not None else d.shift.value, 4) for d in sim.bn_by_depth},
            "pattern": sim.shift_pattern,
            "confidence": sig["imagenet_confidence"].raw.value if "imagenet_confidence" in sig else None,
            "grey": prof.greyscale_share.value if prof.greyscale_share else None,
            "exact_dups": len(prof.exact_duplicates), "near_dups": len(prof.near_duplicates),
            "cross_split": prof.cross_split_duplicates,
            "score": sim.score.model_dump(),
            "train_per_class_median": prof.train_per_class_median, "train_images": prof.train_images,
            "size_class": rec.size_class, "similarity_class": rec.similarity_class, "strategy": rec.strategy,
            "rules": rec.plan.rule_ids,
        }
        rows.append(row)
        k = row["kid"]
        print(f"{row['dataset']:12s} n={row['n']:4d} {dt:6.1f}s  KID {k['value']:.4f} [{k['low']:.4f},{k['high']:.4f}]  "
              f"FD excess {row['frechet_excess']:7.1f} (null {row['frechet_null']:.1f})  "
              f"BN {row['bn_shift']['value']:.3f} [{row['bn_shift']['low']:.3f},{row['bn_shift']['high']:.3f}]  "
              f"conf {row['confidence']:.3f}  grey {row['grey']:.2f}  dups {row['exact_dups']}/{row['near_dups']} "
              f"(cross {row['cross_split']})  score {row['score']['value']:.3f} [{row['score']['low']:.3f},{row['score']['high']:.3f}]",
              flush=True)
        print(f"{'':12s} depth {row['bn_by_depth']}  pattern {row['pattern']}", flush=True)
        print(f"{'':12s} train {prof.train_images} (median {prof.train_per_class_median:.0f}/class) -> {rec.size_class}, "
              f"{rec.similarity_class} -> {rec.strategy} (rules {', '.join(rec.plan.rule_ids)})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
