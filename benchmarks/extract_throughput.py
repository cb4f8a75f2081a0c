"""Feature-extraction throughput: bare forward vs cold extraction vs warm (cached) extraction.

    python benchmarks/extract_throughput.py [DATASET] [--backbone NAME] [--batch-size 32]

(a) bare forward: the backbone's ``forward_taps`` on tensors decoded and preloaded in memory;
(b) cold: ``scan_dataset`` + ``extract_features`` into an empty cache (decode, transform,
    forward, hash, write), which is what ``advisor features`` does after building the backbone;
(c) warm: the same call again, served from the cache.
Targets on 2 CPU cores: (b)/(a) >= 0.85 and (c) >= 20x faster than (b).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from advisor.backbones import create_backbone
from advisor.data import load_image, scan_dataset
from advisor.features import extract_features, resolve_device

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    bb = create_backbone(args.backbone)
    scan = scan_dataset(args.dataset)
    n = len(scan.samples)
    print(f"dataset {args.dataset}: {n} images; backbone {bb.name}; device {dev}; torch threads {torch.get_num_threads()}")

    # (a) bare forward on preloaded tensors
    tf = bb.transform_config.eval_transform()
    x = torch.stack([tf(load_image(s.path)) for s in scan.samples])
    model = bb.to(dev).eval()
    with torch.inference_mode():
        model.forward_taps(x[: args.batch_size].to(dev))  # warm-up (allocator, kernels)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, n, args.batch_size):
            model.forward_taps(x[i : i + args.batch_size].to(dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        bare = time.perf_counter() - t0
    del x
    bare_rate = n / bare
    print(f"(a) bare forward        {bare:8.2f} s  {bare_rate:8.1f} img/s")

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        fs = extract_features(scan_dataset(args.dataset).samples, bb, cache_dir=cache, device=str(dev),
                              batch_size=args.batch_size, num_workers=args.workers)
        cold = time.perf_counter() - t0
        assert fs.summary.computed == n - len(fs.summary.failed)
        cold_rate = n / cold
        print(f"(b) cold extraction     {cold:8.2f} s  {cold_rate:8.1f} img/s  (forward share {fs.extra['forward_seconds'] / cold:.0%})")

        t0 = time.perf_counter()
        fs = extract_features(scan_dataset(args.dataset).samples, bb, cache_dir=cache, device=str(dev),
                              batch_size=args.batch_size, num_workers=args.workers)
        warm = time.perf_counter() - t0
        assert fs.summary.computed == 0
        print(f"(c) warm (cached)       {warm:8.2f} s  {n / warm:8.1f} img/s")

    ratio = cold_rate / bare_rate
    speedup = cold / warm
    print(f"ratio (b)/(a) = {ratio:.3f}  (target >= 0.85: {'met' if ratio >= 0.85 else 'MISSED'})")
    print(f"warm speed-up = {speedup:.1f}x  (target >= 20x: {'met' if speedup >= 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
