"""Ship the suite's measured outcomes as ``advisor/reference/track_record.json`` (what reports place a dataset among).

    python benchmarks/track_record.py docs/suite_cpu64_cap8.json --runs RUNS [--command "..."]

One entry per dataset: its size, similarity (with interval), each strategy's accuracy, each
probe's cross-validated accuracy on the training split (from the suite's runs in ``--runs``:
the forecaster learns how far validation falls from it), the best and the recommended strategy,
and the regret; the provenance says how it was measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "advisor" / "reference" / "track_record.json"


def probe_cv(runs: Path | None, dataset: str) -> dict[str, float]:
    """Each probe's CV accuracy on the training split, read from the suite run's ``result.json``."""
    out = {}
    for strategy in ("linear-probe", "layer-probe"):
        found = sorted(runs.glob(f"compare-{dataset}-*/{strategy}/result.json")) if runs else []
        cv = json.loads(found[-1].read_text())["selected"].get("cv_accuracy") if found else None
        if cv is not None:
            out[strategy] = round(cv, 4)
    return out


def track_record(rows: list[dict], *, source: str, command: str, runs: Path | None = None) -> dict:
    first = rows[0] if rows else {}
    return {
        "provenance": {"source": source, "command": command, "input_size": first.get("input_size"),
                       "epochs_cap": first.get("epochs_cap"), "device": first.get("device"),
                       "backbone": (first.get("profile") or {}).get("backbone")},
        "datasets": [{
            "dataset": r["dataset"], "train_images": r["train_images"], "train_per_class_median": r["train_per_class_median"],
            "similarity": r["similarity"]["value"] if r.get("similarity") else None,
            "similarity_ci": [r["similarity"]["low"], r["similarity"]["high"]] if r.get("similarity") else None,
            "accuracy": r["accuracy"], "probe_cv": probe_cv(runs, r["dataset"]), "best": r["best"], "recommended": r["recommended"], "rule": r.get("rule"),
            "regret_points": r["regret_points"],
        } for r in rows],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite")
    ap.add_argument("--runs", default=None, help="the suite's --runs-dir (each probe run's result.json holds its CV accuracy)")
    ap.add_argument("--command", default="", help="the command that measured the suite")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = json.loads(Path(args.suite).read_text())
    Path(args.out).write_text(json.dumps(track_record(rows, source=Path(args.suite).name, command=args.command,
                                                     runs=Path(args.runs) if args.runs else None), indent=1) + "\n")
    print(f"{len(rows)} datasets -> {args.out}")


if __name__ == "__main__":
    main()
