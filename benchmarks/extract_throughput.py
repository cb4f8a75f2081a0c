"""Feature-extraction throughput: bare forward vs cold extraction vs warm (cached) extraction.

    python benchmarks/extract_throughput.py [DATASET] [--backbone NAME] [--batch-size N] [--repeat R] [--input-size N]

(a) bare forward: the backbone's ``forward_taps`` on tensors decoded and preloaded in memory
    (on the device: no copy in the timing), in the extraction's own precision and layout;
(b) cold: ``extract_features`` into an empty cache (read, hash, decode, transform, forward,
    write), which is what ``advisor features`` does after building the backbone. On a GPU it runs
    twice: JPEGs decoded by the CPU workers and on the device (the default first: see
    ``advisor.measure.device_decode.device_decode_default``);
(c) warm: the same call again, served from the cache.
``--repeat R`` lists every image R times (distinct positions, one cache entry per file), so a
small dataset lasts long enough on a GPU to be timed. Batch size: 32 on the CPU, 256 on a GPU.
Targets: (b)/(a) >= 0.85 (224 px; on the CPU and on a GPU) and (c) >= 20x faster than (b).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from advisor.backbones import create_backbone
from advisor.core.distributed import default_num_workers, resolve_device
from advisor.data.imagefile import load_image
from advisor.data.scan import scan_dataset
from advisor.measure.device_decode import device_decode_default
from advisor.measure.features import extract_features

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(bb, x: torch.Tensor, dev: torch.device, batch: int, passes: int) -> float:
    """Images/s of ``forward_taps`` over ``x`` (already on ``dev``), as ``extract_features`` runs it."""
    model = bb.to(dev).eval().to(memory_format=torch.channels_last)  # as extraction runs it, CPU and GPU
    cuda = dev.type == "cuda"
    x = x.contiguous(memory_format=torch.channels_last)
    taps = [t.name for t in bb.taps]

    def run(chunk):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            return {t: v.float() for t, v in model.forward_taps(chunk, taps).items()}

    with torch.inference_mode():
        run(x[:batch])  # warm-up (allocator, kernels)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(passes):
            for i in range(0, len(x), batch):
                run(x[i : i + batch])
        _sync(dev)
    return passes * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--input-size", type=int, default=None, help="extract at this size (the run's --input-size)")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    batch = args.batch_size or (256 if cuda else 32)
    bb = create_backbone(args.backbone)
    if args.input_size:
        bb = bb.with_input_size(args.input_size)
    samples = scan_dataset(args.dataset).samples
    items = samples * args.repeat
    n = len(items)
    print(f"dataset {args.dataset}: {len(samples)} images x {args.repeat} = {n}; backbone {bb.name} "
          f"({bb.transform_config.input_size} px); device {dev}; batch {batch}; "
          f"workers {args.workers if args.workers is not None else default_num_workers()}; "
          f"torch threads {torch.get_num_threads()}")

    # (a) bare forward on preloaded tensors (each file once; timed over `repeat` passes)
    tf = bb.transform_config.eval_transform()
    x = torch.stack([tf(load_image(s.path)) for s in samples]).to(dev)
    bare_rate = bare_forward(bb, x, dev, batch, args.repeat)
    del x
    print(f"(a) bare forward                   {n / bare_rate:8.2f} s  {bare_rate:9.1f} img/s")

    workers = args.workers if args.workers is not None else default_num_workers()
    auto = "device" if device_decode_default(dev, workers) else "cpu"
    modes = [auto, {"cpu": "device", "device": "cpu"}[auto]] if cuda else ["cpu"]
    rates = {}
    for mode in modes:
        with tempfile.TemporaryDirectory() as cache:
            _sync(dev)
            t0 = time.perf_counter()
            fs = extract_features(items, bb, cache_dir=cache, device=str(dev), batch_size=batch,
                                  num_workers=args.workers, decode=mode)
            _sync(dev)
            cold = time.perf_counter() - t0
            assert fs.summary.computed == n - len(fs.summary.failed), fs.summary
            rates[mode] = n / cold
            print(f"(b) cold extraction, {mode:6s} decode {cold:8.2f} s  {rates[mode]:9.1f} img/s  "
                  f"(forward share {fs.extra['forward_seconds'] / cold:.0%})  (b)/(a) = {rates[mode] / bare_rate:.3f}")
            if mode == modes[0]:
                t0 = time.perf_counter()
                fs = extract_features(items, bb, cache_dir=cache, device=str(dev), batch_size=batch,
                                      num_workers=args.workers, decode=mode)
                warm = time.perf_counter() - t0
                assert fs.summary.computed == 0
                speedup = cold / warm
                print(f"(c) warm (cached)                  {warm:8.2f} s  {n / warm:9.1f} img/s  speed-up {speedup:.1f}x")

    ratio = rates[modes[0]] / bare_rate
    print(f"ratio (b)/(a) = {ratio:.3f} with {modes[0]} decoding (the default here)  (target >= 0.85: {'met' if ratio >= 0.85 else 'MISSED'})")
    print(f"warm speed-up = {speedup:.1f}x  (target >= 20x: {'met' if speedup >= 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
