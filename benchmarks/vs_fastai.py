"""fastai's ``vision_learner(...).fine_tune(N)`` vs `advisor run --strategy partial-finetune / full-finetune`.

    pip install -e '.[bench]'
    python benchmarks/vs_fastai.py DATASET [DATASET ...] --epochs 5 [--input-size 128] [--json out.json]

Same architecture (timm ``tf_efficientnet_lite0``), same offline ImageNet weights (advisor's
``efficientnet_lite0``, handed to timm through ``pretrained_cfg_overlay``), same train/val
split (advisor's scan: the dataset's own folders, else its seeded stratified 20 %), same input
size, same batch size (32), CPU threads as the machine has. fastai runs with its documented
defaults: ``Resize(size)`` item transform, ``aug_transforms()`` batch augmentation, the model's
own normalisation, ``fine_tune(N)`` (1 epoch with the body frozen, then N epochs unfrozen with
discriminative learning rates and one-cycle; its learning rate 2e-3 default). advisor runs N
epochs of its own recipe (the plan's, capped at N) as a user would, in-process, with an empty
feature cache. Accuracy is each tool's own validation accuracy on the same images (fastai
evaluates a centre crop of the resized image, advisor its eval transform), with a Wilson 95 %
interval; wall time covers everything from the dataset path to the evaluated model.

Input size: ``--input-size`` (default 128), or the images' median shorter side when that is
smaller (but at least 64 px: EfficientNet's stride-32 grid is 1x1 below that).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from advisor.backbones import create_backbone
from advisor.data.scan import scan_dataset
from advisor.core.stats import wilson_interval


def input_size_for(dataset: str, cap: int) -> int:
    scan = scan_dataset(dataset)
    short = min(scan.sizes.median_width, scan.sizes.median_height)
    return int(max(64, min(cap, short)))


def run_fastai(dataset: str, epochs: int, size: int, weights: Path, seed: int = 0) -> dict:
    import pandas as pd
    from fastai.vision.all import (
        ImageDataLoaders,
        Resize,
        accuracy,
        aug_transforms,
        set_seed,
        vision_learner,
    )

    t0 = time.perf_counter()
    set_seed(seed, reproducible=True)
    scan = scan_dataset(dataset)
    rows = [(s.path, scan.classes[s.label], s.split != "train") for s in scan.samples if s.split in ("train", "val")]
    df = pd.DataFrame(rows, columns=["path", "label", "is_valid"])
    dls = ImageDataLoaders.from_df(df, path="/", fn_col="path", label_col="label", valid_col="is_valid", item_tfms=Resize(size),
                                   batch_tfms=aug_transforms(), bs=32, num_workers=0, device=torch.device("cpu"))
    learn = vision_learner(dls, "tf_efficientnet_lite0", pretrained=True, metrics=accuracy,
                           pretrained_cfg_overlay={"file": str(weights)})
    # The body must hold advisor's ImageNet weights (timm read them from the file), not a random init.
    ours = create_backbone("efficientnet_lite0").model.state_dict()["conv_stem.weight"]
    theirs = next(v for k, v in learn.model.state_dict().items() if k.endswith("conv_stem.weight"))
    if not torch.equal(ours, theirs.cpu()):
        raise SystemExit("fastai's model did not load the ImageNet weights; the comparison would be meaningless")
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs)
        _, acc = learn.validate()
    n = int(df["is_valid"].sum())
    return {"tool": "fastai fine_tune", "val_accuracy": float(acc), "ci": wilson_interval(round(float(acc) * n), n),
            "n_val": n, "seconds": round(time.perf_counter() - t0, 1), "epochs": epochs + 1}


def run_advisor(dataset: str, strategy: str, epochs: int, size: int) -> dict:
    from advisor.execute.runner import auto_run

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = auto_run(dataset, strategy=strategy, runs_dir=Path(tmp) / "runs", cache_dir=Path(tmp) / "cache",
                       epochs=epochs, input_size=size, num_workers=0)
    m = out.result.metrics
    return {"tool": f"advisor {strategy}", "val_accuracy": m.val_accuracy, "ci": tuple(m.val_accuracy_ci),
            "n_val": m.n_val, "seconds": round(time.perf_counter() - t0, 1), "epochs": out.plan.recipe.epochs,
            "recipe": out.plan.recipe.model_dump(mode="json")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--json", type=Path, default=None, help="append one JSON line per dataset here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.torch import save_file

        weights = Path(tmp) / "tf_efficientnet_lite0.safetensors"
        save_file({k: v.contiguous() for k, v in create_backbone("efficientnet_lite0").model.state_dict().items()}, str(weights))
        for dataset in args.datasets:
            size = input_size_for(dataset, args.input_size)
            rows = [run_fastai(dataset, args.epochs, size, weights)]
            rows += [run_advisor(dataset, s, args.epochs, size) for s in ("partial-finetune", "full-finetune")]
            name = Path(dataset).name
            print(f"\n{name}: {size} px, N = {args.epochs}")
            print(f"{'':24s} {'val accuracy [95% CI]':28s} {'epochs':>6s} {'wall time':>10s}")
            for r in rows:
                lo, hi = r["ci"]
                print(f"{r['tool']:24s} {r['val_accuracy']:.4f} [{lo:.3f}, {hi:.3f}]{'':8s} {r['epochs']:>6d} {r['seconds']:>9.1f}s")
            best = max(rows[1:], key=lambda r: r["val_accuracy"])
            print(f"advisor's better fine-tune - fastai: {100 * (best['val_accuracy'] - rows[0]['val_accuracy']):+.2f} points, "
                  f"time ratio {best['seconds'] / rows[0]['seconds']:.2f}", flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps({"dataset": name, "input_size": size, "epochs": args.epochs, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
