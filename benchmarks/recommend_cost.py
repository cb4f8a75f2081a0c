"""Cost of `advisor recommend`, cold and warm, on a dataset and on a copy 10x its size.

    python benchmarks/recommend_cost.py [DATASET] [--repeat 10] [--sample-size 300]

Runs the real command (`python -m advisor recommend DATASET --json`) in a fresh process with
an empty feature cache (cold), then again (warm), on DATASET and on a dataset made by copying
every image ``--repeat`` times (under new names). The profile reads a fixed-size stratified
sample, so the larger dataset should cost more only by its file scan and file hashing.
Targets on 2 CPU cores (flowers, 4317 images): cold <= 90 s, warm <= 5 s. Also prints the cold
cost as a share of running all four strategies, as ``recommend`` itself forecasts that (target
<= 5 % on the median shared dataset; ``benchmarks/forecast_time.py`` measures how good those
time forecasts are). ``--repeat 0`` skips the copy.

    python benchmarks/recommend_cost.py DATASET --auto-vs-strategy [--input-size 128] [--epochs 8]

What the advice costs a run: `advisor run --auto DATASET` from a cold cache against
`advisor run DATASET --strategy S` (S: the strategy the auto run chose) from another cold
cache, same options; target: the ratio is at most 1.2 on sets of 200 images or more.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"


def timed_recommend(dataset: Path, cache: Path, sample_size: int) -> tuple[float, dict]:
    env = {**os.environ, "ADVISOR_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "advisor", "recommend", str(dataset), "--json", "--sample-size", str(sample_size)],
                          capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"recommend failed on {dataset}: {proc.stderr.strip()}")
    return dt, json.loads(proc.stdout)


def timed_run(args: list[str], cache: Path, runs: Path) -> tuple[float, Path]:
    env = {**os.environ, "ADVISOR_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "advisor", "--quiet", "run", *args, "--runs-dir", str(runs)],
                          capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"advisor run {' '.join(args)} failed: {proc.stderr.strip()}")
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return dt, run_dir


def _machine_of(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "events.jsonl").read_text().splitlines()[0]).get("machine", "?")
    except (OSError, IndexError, ValueError, AttributeError):
        return "?"


def auto_vs_strategy(dataset: Path, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        auto, run_dir = timed_run([str(dataset), "--auto", *extra], tmp / "cache-auto", tmp / "runs-auto")
        strategy = json.loads((run_dir / "plan.json").read_text())["strategy"]
        rec = json.loads((run_dir / "recommendation.json").read_text())
        forced, forced_dir = timed_run([str(dataset), "--strategy", strategy, *extra], tmp / "cache-forced", tmp / "runs-forced")
        # The thread count each run chose (its first event names the machine: "cpu x2"). Until 2026-12-07 the
        # second run, started right after the first, read the first's load average as other work and took one thread.
        threads = [_machine_of(d) for d in (run_dir, forced_dir)]
    ratio = auto / forced
    print(f"{dataset.name}: run --auto {auto:.1f} s, run --strategy {strategy} {forced:.1f} s (both cold): ratio {ratio:.2f} "
          f"(target <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); devices {threads[0]} / {threads[1]}")
    stages = rec.get("stage_seconds") or {}
    if stages:  # where the advice's seconds went (the forced run scans and builds the backbone too)
        print(f"  the advice took {rec.get('seconds') or 0:.1f} s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])))


def repeated_copy(src: Path, dst: Path, times: int) -> int:
    n = 0
    for path in src.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            rel = path.relative_to(src)
            (dst / rel.parent).mkdir(parents=True, exist_ok=True)
            for k in range(times):
                shutil.copyfile(path, dst / rel.parent / f"r{k}_{path.name}")
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", nargs="?", default=str(DEFAULT))
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--auto-vs-strategy", action="store_true", help="time run --auto against run --strategy (cold caches)")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    src = Path(args.dataset)
    if args.auto_vs_strategy:
        extra = [*(["--input-size", str(args.input_size)] if args.input_size else []),
                 *(["--epochs", str(args.epochs)] if args.epochs else [])]
        auto_vs_strategy(src, extra)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = tmp / f"{src.name}-x{args.repeat}"
        n_big = repeated_copy(src, big, args.repeat) if args.repeat > 0 else 0
        rows = []
        first = None
        for name, path in ((src.name, src), (big.name, big))[: 2 if args.repeat > 0 else 1]:
            cache = tmp / f"cache-{name}"
            cold, rec = timed_recommend(path, cache, args.sample_size)
            warm, rec2 = timed_recommend(path, cache, args.sample_size)
            assert rec2["strategy"] == rec["strategy"]
            p = rec["profile"]
            first = first or rec
            rows.append((name, p["images_total"], cold, warm, rec["seconds"], rec2["seconds"], rec["strategy"], p["similarity"]["score"]))
        print(f"{'dataset':22s} {'images':>7s} {'cold s':>7s} {'warm s':>7s} {'(in-process cold/warm)':>24s}  strategy, similarity")
        for name, n, cold, warm, c_in, w_in, strat, score in rows:
            print(f"{name:22s} {n:7d} {cold:7.1f} {warm:7.1f} {c_in:11.1f} / {w_in:6.1f}       {strat}, "
                  f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]")
        base = rows[0]
        print(f"targets: cold <= 90 s: {'met' if base[2] <= 90 else 'MISSED'} ({base[2]:.1f} s); "
              f"warm <= 5 s: {'met' if base[3] <= 5 else 'MISSED'} ({base[3]:.1f} s)")
        total = sum(f["seconds"] or 0.0 for f in ((first.get("forecast") or {}).get("strategies") or []))
        if total:
            print(f"cold recommend = {base[2] / total:.2%} of the forecast {total:.0f} s for running all four strategies "
                  f"(target <= 5 %: {'met' if base[2] <= 0.05 * total else 'MISSED'})")
        if args.repeat <= 0:
            return
        print(f"{args.repeat}x dataset ({n_big} files): cold +{rows[1][2] - base[2]:.1f} s, warm +{rows[1][3] - base[3]:.1f} s over the original")


if __name__ == "__main__":
    main()
