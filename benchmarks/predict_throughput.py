"""Prediction throughput: the classifier's bare forward against ``Classifier.predict`` end to end.

    python benchmarks/predict_throughput.py RUN_DIR FOLDER [--workers N] [--batch-size 32] [--device auto]

(a) bare forward of the loaded classifier on images decoded and preloaded in memory, in NCHW and
    in channels_last (what ``predict`` runs), batch 32, after one warm-up batch;
(b) ``advisor.load(RUN_DIR).predict([FOLDER])``: expand the folder, decode in DataLoader workers,
    forward, top-k; a first (cold) call and a second (warm) one.
Prints images/s for each and (b) / (a, channels_last). On 2 CPU cores the forward is the work; on a
GPU the workers' decoding is, which is why predict reads files through them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import advisor
from advisor.data.imagefile import IMAGE_EXTENSIONS, load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("folder")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    clf = advisor.load(args.run_dir, device=args.device)
    model, dev = clf.model, torch.device(clf.device)
    tf = model.backbone.transform_config.eval_transform()
    files = sorted(str(p) for p in Path(args.folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    t0 = time.perf_counter()
    x = torch.stack([tf(load_image(f, min_side=model.backbone.transform_config.resize_size)) for f in files]).to(dev)
    print(f"{len(files)} images; decode + transform in one process: {1000 * (time.perf_counter() - t0) / len(files):.1f} ms an image")
    bare = {}
    for name, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        model.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt)
        with torch.inference_mode():
            model(xs[: args.batch_size])
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(0, len(xs), args.batch_size):
                model(xs[i : i + args.batch_size])
            if dev.type == "cuda":
                torch.cuda.synchronize()
        bare[name] = len(xs) / (time.perf_counter() - t0)
        print(f"(a) bare forward, {name:13s} {bare[name]:8.1f} images/s")
    model.to(memory_format=torch.contiguous_format)  # as advisor.load gives it
    for label in ("cold", "warm"):
        t0 = time.perf_counter()
        rep = clf.predict([args.folder], top_k=3, batch_size=args.batch_size, workers=args.workers)
        rate = len(rep.predictions) / (time.perf_counter() - t0)
        print(f"(b) predict end to end ({label})  {rate:8.1f} images/s, {rate / bare['channels_last']:.2f} of (a) channels_last")


if __name__ == "__main__":
    main()
