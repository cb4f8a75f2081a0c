"""The bare model's speed under each setting a GPU run could choose: batch, precision, memory format, optimiser.

    python benchmarks/bare_speed.py [--input-size 224] [--batches 32,64,128,256] [--seconds 3] [--device auto]
                                    [--json OUT]

For EfficientNet-Lite0 on random inputs already on the device: bare forward (inference mode) and
bare forward + backward + AdamW step (a full fine-tune), for every combination of

* batch size (``--batches``),
* precision: float32, or bfloat16 autocast (a GPU only),
* memory format: NCHW or channels_last,
* optimiser: AdamW's multi-tensor ``foreach`` kernels, or ``fused`` (CUDA only).

Prints images/s for each, the fastest setting of each kind against timm's published
``tf_efficientnet_lite0`` figures (224 px, AMP: 8.7k images/s inference on an RTX 4090; 2.1k
images/s training, channels_last, on an RTX 3090), and the loop's own setting (batch 32, bf16 on a
GPU, channels_last, foreach) for comparison. Choosing a larger training batch also changes the
optimisation: ``benchmarks/gpu_check.sh``'s ``batch`` step checks the accuracy at the chosen batch
against batch 32 before the loop's default may change.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from advisor.backbones import create_backbone
from advisor.core.distributed import resolve_device

TIMM_INFER = 8700.0  # images/s, RTX 4090, AMP, 224 px (timm's published benchmark table)
TIMM_TRAIN = 2100.0  # images/s, RTX 3090, AMP, channels_last, 224 px


def _timed(fn, seconds: float, cuda: bool) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or n < 2:
        fn()
        n += 1
        if cuda and n % 8 == 0:
            torch.cuda.synchronize()
    if cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def measure(dev: torch.device, *, size: int, batch: int, bf16: bool, channels_last: bool, fused: bool,
            seconds: float, forward: bool = True) -> dict:
    """Images/s of bare forward (unless ``forward=False``) and of forward + backward + AdamW step."""
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = create_backbone("efficientnet_lite0").model.to(dev, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=dev)

    def forward_pass():
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            net(x)

    opt = torch.optim.AdamW(net.parameters(), lr=1e-5, **({"fused": True} if fused else {"foreach": True}))

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()

    net.eval()
    infer = _timed(forward_pass, seconds, cuda) * batch if forward else float("nan")
    net.train()
    train = _timed(train_step, seconds, cuda) * batch
    return {"batch": batch, "bf16": bf16, "channels_last": channels_last, "fused": fused,
            "forward_images_per_second": round(infer, 1), "train_images_per_second": round(train, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else f"cpu x{torch.get_num_threads()}"
    print(f"{name}: EfficientNet-Lite0, {args.input_size} px, {args.seconds:g} s per setting")
    grid = itertools.product([int(b) for b in args.batches.split(",")], [True, False] if cuda else [False],
                             [True, False], [True, False] if cuda else [False])
    rows = []
    for batch, bf16, cl, fused in grid:
        r = measure(dev, size=args.input_size, batch=batch, bf16=bf16, channels_last=cl, fused=fused, seconds=args.seconds)
        rows.append(r)
        print(f"  batch {batch:4d} {'bf16' if bf16 else 'fp32'} {'channels_last' if cl else 'NCHW         '} "
              f"{'fused  ' if fused else 'foreach'}  forward {r['forward_images_per_second']:9.1f}  "
              f"train {r['train_images_per_second']:8.1f} images/s", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    best_f = max(rows, key=lambda r: r["forward_images_per_second"])
    best_t = max(rows, key=lambda r: r["train_images_per_second"])
    loop = next((r for r in rows if r["batch"] == 32 and r["bf16"] == cuda and r["channels_last"] and not r["fused"]), None)

    def label(r: dict) -> str:
        return (f"batch {r['batch']}, {'bf16' if r['bf16'] else 'fp32'}, {'channels_last' if r['channels_last'] else 'NCHW'}, "
                f"{'fused' if r['fused'] else 'foreach'}")

    print(f"fastest forward: {best_f['forward_images_per_second']:.0f} images/s ({label(best_f)}); "
          f"timm's 4090 figure {TIMM_INFER:.0f}: {'met' if best_f['forward_images_per_second'] >= TIMM_INFER else 'missed'}")
    print(f"fastest training step: {best_t['train_images_per_second']:.0f} images/s ({label(best_t)}); "
          f"timm's 3090 channels_last figure {TIMM_TRAIN:.0f}: "
          f"{'met' if best_t['train_images_per_second'] >= TIMM_TRAIN else 'missed'}")
    if loop:
        print(f"the loop's setting ({label(loop)}): forward {loop['forward_images_per_second']:.0f}, "
              f"train {loop['train_images_per_second']:.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "input_size": args.input_size, "rows": rows,
                                         "fastest_forward": best_f, "fastest_train": best_t, "loop": loop}, indent=1))


if __name__ == "__main__":
    main()
