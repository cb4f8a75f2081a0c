"""The PyTorch transfer-learning tutorial's fixed-feature-extractor loop vs `advisor run --strategy linear-probe`.

    python benchmarks/vs_tutorial.py [DATASET] [--epochs 25] [--backbone efficientnet_lite0]

Same backbone, same train/val split, same evaluation transform, in one run:
(a) the tutorial's "ConvNet as fixed feature extractor": every backbone weight frozen, a new
    linear layer, SGD (lr 0.001, momentum 0.9, StepLR 7/0.1), batch 4, RandomResizedCrop +
    flip, and every image forwarded through the backbone again in each of 25 epochs; the best
    validation epoch is kept, as in the tutorial. As in the tutorial the model is in train()
    mode while training, so BatchNorm uses batch statistics there.
(b) `advisor run DATASET --strategy linear-probe` as a user runs it (a fresh process, an empty
    feature cache; it profiles the dataset first, then extracts each image once and fits an
    L-BFGS logistic regression with cross-validated L2).
Target: (b) at least as accurate as (a) and >= 10x faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision import transforms

from advisor.backbones import create_backbone
from advisor.core.distributed import default_num_workers
from advisor.data.imagefile import load_image
from advisor.data.scan import scan_dataset

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


class Images(torch.utils.data.Dataset):
    def __init__(self, samples, tf):
        self.samples, self.tf = samples, tf

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        return self.tf(load_image(s.path)), s.label


def tutorial(dataset: str, backbone_name: str, epochs: int) -> tuple[float, float]:
    torch.manual_seed(0)
    scan = scan_dataset(dataset)
    bb = create_backbone(backbone_name)
    cfg = bb.transform_config
    interp = transforms.InterpolationMode(cfg.interpolation)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(cfg.input_size, interpolation=interp),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                   transforms.Normalize(cfg.mean, cfg.std)])
    model = bb.model
    for p in model.parameters():
        p.requires_grad = False
    model.reset_classifier(len(scan.classes))  # timm: a new, trainable linear layer
    opt = torch.optim.SGD(model.get_classifier().parameters(), lr=0.001, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.1)
    workers = default_num_workers()
    loaders = {
        "train": torch.utils.data.DataLoader(Images(scan.split("train"), train_tf), batch_size=4, shuffle=True, num_workers=workers),
        "val": torch.utils.data.DataLoader(Images(scan.split("val"), cfg.eval_transform()), batch_size=4, num_workers=workers),
    }
    best_acc, best = 0.0, None
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for phase in ("train", "val"):
            model.train(phase == "train")
            correct = n = 0
            for x, y in loaders[phase]:
                with torch.set_grad_enabled(phase == "train"):
                    out = model(x)
                    loss = torch.nn.functional.cross_entropy(out, y)
                    if phase == "train":
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
            if phase == "train":
                sched.step()
            elif correct / n > best_acc:
                best_acc, best = correct / n, copy.deepcopy(model.get_classifier().state_dict())
        print(f"  tutorial epoch {epoch + 1}/{epochs}: val accuracy {correct / n:.4f} (best {best_acc:.4f}), "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    return best_acc, time.perf_counter() - t0


def advisor_linear_probe(dataset: str, backbone_name: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ADVISOR_CACHE_DIR": str(Path(tmp) / "cache")}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "advisor", "run", dataset, "--strategy", "linear-probe",
                               "--backbone", backbone_name, "--runs-dir", str(Path(tmp) / "runs"), "--json"],
                              capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"advisor run failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout)["result"]["metrics"]["val_accuracy"], seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    print(f"dataset {args.dataset}, backbone {args.backbone}, torch threads {torch.get_num_threads()}", flush=True)
    acc_b, sec_b = advisor_linear_probe(args.dataset, args.backbone)
    print(f"(b) advisor run --strategy linear-probe: val accuracy {acc_b:.4f}, {sec_b:.1f} s", flush=True)
    acc_a, sec_a = tutorial(args.dataset, args.backbone, args.epochs)
    print(f"(a) tutorial fixed-feature loop ({args.epochs} epochs): best val accuracy {acc_a:.4f}, {sec_a:.1f} s")
    print(f"accuracy (b) - (a) = {acc_b - acc_a:+.4f} ({'met' if acc_b >= acc_a else 'MISSED'}: at least as accurate)")
    print(f"speed-up (a)/(b) = {sec_a / sec_b:.1f}x ({'met' if sec_a / sec_b >= 10 else 'MISSED'}: >= 10x)")


if __name__ == "__main__":
    main()
