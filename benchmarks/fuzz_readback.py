"""The read-back fuzz at length: every reader of tests/fuzzing.py with SEEDS seeded mutations each.

    python benchmarks/fuzz_readback.py [--seeds 50] [--readers plan,model,...]

Prints one line per case that failed (what was mutated, and how the command answered), and a
summary per reader: cases, exit 0 (correct or recomputed), exit 2 (one line), failures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("ADVISOR_TEST_BACKBONES", "1")
os.environ.setdefault("ADVISOR_THREADS", "default")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--readers", default=None, help="comma-separated name prefixes (default: all)")
    args = ap.parse_args()
    from fuzzing import clean_outcomes, fuzz_case, prepare_world, readers, run_cli  # noqa: F401

    tmp = Path(tempfile.mkdtemp(prefix="advisor-fuzz-"))
    world = prepare_world(tmp / "world")
    scratch = tmp / "scratch"
    clean = clean_outcomes(world, scratch)
    wanted = args.readers.split(",") if args.readers else None
    for reader in readers():
        if wanted and not any(reader.name.startswith(w) for w in wanted):
            continue
        tally = Counter()
        for seed in range(args.seeds):
            try:
                fuzz_case(world, scratch, reader, 7919 * seed + 13, clean)
                tally["ok"] += 1
            except AssertionError as err:
                tally["failed"] += 1
                print(f"FAILED {' '.join(str(err).split())[:300]}", flush=True)
            except Exception as err:  # a hang or anything the harness did not expect
                tally["failed"] += 1
                print(f"FAILED {reader.name} seed {seed}: {type(err).__name__}: {err}", flush=True)
        print(f"{reader.name:34s} cases {args.seeds:4d}  ok {tally['ok']:4d}  failed {tally['failed']:4d}", flush=True)


if __name__ == "__main__":
    main()
