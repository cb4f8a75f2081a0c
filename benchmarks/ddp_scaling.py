"""DDP scaling: fine-tune throughput with 1 and N processes (torchrun; gloo on the CPU, NCCL on GPUs).

    python benchmarks/ddp_scaling.py [DATASET] [--processes 2] [--input-size 64] [--epochs 2] [--device cpu]

Runs ``advisor run --strategy full-finetune --devices K`` for K = 1 and N on the same plan and
prints images trained per second (from the first epoch's start to the last epoch's end, read
off events.jsonl), the speed-up, the scaling efficiency (speed-up / N) and both accuracies
(target: within 1 point). On a CPU the N processes share the cores (threads are split), so
the efficiency there measures overhead, not added hardware.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from train_throughput import training_images_per_second

DEFAULT = Path(__file__).resolve().parents[1] / "examples" / "ants-bees"


def run(dataset: str, processes: int, *, input_size: int, epochs: int, device: str, runs: Path) -> dict:
    cmd = [sys.executable, "-m", "advisor", "-q", "run", "--strategy", "full-finetune", dataset, "--runs-dir", str(runs),
           "--input-size", str(input_size), "--epochs", str(epochs), "--device", device, "--json"]
    if processes > 1:
        cmd += ["--devices", str(processes)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{processes} process(es) failed: {out.stderr[-1500:]}")
    res = json.loads(out.stdout)
    events = [json.loads(line) for line in (Path(res["run_dir"]) / "events.jsonl").read_text().splitlines()]
    images = res["result"]["selected"]["steps"] * res["plan"]["batch_size"]
    return {"images_per_s": training_images_per_second(events, images), "accuracy": res["result"]["metrics"]["val_accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one = run(args.dataset, 1, input_size=args.input_size, epochs=args.epochs, device=args.device, runs=Path(tmp) / "1")
        many = run(args.dataset, args.processes, input_size=args.input_size, epochs=args.epochs, device=args.device,
                   runs=Path(tmp) / "n")
    speedup = many["images_per_s"] / one["images_per_s"]
    print(f"| processes | images/s | val accuracy |\n|---|---|---|\n| 1 | {one['images_per_s']:.1f} | {one['accuracy']:.4f} |\n"
          f"| {args.processes} | {many['images_per_s']:.1f} | {many['accuracy']:.4f} |")
    print(f"speed-up {speedup:.2f}x, scaling efficiency {speedup / args.processes:.2f}; accuracy difference "
          f"{100 * (many['accuracy'] - one['accuracy']):+.2f} points (target within 1)")


if __name__ == "__main__":
    main()
