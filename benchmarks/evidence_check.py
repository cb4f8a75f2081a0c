"""Do evidence maps point at what the model uses? A deletion test on a run's validation images.

    python benchmarks/evidence_check.py RUN_DIR [RUN_DIR ...] [--images 100] [--out evidence.jsonl]

For up to ``--images`` correctly classified validation images of each run (seeded sample), the
pixels of the centre crop are ranked by the evidence map of the predicted class against the
runner-up (``advisor.backbones.evidence``), and the top 5, 10, 20 and 40 % are replaced by a
blurred copy of the image (a deletion that stays close to natural images). What is measured is the
logit gap (predicted minus runner-up) after deletion, as a share of the gap before (the median over
images: a near-tie's share is unbounded), and how often the prediction flips. The same pixel shares are deleted in three other orders:

* ``random``: a random map on the same grid as the deepest tap, upsampled the same way (the same
  blob size as the evidence, only not chosen by it); averaged over 3 seeds;
* ``centre``: the pixels nearest the crop's centre first (photographs put the object there: the
  prior a useful map must beat);
* ``reverse``: the least evidence first (what pushes to the runner-up): should raise the gap.

A map that shows what the model uses lowers the gap faster than random and centre deletion;
``beats_random@0.2`` / ``beats_centre@0.2``: the share of images where deleting the top 20 % by
evidence left less of the gap than that order did (paired, per image).
Rows (one per run and order) are printed and appended to ``--out``; a run already there is skipped,
so a stopped sweep continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

import torch
import torchvision.transforms.functional as TF

from advisor.backbones.classifier import load_classifier
from advisor.backbones.evidence import evidence_maps
from advisor.data.imagefile import load_image
from strategies.results import RunResult

SHARES = (0.05, 0.10, 0.20, 0.40)


def _orders(ev_map: torch.Tensor, grid: int, seeds: int = 3) -> dict[str, list[torch.Tensor]]:
    """Per order, score maps [S, S] (higher = deleted first)."""
    size = ev_map.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = -((yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2).float()
    rand = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        coarse = torch.rand(1, 1, grid, grid, generator=g)
        rand.append(torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0])
    return {"evidence": [ev_map], "random": rand, "centre": [centre], "reverse": [-ev_map]}


def _delete(crop: torch.Tensor, blurred: torch.Tensor, score: torch.Tensor, share: float) -> torch.Tensor:
    k = int(round(share * score.numel()))
    idx = score.flatten().topk(k).indices
    mask = torch.zeros(score.numel(), dtype=torch.bool)
    mask[idx] = True
    mask = mask.view_as(score)
    return torch.where(mask, blurred, crop)


def check_run(run_dir: Path, n_images: int, seed: int = 0) -> list[dict]:
    model, card = load_classifier(run_dir)
    result = RunResult.model_validate_json((run_dir / "result.json").read_text())
    tc = model.backbone.transform_config
    right = [p for p in result.predictions if p[1] == p[2]]
    random.Random(seed).shuffle(right)
    to_crop = tc.eval_transform(uint8=True)
    sigma = tc.input_size / 28
    kernel = int(2 * round(3 * sigma) + 1)
    stats: dict[str, dict[float, list[tuple[float, bool]]]] = {}
    per_image: list[dict[tuple[str, float], float]] = []
    used = 0
    for path, _true, pred in right[:n_images]:
        try:
            crop = to_crop(load_image(path, min_side=tc.resize_size))
        except Exception:
            continue
        used += 1
        x = tc.normalize(crop[None])
        ev = evidence_maps(model, x)
        logits = ev.logits[0]
        b = int(logits.masked_fill(torch.arange(len(logits)) == pred, float("-inf")).argmax())
        gap0 = float(logits[pred] - logits[b])
        ev_map = ev.contrast(torch.tensor([pred]), torch.tensor([b]), tc.input_size)[0]
        grid = ev.maps[-1].shape[-1]
        blurred = TF.gaussian_blur(crop, [kernel, kernel], [sigma, sigma])
        batch, keys = [], []
        for order, scores in _orders(ev_map, grid).items():
            for share in SHARES:
                for score in scores:
                    batch.append(_delete(crop, blurred, score, share))
                    keys.append((order, share))
        with torch.no_grad():
            out = model(tc.normalize(torch.stack(batch)))
        mine: dict[tuple[str, float], list[float]] = {}
        for (order, share), row in zip(keys, out):
            gap = float(row[pred] - row[b])
            stats.setdefault(order, {}).setdefault(share, []).append((gap / gap0, int(row.argmax()) != pred))
            mine.setdefault((order, share), []).append(gap / gap0)
        per_image.append({key: statistics.mean(v) for key, v in mine.items()})
    rows = []
    for order, by_share in stats.items():
        row = {"run": run_dir.name, "strategy": card.strategy, "taps": card.taps, "input_size": tc.input_size,
               "images": used, "order": order}
        for share, vals in by_share.items():
            row[f"gap_left@{share:g}"] = round(statistics.median(v for v, _ in vals), 3)
            row[f"flipped@{share:g}"] = round(sum(f for _, f in vals) / len(vals), 3)
        if order == "evidence":  # paired, per image: evidence-first deletion left less of the gap than the other order
            for other in ("random", "centre"):
                row[f"beats_{other}@0.2"] = round(statistics.mean(
                    im[("evidence", 0.2)] < im[(other, 0.2)] for im in per_image), 3)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    head = "run".ljust(44) + "order".ljust(10) + "".join(f"gap left@{s:g}".rjust(15) for s in SHARES) + \
        "".join(f"flipped@{s:g}".rjust(13) for s in SHARES) + "beats random@.2".rjust(16) + "beats centre@.2".rjust(16)
    print(head)
    done = {json.loads(line)["run"] for line in args.out.read_text().splitlines() if line.strip()} \
        if args.out and args.out.exists() else set()
    for run_dir in args.runs:
        if run_dir.name in done:  # a rerun continues a stopped sweep
            continue
        for row in check_run(run_dir, args.images):
            print(row["run"][:43].ljust(44) + row["order"].ljust(10)
                  + "".join(f"{row[f'gap_left@{s:g}']:15.3f}" for s in SHARES)
                  + "".join(f"{row[f'flipped@{s:g}']:13.3f}" for s in SHARES)
                  + "".join(f"{row[k]:>16.3f}" for k in ("beats_random@0.2", "beats_centre@0.2") if k in row), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
