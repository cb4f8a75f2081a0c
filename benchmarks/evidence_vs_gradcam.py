"""Evidence maps against the reference Grad-CAM (pytorch-grad-cam) on the same runs and targets.

    pip install grad-cam    # not a dependency of advisor: this check only
    python benchmarks/evidence_vs_gradcam.py RUN_DIR [RUN_DIR ...] [--images 20]

For a linear head on a globally averaged map the gradient of a logit with respect to the map is the
same at every cell, so Grad-CAM on that map is advisor's evidence map up to a constant, a ReLU and its
own resizing. This checks it: for seeded validation images of each run it computes pytorch-grad-cam's
GradCAM on the layer that the pooling averages, with the target "logit of the predicted class minus
logit of the runner-up" (advisor's contrast), pools it back to the map's grid and prints the Pearson
correlation with advisor's map on the cells Grad-CAM keeps (> 0.05), and how many of the 5 strongest
cells the two share. Runs whose taps are not pre_logits only are skipped.
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import numpy as np
import torch

from advisor.backbones import PRE_LOGITS
from advisor.backbones.classifier import load_classifier
from advisor.backbones.evidence import evidence_maps
from advisor.data.imagefile import load_image
from strategies.results import RunResult


class _Contrast:
    """A pytorch-grad-cam target: logit a minus logit b."""

    def __init__(self, a: int, b: int) -> None:
        self.a, self.b = a, b

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        return out[..., self.a] - out[..., self.b]


def check(run_dir: Path, n_images: int) -> str:
    from pytorch_grad_cam import GradCAM

    model, card = load_classifier(run_dir)
    if card.taps != [PRE_LOGITS]:
        return f"{run_dir.name}: taps {card.taps}, skipped"
    pooled_from = next(t.pooled_from for t in model.backbone.taps if t.name == PRE_LOGITS)
    children = [n for n, _ in model.backbone.model.named_children()]
    layer = getattr(model.backbone.model, children[children.index(pooled_from) - 1])  # what the pooling averages
    tc = model.backbone.transform_config
    items = RunResult.model_validate_json((run_dir / "result.json").read_text()).predictions[:]
    random.Random(0).shuffle(items)
    cam = GradCAM(model=model, target_layers=[layer])
    corr, shared = [], []
    for path, _true, pred in items[:n_images]:
        crop = tc.eval_transform(uint8=True)(load_image(path, min_side=tc.resize_size))
        x = tc.normalize(crop[None])
        ev = evidence_maps(model, x)
        logits = ev.logits[0]
        b = int(logits.masked_fill(torch.arange(len(logits)) == pred, float("-inf")).argmax())
        ours = (ev.maps[0][0, pred] - ev.maps[0][0, b]).flatten().numpy()
        grid = ev.maps[0].shape[-1]
        g = cam(input_tensor=x, targets=[_Contrast(pred, b)])[0]
        theirs = torch.nn.functional.adaptive_avg_pool2d(torch.tensor(g)[None, None], grid).flatten().numpy()
        kept = theirs > 0.05
        if kept.sum() > 2:
            corr.append(float(np.corrcoef(ours[kept], theirs[kept])[0, 1]))
        shared.append(len(set(np.argsort(-ours)[:5]) & set(np.argsort(-theirs)[:5])) / 5)
    return (f"{run_dir.name}: {len(shared)} images, Pearson on Grad-CAM's kept cells median {statistics.median(corr):.4f} "
            f"(min {min(corr):.4f}); of the 5 strongest cells, {statistics.mean(shared):.2f} shared on average")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=20)
    args = ap.parse_args()
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        raise SystemExit("this check needs pytorch-grad-cam: pip install grad-cam") from None
    for run in args.runs:
        print(check(run, args.images), flush=True)


if __name__ == "__main__":
    main()
