"""Calibrating a linear probe from its own out-of-fold training predictions, where the validation split is too small.

    python benchmarks/probe_oof_calibration.py DATASET... [--per-class 5,10,20] [--seeds 5] [--json F]

Temperature scaling (strategies/temperature.py) needs 20 validation images; a folder of 3 classes x 30 images
carves 18, so its probe's probabilities stay as trained, and a probe whose L2 was chosen for accuracy on a few
images is often far from calibrated (a messy 6-class folder: calibration error 40 %). The probe's own
cross-validation has a prediction for every training image from a probe that never saw it. Each scenario draws K
training images per class (seeded), fits the probe as the linear-probe strategy does (L2 by CV, keeping that CV's
out-of-fold logits at the chosen L2), runs the shipped calibration on them (fit T under the prior, keep it only where
cross-fitted folds lower the log-loss), and scores the probe on every other image: calibration error (ECE, 15
bins) and log-loss, as trained and with that temperature.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch.nn.functional as F
from tiny_class import PRE, draw, features_of

from advisor.core.stats import expected_calibration_error
from strategies.probe import fit_probe, predict_logits
from strategies.temperature import calibrate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--per-class", default="5,10,20")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--cap", type=int, default=60)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ks = [int(v) for v in args.per_class.split(",")]
    rows = []
    for path in args.datasets:
        x, y = features_of(path, cap=args.cap, input_size=224)
        classes = sorted(y.unique().tolist())
        c = len(classes)
        for k in ks:
            if min(int((y == j).sum()) for j in classes) <= k:
                continue
            for s in range(args.seeds):
                train, held = draw(y, k, k, classes[0], s)
                xt, yt = x[train], y[train]
                fit = fit_probe({PRE: xt}, yt, taps=[PRE], num_classes=c, keep_oof=True)  # as the linear probe does
                raw = predict_logits(fit, {PRE: x[held]})
                cal = calibrate(fit.oof_logits, yt)
                t = cal.temperature if cal.applied else 1.0
                yh = y[held]
                r = {"dataset": Path(path).name, "per_class": k, "seed": s, "l2": fit.l2, "applied": cal.applied,
                     "temperature": t, "ece_raw": expected_calibration_error(raw, yh),
                     "ece_oof": expected_calibration_error(raw / t, yh),
                     "nll_raw": float(F.cross_entropy(raw.double(), yh)), "nll_oof": float(F.cross_entropy(raw.double() / t, yh)),
                     "accuracy": float((raw.argmax(1) == yh).float().mean())}
                rows.append(r)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
        print(f"{Path(path).name}: done", flush=True)
    print(f"{'K':>3s} {'n':>4s} {'applied':>8s} {'median T':>9s} {'ECE raw -> oof T':>18s} {'log-loss raw -> oof T':>22s} {'worse':>6s}")
    for k in ks:
        rs = [r for r in rows if r["per_class"] == k]
        if not rs:
            continue
        worse = sum(r["nll_oof"] > r["nll_raw"] + 1e-9 for r in rs)
        print(f"{k:>3d} {len(rs):>4d} {sum(r['applied'] for r in rs):>8d} {statistics.median(r['temperature'] for r in rs):>9.3f} "
              f"{100 * statistics.mean(r['ece_raw'] for r in rs):>7.1f} -> {100 * statistics.mean(r['ece_oof'] for r in rs):<7.1f} "
              f"{statistics.mean(r['nll_raw'] for r in rs):>10.3f} -> {statistics.mean(r['nll_oof'] for r in rs):<8.3f} {worse:>6d}")


if __name__ == "__main__":
    main()
