"""How the probe's feature scaling does on a few training images per class (a finding, 2026-12-07).

    python benchmarks/probe_scale.py [--data ../shared/data]

On seeded k-shot draws of shared sets (the track record's draws), the profiling sample's features
(224 px, cached), one L2 chosen by the probe's CV: a logistic probe on ``pre_logits`` fitted on
every training image, scored on the sample's validation images, with its features scaled by

* ``per-feature``: each feature's training mean and standard deviation (what the probes do today);
* ``all-rows``: the same statistics from every row of the sample, validation included (no labels);
* ``pooled``: the training mean removed, every feature divided by one standard deviation.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from records import SHARED
from sweeps import subsample

from advisor.backbones import create_backbone
from advisor.data.scan import scan_dataset
from advisor.measure.features import extract_features
from advisor.measure.logistic import cv_select_l2, fit_logistic, fit_standardizer
from advisor.measure.profiler import DEFAULT_SAMPLE_SIZE, profiling_sample

DRAWS = [("brain-mri", 2, 0), ("brain-mri", 2, 1), ("dtd10", 2, 2), ("fashion-mnist", 2, 0), ("dtd10", 5, 0),
         ("plantvillage", 5, 0), ("eurosat", 10, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(SHARED))
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    bb = create_backbone("efficientnet_lite0")
    work = Path(tempfile.mkdtemp(prefix="probe-scale-"))
    cache = Path(args.cache) if args.cache else work / "cache"
    print("| draw | L2 | per-feature | all-rows | pooled |\n|---|---|---|---|---|")
    for ds, k, seed in DRAWS:
        scan = scan_dataset(str(subsample(str(Path(args.data) / ds), k, work / f"{ds}-{k}-{seed}", seed=seed)))
        sample = profiling_sample(scan.samples, DEFAULT_SAMPLE_SIZE, seed=seed)
        fs = extract_features(sample, bb, bn_moments=False, device="cpu", cache_dir=cache)
        used = [sample[i] for i in fs.index]
        tr = torch.tensor([i for i, s in enumerate(used) if s.split == "train"])
        va = torch.tensor([i for i, s in enumerate(used) if s.split == "val"])
        x, y, classes = fs.features["pre_logits"].float(), fs.labels, len(scan.classes)
        l2, _ = cv_select_l2(x[tr], y[tr], num_classes=classes, seed=seed)
        scalers = {"per-feature": fit_standardizer(x[tr]), "all-rows": fit_standardizer(x),
                   "pooled": (x[tr].mean(0), x[tr].std().clamp_min(1e-6))}
        accs = []
        for scaler in scalers.values():
            apply = scaler.apply if hasattr(scaler, "apply") else (lambda z, s=scaler: (z - s[0]) / s[1])
            W, b = fit_logistic(apply(x[tr]), y[tr], num_classes=classes, l2=l2)
            accs.append(((apply(x[va]) @ W.T + b).argmax(1) == y[va]).float().mean().item())
        print(f"| {ds} {k}/class seed {seed} | {l2:g} | " + " | ".join(f"{a:.3f}" for a in accs) + " |", flush=True)


if __name__ == "__main__":
    main()
