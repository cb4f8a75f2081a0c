"""The answers of issue 27, measured on the shared sets: what more images buy (the probe's curve) and wrong labels.

    python benchmarks/insight.py [--data ../shared/data] [--datasets a,b] [--input-size 128] [--out docs/insight-figures.json]

For each set, the pre_logits features of every training image (cached under .cache/insight):
* learning curve: from 1/4 and from 1/2 of the training images (nested, seeded), the probe's curve
  on that subset (advisor.measure.curve.probe_curve) is extrapolated to the full training set
  (advisor.decide.curves.curve_gain) and compared with the probe's measured cross-validated
  accuracy on all of it: error in points, and whether the 80 % interval held it;
* label noise: 5 % of the training labels flipped at random (seeded), the out-of-fold finder
  (advisor.measure.labels) run on every training image; precision and recall of its top k
  (k = the number flipped), and the clean probe's CV accuracy (the target applies at >= 0.85);
* duplicates: exact duplicate files that carry different labels (the scan's digests).
Prints markdown tables (docs/insight.md carries them) and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--datasets", default=None)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "insight-figures.json")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "insight")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from advisor.backbones import PRE_LOGITS, create_backbone
    from advisor.decide.curves import curve_gain
    from advisor.data.scan import scan_dataset
    from advisor.measure.curve import FOLDS, nested_subsample, probe_curve
    from advisor.measure.features import extract_features
    from advisor.measure.labels import find_label_issues, out_of_fold_probabilities
    from advisor.measure.logistic import cross_validate, cv_select_l2
    from advisor.measure.profiler import exact_duplicates

    names = args.datasets.split(",") if args.datasets else sorted(
        d.name for d in args.data.iterdir() if d.is_dir() and d.name != "imagenet-sample")
    backbone = create_backbone("efficientnet_lite0").with_input_size(args.input_size)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in names:
        if name in results:
            continue
        scan = scan_dataset(args.data / name)
        train = scan.split("train")
        fs = extract_features(train, backbone, taps=[PRE_LOGITS], cache_dir=args.cache_dir)
        x, y = fs.features[PRE_LOGITS].float(), fs.labels
        k = len(scan.classes)
        l2, table = cv_select_l2(x, y, num_classes=k, seed=args.seed)
        full_cv = max(acc for _, acc in table)
        row = {"dataset": name, "train_images": len(y), "classes": k, "probe_cv": round(full_cv, 4), "curve": {}}
        for q in (0.25, 0.5):
            sub = nested_subsample(y, q, seed=args.seed)
            points = probe_curve(x[sub], y[sub], num_classes=k, l2=l2, seed=args.seed)
            if len(points) < 2:
                continue
            today = points[-1].per_class
            gain = curve_gain(points, today, 1 / q, seed=args.seed)
            measured = cross_validate(x, y, num_classes=k, grid=[l2], folds=FOLDS, seed=args.seed, class_weights=None,
                                      device="cpu", max_iter=100).table[0][1]
            predicted = points[-1].accuracy + gain[0]
            row["curve"][str(q)] = {"from": points[-1].accuracy, "predicted": round(predicted, 4),
                                    "low": round(points[-1].accuracy + gain[1], 4), "high": round(points[-1].accuracy + gain[2], 4),
                                    "measured": round(measured, 4), "error_points": round(100 * (predicted - measured), 2)}
        g = torch.Generator().manual_seed(args.seed)
        n_flip = max(1, round(args.noise * len(y)))
        flipped = torch.randperm(len(y), generator=g)[:n_flip]
        noisy = y.clone()
        noisy[flipped] = (y[flipped] + torch.randint(1, k, (n_flip,), generator=g)) % k
        noisy_l2, _ = cv_select_l2(x, noisy, num_classes=k, seed=args.seed)  # what the profile would choose on these labels
        found = find_label_issues(out_of_fold_probabilities(x, noisy, num_classes=k, seed=args.seed, l2=noisy_l2), noisy)
        top = {i for i, *_ in found[:n_flip]}
        truth = set(flipped.tolist())
        row["labels"] = {"flipped": n_flip, "flagged": len(found), "precision_at_k": round(len(top & truth) / n_flip, 3),
                         "recall_at_k": round(len(top & truth) / n_flip, 3),
                         "recall_all_flagged": round(len({i for i, *_ in found} & truth) / n_flip, 3)}
        conflicts = [grp for grp in exact_duplicates(scan) if grp.conflicting_labels]
        row["conflicting_duplicates"] = [[Path(p).name + f" ({lab})" for p, lab in zip(grp.paths, grp.labels)]
                                         for grp in conflicts]
        results[name] = row
        args.out.write_text(json.dumps(results, indent=1))
        print(json.dumps(row), flush=True)
    _print_tables(results)


def _print_tables(results: dict) -> None:
    print("\n| dataset | train images | probe CV | from 1/4: predicted [80 %] | measured | error | from 1/2: predicted [80 %] | measured | error |")
    print("|---|---|---|---|---|---|---|---|---|")
    errs, covered = [], []
    for r in results.values():
        cells = []
        for q in ("0.25", "0.5"):
            c = r["curve"].get(q)
            if c is None:
                cells += ["-", "-", "-"]
                continue
            errs.append(abs(c["error_points"]))
            covered.append(c["low"] <= c["measured"] <= c["high"])
            cells += [f"{c['predicted']:.3f} [{c['low']:.3f}, {c['high']:.3f}]", f"{c['measured']:.3f}", f"{c['error_points']:+.1f}"]
        print(f"| {r['dataset']} | {r['train_images']} | {r['probe_cv']:.3f} | " + " | ".join(cells) + " |")
    if errs:
        print(f"\nprobe curve: |error| <= 2 points on {sum(e <= 2 for e in errs)}/{len(errs)} "
              f"({sum(e <= 2 for e in errs) / len(errs):.0%}); 80 % interval held {sum(covered)}/{len(covered)} "
              f"({sum(covered) / len(covered):.0%})")
    print("\n| dataset | probe CV | flipped (5 %) | flagged | precision@k | recall@k | recall (all flagged) | exact duplicates with other labels |")
    print("|---|---|---|---|---|---|---|---|")
    gated = []
    for r in results.values():
        lab = r["labels"]
        if r["probe_cv"] >= 0.85:
            gated.append(lab["precision_at_k"])
        print(f"| {r['dataset']} | {r['probe_cv']:.3f} | {lab['flipped']} | {lab['flagged']} | {lab['precision_at_k']:.2f} | "
              f"{lab['recall_at_k']:.2f} | {lab['recall_all_flagged']:.2f} | {len(r['conflicting_duplicates'])} |")
    if gated:
        print(f"\nprecision@k on the sets where the probe reaches 0.85: mean {sum(gated) / len(gated):.2f}, "
              f">= 0.7 on {sum(p >= 0.7 for p in gated)}/{len(gated)}")


if __name__ == "__main__":
    os.environ.setdefault("ADVISOR_THREADS", "default")
    main()
