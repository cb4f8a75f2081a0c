"""One class with 1-3 training images among classes of K: what cross-validation then measures, and the probe it picks.

    python benchmarks/tiny_class.py DATASET... [--per-class 5,10,20] [--tiny 1,2,3] [--seeds 10] [--json F]

Users' folders often have one rare class. The project's cross-validation (advisor.measure.logistic.cross_validate)
used to take ``min(5, smallest class)`` folds and to skip CV altogether when a class had a single training image,
so one rare class made the whole set 2-fold, or left the profile without a probe CV (so no forecast, no learning
curve, no "what more images buy") and the probe with an unselected L2. scikit-learn's StratifiedKFold instead keeps
the folds and deals a small class into fewer of them; the project's k-NN and label checks already did so.

Each scenario draws, from one dataset's images (seeded), K training images per class and ``m`` for one class (the
tiny class turns with the seed); every other image is held out. Both rules run on the same draw:
  old: folds = min(5, m), no CV when m = 1 (L2 = the middle of the grid);
  new: folds = min(5, largest class) (the rule now in cross_validate: advisor.measure.logistic.fold_count); the
       single image of a 1-image class is held out by the one probe that never saw its class and counts as a miss.
Printed per (K, m), over datasets and seeds:
  * CV ran: share of scenarios with a probe CV (what the profile's forecast needs);
  * |CV - held out|: the profile's probe CV (unweighted, best L2 of the grid) against the accuracy of the probe at
    that L2 on the held-out images weighted to the training split's class shares (a validation split carved from
    the same folder has those shares), in points;
  * balanced held-out accuracy of the probe each rule fits (class-weighted loss and CV, as R8 makes it), paired.
Then, for m = 1, the other way to score that image, leaving it out of the CV score (CV x n / (n - 1) of the same
rows, n training images: the L2 choice is the same, a constant miss moves no ranking), against counting it as a miss,
each chosen leave-one-dataset-out by mean |CV - held out| on the other datasets and scored on the held-out one.
Features: pre_logits of efficientnet_lite0 at --input-size, from advisor's feature cache (at most --cap images per
class are extracted).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path

import torch

from advisor.backbones.registry import create_backbone
from advisor.data.scan import scan_dataset
from advisor.measure.features import extract_features
from advisor.measure.logistic import DEFAULT_L2_GRID, class_weights_from, cross_validate, fit_logistic, fit_standardizer
from strategies.probe import fit_probe, predict_logits

PRE = "pre_logits"


def features_of(dataset: str, *, cap: int, input_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    scan = scan_dataset(dataset)
    by_class: dict[int, list] = {}
    for s in scan.samples:
        by_class.setdefault(s.label, []).append(s)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda s: s.path)
        rng.shuffle(group)
        chosen += group[:cap]
    bb = create_backbone("efficientnet_lite0").with_input_size(input_size)
    fs = extract_features(chosen, bb, taps=[PRE])
    return fs.features[PRE].float(), fs.labels.long()


def draw(y: torch.Tensor, k: int, m: int, tiny: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in y.unique().tolist():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        n = m if c == tiny else k
        train.append(rows[:n])
        held.append(rows[n:])
    return torch.cat(train), torch.cat(held)


def weighted_accuracy(pred: torch.Tensor, y: torch.Tensor, weights: dict[int, float]) -> float:
    total = 0.0
    for c, w in weights.items():
        mask = y == c
        if mask.any():
            total += w * float((pred[mask] == c).float().mean())
    return total / sum(w for c, w in weights.items() if (y == c).any())


def one(x, y, train, held, *, rule: str, num_classes: int) -> dict:
    xt, yt = x[train], y[train]
    counts = torch.bincount(yt, minlength=num_classes)
    smallest = int(counts[counts > 0].min())
    middle = sorted(DEFAULT_L2_GRID)[len(DEFAULT_L2_GRID) // 2]
    if rule == "old":
        folds, grid = (min(5, smallest), DEFAULT_L2_GRID) if smallest >= 2 else (2, [middle])
        ran = smallest >= 2
    else:
        folds, grid, ran = 5, DEFAULT_L2_GRID, True
    out = {"cv_ran": ran}
    shares = {c: float(counts[c]) / len(yt) for c in range(num_classes) if counts[c] > 0}
    if ran:
        cv = cross_validate(xt, yt, num_classes=num_classes, grid=grid, folds=folds, seed=0, class_weights=None,
                            device="cpu", max_iter=100)
        best_l2, best_acc = max(cv.table, key=lambda t: (t[1], t[0]))
        std = fit_standardizer(xt)  # the probe at that L2 on all the training rows, as fit_probe refits it
        W, b = fit_logistic(std.apply(xt), yt, num_classes=num_classes, l2=best_l2, max_iter=100)
        pred = (std.apply(x[held]) @ W.T + b).argmax(1)
        out["cv"], out["held_at_cv_l2"] = best_acc, weighted_accuracy(pred, y[held], shares)
    cw = class_weights_from(yt, num_classes)
    fit = fit_probe({PRE: xt}, yt, taps=[PRE], num_classes=num_classes, class_weights=cw, folds=folds, grid=grid)
    pred = predict_logits(fit, {PRE: x[held]}).argmax(1)
    out["balanced"] = weighted_accuracy(pred, y[held], {c: 1.0 for c in shares})
    out["l2"] = fit.l2
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--per-class", default="5,10,20")
    ap.add_argument("--tiny", default="1,2,3")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cap", type=int, default=60, help="images per class extracted")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--json", type=Path, default=None, help="append one row per scenario (a rerun skips rows there)")
    args = ap.parse_args()
    ks, ms = [int(v) for v in args.per_class.split(",")], [int(v) for v in args.tiny.split(",")]
    done = set()
    rows = []
    if args.json and args.json.exists():
        for line in args.json.read_text().splitlines():
            r = json.loads(line)
            rows.append(r)
            done.add((r["dataset"], r["per_class"], r["tiny"], r["seed"]))
    for path in args.datasets:
        name = Path(path).name
        todo = [(k, m, s) for k in ks for m in ms for s in range(args.seeds) if (name, k, m, s) not in done]
        if not todo:
            continue
        x, y = features_of(path, cap=args.cap, input_size=args.input_size)
        classes = sorted(y.unique().tolist())
        for k, m, s in todo:
            tiny = classes[s % len(classes)]
            if int((y == tiny).sum()) <= m or min(int((y == c).sum()) for c in classes) <= k:
                continue  # every class needs held-out images
            train, held = draw(y, k, m, tiny, s)
            r = {"dataset": name, "per_class": k, "tiny": m, "seed": s, "images": len(y), "classes": len(classes),
                 "train": len(train)}
            for rule in ("old", "new"):
                r[rule] = one(x, y, train, held, rule=rule, num_classes=len(classes))
            rows.append(r)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
        print(f"{name}: {len(todo)} scenarios", flush=True)
    summarise(rows, ks, ms)


def _single_error(r: dict, variant: str) -> float:
    """|CV - held out| in points of a 1-image-class scenario, its image counted as a miss (as shipped) or left out."""
    n = r["train"]
    cv = r["new"]["cv"] if variant == "miss" else r["new"]["cv"] * n / (n - 1)
    return 100 * abs(cv - r["new"]["held_at_cv_l2"])


def leave_one_dataset_out(rows: list[dict]) -> None:
    single = [r for r in rows if r["tiny"] == 1 and "train" in r]
    names = sorted({r["dataset"] for r in single})
    if len(names) < 2:
        return
    errors, picks = [], []
    for name in names:
        rest = [r for r in single if r["dataset"] != name]
        pick = min(("miss", "left out"), key=lambda v: statistics.mean(_single_error(r, v) for r in rest))
        picks.append(pick)
        errors += [_single_error(r, pick) for r in single if r["dataset"] == name]
    for variant in ("miss", "left out"):
        print(f"1-image class scored as {variant:8s}: mean |CV - held out| {statistics.mean(_single_error(r, variant) for r in single):.2f} "
              f"points over {len(single)} scenarios")
    print(f"chosen leave-one-dataset-out: 'miss' in {picks.count('miss')} of {len(names)} folds, 'left out' in "
          f"{picks.count('left out')}; held-out mean |CV - held out| {statistics.mean(errors):.2f} points")


def summarise(rows: list[dict], ks: list[int], ms: list[int]) -> None:
    print(f"{'K':>3s} {'m':>2s} {'n':>4s} | {'CV ran old/new':>14s} | {'|CV-held| pts old / new (same rows)':>36s} | "
          f"{'new |CV-held| (all)':>19s} | {'balanced acc old -> new, mean diff [95 %]':>44s}")
    for k in ks:
        for m in ms:
            rs = [r for r in rows if r["per_class"] == k and r["tiny"] == m]
            if not rs:
                continue
            ran_old = sum(r["old"]["cv_ran"] for r in rs)
            both = [r for r in rs if r["old"]["cv_ran"]]
            err = lambda r, rule: 100 * abs(r[rule]["cv"] - r[rule]["held_at_cv_l2"])  # noqa: E731
            e_old = statistics.mean(err(r, "old") for r in both) if both else math.nan
            e_new_same = statistics.mean(err(r, "new") for r in both) if both else math.nan
            e_new = statistics.mean(err(r, "new") for r in rs)
            d = [100 * (r["new"]["balanced"] - r["old"]["balanced"]) for r in rs]
            mean = statistics.mean(d)
            half = 1.96 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
            old_acc = statistics.mean(100 * r["old"]["balanced"] for r in rs)
            new_acc = statistics.mean(100 * r["new"]["balanced"] for r in rs)
            print(f"{k:>3d} {m:>2d} {len(rs):>4d} | {ran_old:>6d} / {len(rs):<6d} | {e_old:>17.1f} / {e_new_same:<17.1f} | "
                  f"{e_new:>19.1f} | {old_acc:6.1f} -> {new_acc:6.1f}, {mean:+5.2f} [{mean - half:+.2f}, {mean + half:+.2f}]")
    leave_one_dataset_out(rows)


if __name__ == "__main__":
    main()
