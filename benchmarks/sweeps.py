"""Measured outcomes the rule thresholds are calibrated on: taps, fine-tune depth, dataset size.

    python benchmarks/sweeps.py DATASET ... [--taps] [--depths] [--sizes 25,50,100,200]
        [--input-size 128] [--epochs 4] [--out docs/sweeps]

Per dataset, on the split and plan `advisor recommend` gives:

* ``--taps``: a probe on each tap alone (every stage and pre_logits): validation accuracy and
  the cross-validated accuracy the layer probe ranks taps by. Calibrates which taps to sweep.
* ``--depths``: partial fine-tunes with every number of frozen stages, and the full
  fine-tune. Calibrates the partial fine-tune's depth.
* ``--sizes``: the training split cut to at most K images per class (seeded, stratified;
  the validation split unchanged), then every strategy on it. Calibrates the size boundary:
  the per-class count from which fine-tuning beats the probes.

Results go to OUT.json after each dataset, so a run cut short keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

from advisor.backbones import PRE_LOGITS, create_backbone
from advisor.core.distributed import resolve_device
from advisor.data.scan import scan_dataset
from advisor.decide.advise import recommend_dataset
from advisor.decide.rules import plan_for_strategy
from advisor.execute.compare import compare
from advisor.execute.runner import apply_overrides, run_plan


def _run(plan, dataset, run_dir, **kw) -> dict:
    t0 = time.perf_counter()
    out = run_plan(plan, dataset=dataset, run_dir=run_dir, **kw)
    r = out.result
    return {"val_accuracy": r.metrics.val_accuracy, "ci": r.metrics.val_accuracy_ci,
            "n_val": r.metrics.n_val, "seconds": round(time.perf_counter() - t0, 2),
            "trainable_params": r.trainable_params,
            "selected": {k: v for k, v in r.selected.items() if k in ("taps", "l2", "cv_accuracy", "frozen_stages", "best_epoch")}}


def tap_sweep(rec, dataset, runs: Path, *, input_size, backbone, **kw) -> list[dict]:
    bb_taps = create_backbone(backbone).taps
    base = plan_for_strategy(rec, "layer-probe", taps=bb_taps)
    rows = []
    for tap in (t.name for t in bb_taps):
        plan = apply_overrides(base.model_copy(update={"taps": [tap]}), input_size=input_size)
        rows.append({"tap": tap, **_run(plan, dataset, runs / f"tap-{tap}", **kw)})
    return rows


def depth_sweep(rec, dataset, runs: Path, *, input_size, epochs, backbone, **kw) -> list[dict]:
    bb_taps = create_backbone(backbone).taps
    stages = len([t for t in bb_taps if t.name != PRE_LOGITS])
    rows = []
    for frozen in [*range(stages - 1, -1, -1), None]:
        name = "full-finetune" if frozen is None else "partial-finetune"
        plan = plan_for_strategy(rec, name, taps=bb_taps)
        if frozen is not None:
            plan = plan.model_copy(update={"frozen_stages": frozen, "trainable_stages": stages - frozen})
        cap = min(epochs, plan.recipe.epochs) if epochs and plan.recipe is not None else None
        plan = apply_overrides(plan, input_size=input_size, epochs=cap)
        label = "full" if frozen is None else f"frozen{frozen}"
        rows.append({"frozen_stages": frozen, "stages": stages, **_run(plan, dataset, runs / f"depth-{label}", **kw)})
    return rows


def subsample(dataset: str, per_class: int, dest: str | Path, *, seed: int = 0, keep_splits=("val",)) -> Path:
    """A symlinked copy of ``dataset`` with at most ``per_class`` training images per class and the same
    ``keep_splits`` (whole)."""
    dest = Path(dest)
    scan = scan_dataset(dataset)
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for s in scan.split("train"):
        by_class.setdefault(s.label, []).append(s)
    keep = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: s.path)
        rng.shuffle(items)
        keep += [("train", s) for s in items[:per_class]]
    keep += [(split, s) for split in keep_splits for s in scan.split(split)]
    for split, s in keep:
        target = dest / split / scan.classes[s.label]
        target.mkdir(parents=True, exist_ok=True)
        link = target / Path(s.path).name
        if not link.exists():
            os.symlink(s.path, link)
    return dest


def size_sweep(dataset, sizes, runs: Path, *, input_size, epochs, backbone, sample_size, **kw) -> list[dict]:
    rows = []
    for k in sizes:
        sub = subsample(dataset, k, runs / f"data-{k}")
        res = compare(sub, backbone=backbone, runs_dir=runs / f"size-{k}", input_size=input_size, epochs=epochs,
                      sample_size=sample_size, **kw)
        p = res.recommendation.profile
        rows.append({"per_class": k, "train_images": p.train_images, "train_per_class_median": p.train_per_class_median,
                     "recommended": res.recommended, "best": res.winner, "regret_points": res.regret_points,
                     "accuracy": {r.strategy: r.val_accuracy for r in res.rows},
                     "seconds": {r.strategy: r.seconds for r in res.rows}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--taps", action="store_true")
    ap.add_argument("--depths", action="store_true")
    ap.add_argument("--sizes", default="", help="comma-separated per-class caps, e.g. 25,50,100,200")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="cap for the fine-tunes [default: the plans' epochs]")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="docs/sweeps")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    kw = {"device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.datasets:
            name = Path(path).name
            runs = Path(tmp) / name
            rec = recommend_dataset(path, backbone=args.backbone, sample_size=args.sample_size, device=args.device)
            entry = results.setdefault(name, {})
            entry.update(train_images=rec.profile.train_images, train_per_class_median=rec.profile.train_per_class_median,
                         input_size=args.input_size or 224, epochs_cap=args.epochs, device=str(resolve_device(args.device)))
            if args.taps:
                entry["taps"] = tap_sweep(rec, path, runs, input_size=args.input_size, backbone=args.backbone, **kw)
                out.write_text(json.dumps(results, indent=2))
                print(name, "taps", [(r["tap"], round(r["val_accuracy"], 3)) for r in entry["taps"]], flush=True)
            if args.depths:
                entry["depths"] = depth_sweep(rec, path, runs, input_size=args.input_size, epochs=args.epochs,
                                              backbone=args.backbone, **kw)
                out.write_text(json.dumps(results, indent=2))
                print(name, "depths", [(r["frozen_stages"], round(r["val_accuracy"], 3), r["seconds"]) for r in entry["depths"]],
                      flush=True)
            if sizes:
                entry["sizes"] = size_sweep(path, sizes, runs, input_size=args.input_size, epochs=args.epochs,
                                            backbone=args.backbone, sample_size=args.sample_size, **kw)
                out.write_text(json.dumps(results, indent=2))
                print(name, "sizes", [(r["per_class"], r["accuracy"]) for r in entry["sizes"]], flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
