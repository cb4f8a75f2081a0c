"""Reuse an older suite's runs as track-record cells: the runs as they were, the profile measured again.

    python benchmarks/legacy_records.py docs/suite_cpu64_cap8.json --out docs/records/cpu64_legacy.jsonl

The 64-px, 8-epoch-cap suite (docs/suite_cpu64_cap8.json) ran the same fine-tune recipe the
records use, but its profiles predate the profiling sample's probe CV that the forecast starts
from. This profiles each dataset again (seed 0, the same 300-image sample: the features come
from the cache when benchmarks/records.py has extracted them) and writes one cell per suite row
in benchmarks/records.py's format, marked ``"legacy": true``. The strategies' accuracies, wall
times and ties are the suite's own; each probe's training-split CV was not recorded (null).
Resumable: a dataset already in OUT is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]


def convert(row: dict, profile) -> dict:
    from advisor.decide.recipe import finetune_schedule

    acc = row["accuracy"]
    tied = set(row.get("tied_with_best") or [])
    best = row["best"]
    strategies = {s: {"accuracy": a, "ci": row.get("ci", {}).get(s), "seconds": row.get("seconds", {}).get(s),
                      "tied_with_best": s == best or s in tied, "winner": s == best, "cv": None,
                      "behind_best": round(100 * (acc[best] - a), 3)} for s, a in acc.items()}
    n_val = sum(n for split, n in profile.images_per_split.items() if split != "train")
    schedule = finetune_schedule(row["train_images"])[1]
    sim = profile.similarity.score if profile.similarity else None
    return {
        "dataset": row["dataset"], "k": None, "input_size": row["input_size"], "epochs_cap": row["epochs_cap"], "seed": 0,
        "legacy": True, "backbone": profile.backbone, "device": row.get("device"), "num_classes": profile.num_classes,
        "train_images": row["train_images"], "train_per_class_median": row["train_per_class_median"],
        "train_per_class_min": profile.train_per_class_min, "n_val": n_val,
        "similarity": sim.value if sim else None, "similarity_ci": [sim.low, sim.high] if sim else None,
        "schedule_epochs": schedule,
        "schedule_share": round(min(1.0, row["epochs_cap"] / schedule), 4) if row.get("epochs_cap") else 1.0,
        "strategies": strategies, "best": best, "recommended": row["recommended"], "regret_points": row["regret_points"],
        "rule": row.get("rule"),
        "profile": profile.model_dump(mode="json", exclude={"skipped", "exact_duplicates", "near_duplicates"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite")
    ap.add_argument("--out", default=str(ROOT / "docs" / "records" / "cpu64_legacy.jsonl"))
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "records"))
    args = ap.parse_args()
    os.environ.setdefault("ADVISOR_CACHE_DIR", args.cache_dir)
    from advisor.measure.profiler import profile_dataset

    out = Path(args.out)
    done = {json.loads(line)["dataset"] for line in out.read_text().splitlines()} if out.exists() else set()
    for row in json.loads(Path(args.suite).read_text()):
        if row["dataset"] in done:
            continue
        profile, _, _ = profile_dataset(SHARED / row["dataset"], sample_size=300, seed=0, cache_dir=args.cache_dir)
        cell = convert(row, profile)
        with open(out, "a") as fh:
            fh.write(json.dumps(cell) + "\n")
        print(f"{row['dataset']}: sample CV {profile.probe_cv}", flush=True)


if __name__ == "__main__":
    main()
