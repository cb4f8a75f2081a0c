"""Ship the suite's measured outcomes as ``advisor/reference/track_record.json`` (what reports place a dataset among).

    python benchmarks/track_record.py docs/suite_cpu64_cap8.json [--command "..."]

One entry per dataset: its size, similarity (with interval), each strategy's accuracy, the
best and the recommended strategy, and the regret; the provenance says how it was measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "advisor" / "reference" / "track_record.json"


def track_record(rows: list[dict], *, source: str, command: str) -> dict:
    first = rows[0] if rows else {}
    return {
        "provenance": {"source": source, "command": command, "input_size": first.get("input_size"),
                       "epochs_cap": first.get("epochs_cap"), "device": first.get("device"),
                       "backbone": (first.get("profile") or {}).get("backbone")},
        "datasets": [{
            "dataset": r["dataset"], "train_images": r["train_images"], "train_per_class_median": r["train_per_class_median"],
            "similarity": r["similarity"]["value"] if r.get("similarity") else None,
            "similarity_ci": [r["similarity"]["low"], r["similarity"]["high"]] if r.get("similarity") else None,
            "accuracy": r["accuracy"], "best": r["best"], "recommended": r["recommended"], "rule": r.get("rule"),
            "regret_points": r["regret_points"],
        } for r in rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite")
    ap.add_argument("--command", default="", help="the command that measured the suite")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = json.loads(Path(args.suite).read_text())
    Path(args.out).write_text(json.dumps(track_record(rows, source=Path(args.suite).name, command=args.command), indent=1) + "\n")
    print(f"{len(rows)} datasets -> {args.out}")


if __name__ == "__main__":
    main()
