"""Measure the profile's probes again for recorded cells, resumably, without re-running the cells.

    python benchmarks/profile_cv.py [--records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl]
        [--out docs/records/profile_holdout.jsonl] [--data ../shared/data] [--hours H]

Since 2026-12-07 the probes scale each tap's features by one shared deviation
(``fit_standardizer``), which changes the profile's probe CV. The records' cells were profiled
before: this script rebuilds each cell's profiling sample (the same k-shot draw, the same seed),
extracts its features through one shared feature cache (the validation split is the same for
every k and seed of a dataset, so it is extracted once), runs the probe CV exactly as today's
profiler does, and writes one line per (dataset, k, seed); ``records.read_cells`` puts it into the
cells' profiles (the recorded CV stays beside it as ``recorded_probe_cv``).

The file keeps its first name (profile_holdout.jsonl): the lines written on 2026-12-07 also hold a
withdrawn study, a probe scored on the sample's validation images (``probe_holdout``), which read
labels of the split runs report on; nothing reads it, and this script no longer writes it
(docs/forecast_error.md).

``--at-input-size`` measures the same CV on features extracted at each cell's own input size (the
size its runs trained at) instead of the backbone's native 224 px, one line per (dataset, k, seed,
input size) in docs/records/profile_cv_at_size.jsonl: the study of a profile taken at the run's size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from records import SHARED, keyed_lines, read_cells
from sweeps import subsample

from advisor.backbones import create_backbone
from advisor.data.scan import scan_dataset
from advisor.measure.features import extract_features
from advisor.measure.profiler import DEFAULT_SAMPLE_SIZE, _probe_cv, profiling_sample
from advisor.measure.transferability import per_tap_evidence

ROOT = Path(__file__).resolve().parents[1]


def key(c: dict) -> tuple:
    return (c["dataset"], c.get("k"), c.get("seed", 0))


def key_at_size(c: dict) -> tuple:
    return (c["dataset"], c.get("k"), c.get("seed", 0), c["input_size"])


def profile_cv_line(path: Path, backbone, *, seed: int, cache: Path) -> dict | None:
    scan = scan_dataset(str(path))
    sample = profiling_sample(scan.samples, DEFAULT_SAMPLE_SIZE, seed=seed)
    fs = extract_features(sample, backbone, bn_moments=False, device="cpu", cache_dir=cache)
    used = [sample[i] for i in fs.index]
    train_rows = torch.tensor([i for i, s in enumerate(used) if s.split == "train"], dtype=torch.long)
    classes = len(scan.classes)
    if len(train_rows) < 2 * classes:
        return None
    train_feats = {t.name: fs.features[t.name][train_rows] for t in backbone.taps}
    evidence = per_tap_evidence(train_feats, fs.labels[train_rows], taps=[t.name for t in backbone.taps], seed=seed)
    cv, _, _ = _probe_cv(train_feats, fs.labels[train_rows], evidence, num_classes=classes, seed=seed)
    return {"probe_cv": cv, "train_rows": len(train_rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", default=[str(ROOT / "docs/records/cpu.jsonl"), str(ROOT / "docs/records/cpu64_legacy.jsonl")])
    ap.add_argument("--out", default=str(ROOT / "docs/records/profile_holdout.jsonl"))
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--cache", default=None, help="feature cache folder (default: a scratch folder kept for this run)")
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--at-input-size", action="store_true",
                    help="features at each cell's own input size (cells below 224 px), into profile_cv_at_size.jsonl")
    args = ap.parse_args()
    at_size = args.at_input_size
    if at_size and args.out == ap.get_default("out"):
        args.out = str(ROOT / "docs/records/profile_cv_at_size.jsonl")
    out = Path(args.out)
    keyof = key_at_size if at_size else key
    done = set(keyed_lines([out], keyof))
    cells = {}
    for c in read_cells([Path(p) for p in args.records]):
        if not at_size or c["input_size"] != 224:
            cells.setdefault(keyof(c), c)
    # few-shot cells first (the cheaper ones), then those whose training split fills the sample
    todo = [c for k, c in sorted(cells.items(), key=lambda kv: (kv[1]["train_images"] >= DEFAULT_SAMPLE_SIZE, kv[0][0],
                                                                kv[0][1] or 0, kv[0][2])) if k not in done]
    print(f"{len(cells)} (dataset, k, seed); {len(todo)} to do", flush=True)
    backbone = create_backbone("efficientnet_lite0")
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="profile-cv-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    for c in todo:
        if args.hours is not None and time.time() - t0 > args.hours * 3600:
            print("time is up: stopping before the next cell", flush=True)
            break
        path = Path(args.data) / c["dataset"]
        if c.get("k") is not None:
            path = subsample(str(path), c["k"], work / f"data-{c['dataset']}-k{c['k']}-s{c['seed']}", seed=c["seed"])
        t = time.time()
        bb = backbone.with_input_size(c["input_size"]) if at_size else backbone
        line = profile_cv_line(path, bb, seed=c["seed"], cache=cache)
        if line is None:
            print(f"{key(c)}: fewer than 2 training images per class in the sample", flush=True)
            continue
        line = {"dataset": c["dataset"], "k": c.get("k"), "seed": c["seed"], **line,
                **({"input_size": c["input_size"]} if at_size else {}),
                "recorded_probe_cv": c["profile"].get("recorded_probe_cv") or c["profile"].get("probe_cv"),
                "seconds": round(time.time() - t, 1),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{keyof(c)}: CV {line['probe_cv']} "
              f"(recorded {line['recorded_probe_cv']}) {line['seconds']} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
