"""Fine-tune throughput: bare forward + backward on preloaded tensors vs the real training loop.

    python benchmarks/train_throughput.py [DATASET] [--input-size 128] [--batch-size 32] [--epochs 2] [--device auto]

(a) bare: full fine-tune steps (forward, backward, AdamW) of EfficientNet-Lite0 on one batch
    decoded and preloaded in memory, in the loop's own settings (channels_last; bf16 autocast on a GPU);
(b) end to end: ``advisor run --strategy full-finetune`` on DATASET for ``--epochs`` (decode,
    augment, train, evaluate each epoch), images trained per second of the training epochs, three ways:
    decoded-image store off (every epoch decodes the files), cold (an empty cache folder: the
    first epoch decodes and stores) and warm (the same command again: every epoch reads the store).
    ``--variants compile`` adds a warm run with the training steps under torch.compile (its
    compilation falls inside the timed epochs).
Prints each and its ratio to (a) (target on a GPU: (b)/(a) >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from bare_speed import measure
from advisor.core.distributed import resolve_device
from advisor.execute.runner import auto_run

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def bare(device: torch.device, size: int, batch: int, seconds: float = 15.0) -> float:
    """Images/s of full fine-tune steps on one preloaded batch, in the loop's settings (bare_speed.py's measure)."""
    return measure(device, size=size, batch=batch, bf16=device.type == "cuda", channels_last=True, fused=False,
                   seconds=seconds, forward=False)["train_images_per_second"]


def training_images_per_second(events: list[dict], images: int) -> float:
    """Images trained per second from the first training step to the last epoch's end (events.jsonl).

    Training starts after the head's warm-up (which extracts features) when there is one, else at the run's start.
    """
    kinds = {e["event"]: e["time"] for e in events if e["event"] in ("start", "resume", "head_warmup")}
    start = kinds.get("head_warmup", kinds.get("start", kinds.get("resume")))
    end = [e for e in events if e["event"] == "epoch"][-1]["time"]
    return images / max(end - start, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bare-seconds", type=float, default=15.0)
    ap.add_argument("--variants", default="cold,warm,off",
                    help="comma list of cold, warm, off, compile (warm store + torch.compile)")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    a = bare(dev, args.input_size, args.batch_size, args.bare_seconds)
    print(f"device {dev}, EfficientNet-Lite0 full fine-tune, {args.input_size} px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"(a) bare forward+backward+step, preloaded: {a:.1f} images/s")
    with tempfile.TemporaryDirectory() as cold_cache, tempfile.TemporaryDirectory() as off_cache:
        table = {"cold": ("store cold", cold_cache, "on", "off"), "warm": ("store warm", cold_cache, "on", "off"),
                 "off": ("store off", off_cache, "off", "off"), "compile": ("warm+compile", cold_cache, "on", "on")}
        for variant in args.variants.split(","):
            label, cache, store, compiled = table[variant]
            os.environ["ADVISOR_CACHE_DIR"], os.environ["ADVISOR_DECODED_CACHE"] = cache, store
            os.environ["ADVISOR_COMPILE"] = compiled
            with tempfile.TemporaryDirectory() as tmp:
                out = auto_run(args.dataset, strategy="full-finetune", runs_dir=tmp,
                               device=None if args.device == "auto" else args.device,
                               epochs=args.epochs, input_size=args.input_size)
                events = [json.loads(line) for line in (Path(out.run_dir) / "events.jsonl").read_text().splitlines()]
            b = training_images_per_second(events, out.result.selected["steps"] * args.batch_size)
            print(f"(b) end to end, {label:12s} {args.epochs} epochs of {Path(args.dataset).name}: {b:7.1f} images/s  "
                  f"(b)/(a) = {b / a:.2f}  val acc {out.result.metrics.val_accuracy:.3f}  "
                  f"(target on a GPU >= 0.8; decoded store {out.result.selected['decoded_cache'].split(' ')[0]})")


if __name__ == "__main__":
    main()
