"""Re-measure the two probes of recorded cells with today's probe code, from cached features, resumably.

    python benchmarks/remeasure_probes.py [--records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl]
        [--out docs/records/probes_remeasured.jsonl] [--data ../shared/data] [--cache DIR] [--hours H]

The probes' recipe changed on 2026-12-07 (one scale per tap instead of one per feature:
advisor/measure/logistic.py ``fit_standardizer``); their accuracies in the records predate it,
and so does everything learned from them (the fine-tunes' gain over the better probe, the
probe-gap models, the policy's ties). The probes are deterministic given the features, so they
can be measured again without re-running the fine-tunes: for each cell this rebuilds its data
(the same k-shot draw and seed), extracts every tap of its training and validation images at
the cell's input size (one shared cache), plans each probe as a forced run would
(``plan_for_strategy``: its taps and class weighting) and fits it with the strategies' own code
(``fit_probe``, ``layer_probe_sweep``). It also fits the linear probe with the old recipe, so
each line shows whether the re-measurement reproduces what the record's run measured. One line
per cell; k-shot cells first (where the change matters), then the full sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from records import SHARED, cell_key, keyed_lines, read_cells
from sweeps import subsample

import advisor.measure.logistic as logistic
import strategies.probe as probe_code
from advisor.backbones import create_backbone
from advisor.data.scan import scan_dataset
from advisor.decide.rules import recommend
from advisor.decide.rules.engine import plan_for_strategy
from advisor.measure.features import extract_features
from advisor.measure.logistic import MIN_STD, Standardizer, class_weights_from
from advisor.measure.models import DatasetProfile

ROOT = Path(__file__).resolve().parents[1]


def per_feature_standardizer(x: torch.Tensor, *, blocks=None, per_column=True) -> Standardizer:
    """The recipe before 2026-12-07: each column's own mean and deviation."""
    return Standardizer(x.mean(dim=0), x.std(dim=0, correction=0).clamp_min(MIN_STD))


def fit(strategy: str, feats: dict, y: torch.Tensor, plan, classes: int, seed: int):
    weights = class_weights_from(y, classes) if plan.class_weighting else None
    if strategy == "layer-probe":
        return probe_code.layer_probe_sweep(feats, y, taps=plan.taps, num_classes=classes, class_weights=weights, seed=seed)[0]
    return probe_code.fit_probe(feats, y, taps=plan.taps, num_classes=classes, class_weights=weights, seed=seed)


def accuracy(fit_, feats: dict, y: torch.Tensor) -> float:
    return float((probe_code.predict_logits(fit_, feats).argmax(1) == y).float().mean())


def remeasure(c: dict, backbone, *, data: Path, work: Path, cache: Path) -> dict:
    path = data / c["dataset"]
    if c.get("k") is not None:
        path = subsample(str(path), c["k"], work / f"data-{c['dataset']}-k{c['k']}-s{c['seed']}", seed=c["seed"])
    scan = scan_dataset(str(path))
    train, val = scan.split("train"), scan.split("val")
    bb = backbone.with_input_size(c["input_size"])
    fs = extract_features(train + val, bb, device="cpu", cache_dir=cache)
    tr = torch.tensor([j for j, i in enumerate(fs.index) if i < len(train)])
    va = torch.tensor([j for j, i in enumerate(fs.index) if i >= len(train)])
    classes = len(scan.classes)
    profile = DatasetProfile.model_validate(c["profile"])
    rec = recommend(profile, taps=backbone.taps, epochs_cap=c["epochs_cap"])
    out = {"key": list(cell_key(c)), "dataset": c["dataset"], "k": c.get("k"), "seed": c["seed"], "input_size": c["input_size"],
           "epochs_cap": c["epochs_cap"], "n_train": len(tr), "n_val": len(va)}
    for strategy in ("linear-probe", "layer-probe"):
        plan = plan_for_strategy(rec, strategy, taps=backbone.taps)
        taps = list(plan.taps)
        feats_tr = {t: fs.features[t][tr] for t in taps}
        feats_va = {t: fs.features[t][va] for t in taps}
        f = fit(strategy, feats_tr, fs.labels[tr], plan, classes, c["seed"])
        hits = (probe_code.predict_logits(f, feats_va).argmax(1) == fs.labels[va]).int().tolist()
        out[strategy] = {"accuracy": round(sum(hits) / len(hits), 4), "cv": round(f.cv_accuracy, 4), "taps": list(f.taps),
                         "l2": f.l2, "swept": taps, "correct": "".join(map(str, hits)),
                         "recorded": c["strategies"][strategy]["accuracy"]}
    # the old recipe, linear probe only: does the re-measurement reproduce the record's run?
    saved = (logistic.fit_standardizer, probe_code.fit_standardizer)
    logistic.fit_standardizer = probe_code.fit_standardizer = per_feature_standardizer
    try:
        plan = plan_for_strategy(rec, "linear-probe", taps=backbone.taps)
        f = fit("linear-probe", {t: fs.features[t][tr] for t in plan.taps}, fs.labels[tr], plan, classes, c["seed"])
        out["linear-probe"]["old_recipe"] = round(accuracy(f, {t: fs.features[t][va] for t in plan.taps}, fs.labels[va]), 4)
    finally:
        logistic.fit_standardizer, probe_code.fit_standardizer = saved
    return out


def done_keys(out: Path) -> set:
    return set(keyed_lines([out], lambda h: tuple(h["key"])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", default=[str(ROOT / "docs/records/cpu.jsonl"), str(ROOT / "docs/records/cpu64_legacy.jsonl")])
    ap.add_argument("--out", default=str(ROOT / "docs/records/probes_remeasured.jsonl"))
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--cache", default=None)
    ap.add_argument("--hours", type=float, default=None)
    ap.add_argument("--reverse", action="store_true", help="take the cells from the other end (a second process beside a first)")
    args = ap.parse_args()
    out = Path(args.out)
    cells = [c for c in read_cells([Path(p) for p in args.records]) if tuple(cell_key(c)) not in done_keys(out)]
    cells.sort(key=lambda c: (c.get("k") is None, c["input_size"] != 128, c.get("k") or 0, c["dataset"], c["seed"]),
               reverse=args.reverse)
    print(f"{len(cells)} cells to re-measure", flush=True)
    backbone = create_backbone("efficientnet_lite0")
    work = Path(tempfile.mkdtemp(prefix="probes-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    t0 = time.time()
    for c in cells:
        if args.hours is not None and time.time() - t0 > args.hours * 3600:
            print("time is up: stopping before the next cell", flush=True)
            break
        if tuple(cell_key(c)) in done_keys(out):  # measured meanwhile by a process working from the other end
            continue
        t = time.time()
        line = {**remeasure(c, backbone, data=Path(args.data), work=work, cache=cache), "seconds": round(time.time() - t, 1),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        lp, yp = line["linear-probe"], line["layer-probe"]
        print(f"{tuple(line['key'])}: linear {lp['recorded']:.3f} -> {lp['accuracy']:.3f} (old recipe again {lp['old_recipe']:.3f}); "
              f"layer {yp['recorded']:.3f} -> {yp['accuracy']:.3f} {line['seconds']} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
