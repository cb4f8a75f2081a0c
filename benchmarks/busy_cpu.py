"""Fine-tune steps on a CPU shared with another job: does throughput degrade in proportion, or stall?

    python benchmarks/busy_cpu.py [--seconds 20] [--input-size 128] [--batch 16]

Times EfficientNet-Lite0 forward + backward + AdamW steps on preloaded tensors in a fresh process
per setting: alone, and next to a competing CPU-bound process (one busy Python loop per core it
is given), each with torch's default OpenMP wait policy and with ``OMP_WAIT_POLICY=PASSIVE``,
and with torch's default thread count or the count ``advisor.core.distributed.threads_per_process``
chooses from the free cores. "In proportion" means: with k of n cores taken, at least about
(n - k) / n of the lone throughput.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

STEP_CODE = r"""
import json, sys, time, torch
from advisor.backbones import create_backbone
threads, seconds, size, batch = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if threads > 0:
    torch.set_num_threads(threads)
net = create_backbone("efficientnet_lite0").model.train().to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (batch,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
step()
t0, n, longest = time.perf_counter(), 0, 0.0
while time.perf_counter() - t0 < seconds:
    t = time.perf_counter(); step(); longest = max(longest, time.perf_counter() - t); n += 1
dt = time.perf_counter() - t0
print(json.dumps({"images_per_s": n * batch / dt, "steps": n, "longest_step_s": longest, "threads": torch.get_num_threads()}))
"""


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def measure(*, threads: int, passive: bool, busy_cores: int, seconds: float, size: int, batch: int) -> dict:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    burners = [multiprocessing.Process(target=_burn, args=(time.time() + seconds + 60,)) for _ in range(busy_cores)]
    for b in burners:
        b.start()
    try:
        out = subprocess.run([sys.executable, "-c", STEP_CODE, str(threads), str(seconds), str(size), str(batch)],
                             capture_output=True, text=True, env=env, timeout=seconds + 300)
    finally:
        for b in burners:
            b.terminate()
            b.join()
    if out.returncode != 0:
        sys.exit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--busy-cores", type=int, default=1)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    free = max(1, cores - args.busy_cores)
    print(f"{cores} cores; competing job on {args.busy_cores}; EfficientNet-Lite0 {args.input_size} px, batch {args.batch}")
    print("| setting | wait policy | threads | images/s | longest step s | vs alone |")
    print("|---|---|---|---|---|---|")
    base = None
    for busy in (0, args.busy_cores):
        for passive in (False, True):
            for threads in ((0,) if not busy else (0, free)):
                r = measure(threads=threads, passive=passive, busy_cores=busy, seconds=args.seconds,
                            size=args.input_size, batch=args.batch)
                if base is None:
                    base = r["images_per_s"]
                label = "alone" if not busy else f"busy ({busy} core{'s' if busy > 1 else ''} taken)"
                if busy and passive and threads:
                    label += ", advisor's policy"
                print(f"| {label} | {'PASSIVE' if passive else 'default'} | {r['threads']}{' (free cores)' if threads else ''} | "
                      f"{r['images_per_s']:.1f} | {r['longest_step_s']:.2f} | {r['images_per_s'] / base:.2f} |", flush=True)
    print(f"in proportion would be >= {free / cores:.2f} of alone with {args.busy_cores} of {cores} cores taken")


if __name__ == "__main__":
    main()
