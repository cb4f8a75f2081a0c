"""Where a fine-tune's time goes: one training step split into its stages, on the CPU or a GPU.

    python benchmarks/stage_profile.py [DATASET] [--input-size 224] [--batch-size 32] [--steps 12]
                                       [--augment-on cpu,device] [--device auto] [--json OUT]

Runs full fine-tune steps of EfficientNet-Lite0 (the loop's settings: channels_last, bf16 autocast
and pinned, non-blocking copies on a GPU) serially in this process, timing each stage of each step:

* host (wall clock): ``read`` (file bytes), ``decode`` (JPEG/PNG to RGB), ``crop`` (the random
  resized crop the loader's workers always do), ``augment`` (flips + TrivialAugmentWide, on the
  loader when ``--augment-on workers``), ``collate`` (stacking the batch);
* device (CUDA events on a GPU, wall clock after a sync on the CPU): ``copy`` (host to device),
  ``augment`` (the batched device augmentation when ``--augment-on device``), ``normalize``,
  ``forward``, ``backward``, ``step`` (AdamW);
* ``overhead``: the step's wall time not in any stage (Python, launches, synchronisation).

Prints each stage's share of a step and two figures for the design: the device's busy share when
the stages run one after another (this profile), and the share the loader's N workers would
allow when the host stages overlap the device's (min(1, device / (host / N)), N = the loop's default).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, TrivialAugmentWide
from torchvision.transforms import functional as TF

from advisor.backbones import create_backbone
from advisor.core.distributed import default_num_workers, resolve_device
from advisor.data.loading import mix_seed
from advisor.data.scan import scan_dataset
from strategies.device_augment import DeviceAugment
from strategies.transforms import TrainTransform

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"
HOST = ("read", "decode", "crop", "augment (workers)", "collate")
DEVICE = ("copy", "augment (device)", "normalize", "forward", "backward", "step")


class Timer:
    """Stage timings: wall clock on the host, CUDA events on a GPU (read once, after the step)."""

    def __init__(self, dev: torch.device) -> None:
        self.cuda = dev.type == "cuda"
        self.host: dict[str, float] = defaultdict(float)
        self.pending: list[tuple[str, object, object]] = []
        self.device: dict[str, float] = defaultdict(float)

    def on_host(self, name: str, t0: float) -> None:
        self.host[name] += time.perf_counter() - t0

    def device_stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                if timer.cuda:
                    self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    self.a.record()
                else:
                    self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if timer.cuda:
                    self.b.record()
                    timer.pending.append((name, self.a, self.b))
                else:
                    timer.device[name] += time.perf_counter() - self.t0

        return _Stage()

    def settle(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            for name, a, b in self.pending:
                self.device[name] += a.elapsed_time(b) / 1000
            self.pending.clear()


def profile(paths: list[str], *, dev: torch.device, size: int, batch: int, steps: int, site: str) -> dict:
    """Stage seconds over ``steps`` steps (after two warm-up steps) with the augmentation at ``site``."""
    bb = create_backbone("efficientnet_lite0")
    tc = bb.transform_config.model_copy(update={"input_size": size})
    net = bb.model.train().to(dev, memory_format=torch.channels_last)
    cuda = dev.type == "cuda"
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    crop = TrainTransform(tc, size, flip=False, trivial=False)
    trivial = TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR)
    device_aug = DeviceAugment(seed=0, flip=True, trivial=True)
    y = torch.randint(0, 1000, (batch,), device=dev)
    timer = Timer(dev)
    walls = []
    for step in range(steps + 2):
        if step == 2:  # the first steps pay allocation, kernel selection and caches: not counted
            timer = Timer(dev)
            walls = []
        t_step = time.perf_counter()
        idx = [(step * batch + k) % len(paths) for k in range(batch)]
        imgs = []
        for i in idx:
            t0 = time.perf_counter()
            data = Path(paths[i]).read_bytes()
            timer.on_host("read", t0)
            t0 = time.perf_counter()
            img = Image.open(io.BytesIO(data)).convert("RGB")
            timer.on_host("decode", t0)
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(mix_seed(0, step, i))
            x = crop(img, g)
            timer.on_host("crop", t0)
            if site == "workers":
                t0 = time.perf_counter()
                if torch.rand(1, generator=g).item() < 0.5:
                    x = TF.hflip(x)
                torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g).item()))
                x = trivial(x)
                timer.on_host("augment (workers)", t0)
            imgs.append(x)
        t0 = time.perf_counter()
        xb = torch.stack(imgs)
        if cuda:
            xb = xb.pin_memory()
        timer.on_host("collate", t0)
        with timer.device_stage("copy"):
            xd = xb.to(dev, non_blocking=True)
        if site == "device":
            with timer.device_stage("augment (device)"):
                xd = device_aug(xd, idx, step)
        with timer.device_stage("normalize"):
            xd = tc.normalize(xd).contiguous(memory_format=torch.channels_last)
        with timer.device_stage("forward"):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
                out = net(xd)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        with timer.device_stage("backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with timer.device_stage("step"):
            opt.step()
        timer.settle()
        walls.append(time.perf_counter() - t_step)
    wall = sum(walls)
    stages = {**{k: timer.host.get(k, 0.0) for k in HOST}, **{k: timer.device.get(k, 0.0) for k in DEVICE}}
    if site == "workers":
        stages.pop("augment (device)")
    else:
        stages.pop("augment (workers)")
    stages["overhead"] = max(0.0, wall - sum(stages.values()))
    host = sum(timer.host.values())
    device = sum(timer.device.get(k, 0.0) for k in DEVICE if k != "copy")
    workers = max(1, default_num_workers()) if cuda else 1
    return {"site": site, "steps": steps, "batch": batch, "images_per_second": steps * batch / wall,
            "seconds_per_step": wall / steps, "stages": {k: v / steps for k, v in stages.items()},
            "device_busy_serial": device / wall, "host_seconds_per_step": host / steps,
            "device_seconds_per_step": device / steps, "workers": workers,
            "device_busy_overlapped": min(1.0, device / max(host / workers, 1e-12))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--augment-on", default="workers,device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    paths = [s.path for s in scan_dataset(args.dataset).samples]
    print(f"device {dev}, EfficientNet-Lite0 full fine-tune, {args.input_size} px, batch {args.batch_size}, "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}, {Path(args.dataset).name} ({len(paths)} images)")
    results = []
    for site in args.augment_on.split(","):
        r = profile(paths, dev=dev, size=args.input_size, batch=args.batch_size, steps=args.steps, site=site)
        results.append(r)
        step = r["seconds_per_step"]
        print(f"\naugmentation on the {site}: {r['images_per_second']:.1f} images/s, {1000 * step:.1f} ms per step")
        for name, sec in r["stages"].items():
            print(f"  {name:18s} {1000 * sec:9.2f} ms  {100 * sec / step:5.1f} %")
        print(f"  device busy, stages in series: {r['device_busy_serial']:.0%}; with the host stages on "
              f"{r['workers']} loader worker(s) overlapping the device: {r['device_busy_overlapped']:.0%} "
              f"(host {1000 * r['host_seconds_per_step']:.1f} ms vs device {1000 * r['device_seconds_per_step']:.1f} ms per step)")
    if args.json:
        args.json.write_text(json.dumps({"device": str(dev), "input_size": args.input_size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
