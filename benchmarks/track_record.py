"""Ship the measured outcomes as ``advisor/reference/track_record.json`` (what the forecaster learns from, what reports place a dataset among).

    python benchmarks/track_record.py --records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl
    python benchmarks/track_record.py docs/suite_cpu64_cap8.json --runs RUNS [--command "..."]   (version 1)

Version 2 (``--records``): one entry per cell of benchmarks/records.py (full sets and k-shot
subsamples, every seed and size) with its settings (input size, epoch cap, schedule share, k,
seed), each strategy's accuracy and training-split CV, and the profiling sample's CV per tap
(what the probe forecast starts from); benchmarks/legacy_records.py turns an older suite's runs
into such cells.

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


def from_records(paths: list[Path], names: list[str] | None = None) -> dict:
    """Version 2: one entry per complete cell of benchmarks/records.py's files (``names``: how the
    provenance names them, relative to the repository; default: as given)."""
    from records import probe_gap_inputs, read_cells

    entries = [{
        "dataset": c["dataset"], "k": c.get("k"), "seed": c.get("seed"), "input_size": c["input_size"],
        "epochs_cap": c["epochs_cap"], "schedule_share": c["schedule_share"], "device": c.get("device"),
        "train_images": c["train_images"], "train_per_class_median": c["train_per_class_median"],
        "similarity": c["similarity"], "similarity_ci": c.get("similarity_ci"),
        "accuracy": {s: round(v["accuracy"], 4) for s, v in c["strategies"].items()},
        "seconds": {s: v["seconds"] for s, v in c["strategies"].items()},
        "probe_cv": {s: round(v["cv"], 4) for s, v in c["strategies"].items() if v.get("cv") is not None},
        "sample_cv": {t: round(v, 4) for t, v in (c["profile"].get("probe_cv") or {}).items()},
        "best": c["best"], "recommended": c["recommended"], "regret_points": c["regret_points"], **probe_gap_inputs(c),
        **({"legacy": True} if c.get("legacy") else {}),
    } for c in read_cells(paths)]
    names = names or [str(p) for p in paths]
    return {"version": 2, "provenance": {
        "source": names,
        "command": "python benchmarks/records.py; python benchmarks/legacy_records.py docs/suite_cpu64_cap8.json "
                   "(2 CPU cores), then python benchmarks/track_record.py --records " + " ".join(names),
        "backbone": "efficientnet_lite0"}, "datasets": entries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", nargs="?")
    ap.add_argument("--records", nargs="*", default=None, help="benchmarks/records.py output (version 2)")
    ap.add_argument("--runs", default=None, help="the suite's --runs-dir (each probe run's result.json holds its CV accuracy)")
    ap.add_argument("--command", default="", help="the command that measured the suite")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    if args.records:
        data = from_records([Path(p) for p in args.records])
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
        print(f"{len(data['datasets'])} records -> {args.out}")
        return
    rows = json.loads(Path(args.suite).read_text())
    Path(args.out).write_text(json.dumps(track_record(rows, source=Path(args.suite).name, command=args.command,
                                                     runs=Path(args.runs) if args.runs else None), indent=1) + "\n")
    print(f"{len(rows)} datasets -> {args.out}")


if __name__ == "__main__":
    main()
