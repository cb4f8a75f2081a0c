"""Re-run recorded cells with today's code and compare their wall times (and picks) with the record.

    python benchmarks/recheck_records.py [--cells flowers:2,eurosat:5] [--input-size 128] [--seed 0]
                                         [--out /tmp/recheck.jsonl]

Each cell (dataset:k, at the record's 8-epoch cap) runs `compare` as `benchmarks/records.py` does,
into ``--out`` (resumable: cells already there are not run again; the record itself is never
written). Then, per cell: each fine-tune's seconds recorded -> now, whether its accuracy is the
recorded one, the strategy recommended then and now, and the recommended strategy's time over that
of the cheapest strategy tied with the best (each row's own ties). The recorded pick is the policy
of its day, so the last column mixes a policy change with the time change: read the seconds first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEFAULT_CELLS = ("flowers:2,flowers:5,flowers:10,eurosat:2,eurosat:5,fashion-mnist:2,fashion-mnist:5,"
                 "plantvillage:2,plantvillage:5,caltech20:2,brain-mri:5")


def time_over_cheapest_tied(row: dict, pick: str) -> float:
    s = row["strategies"]
    return s[pick]["seconds"] / min(v["seconds"] for v in s.values() if v["tied_with_best"])


def main() -> None:
    import records

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=DEFAULT_CELLS)
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", default=str(HERE.parent / "docs" / "records" / "cpu.jsonl"))
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "advisor-recheck.jsonl"))
    ap.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "advisor-recheck-cache"))
    args = ap.parse_args()
    wanted = [(d, int(k)) for d, k in (c.split(":") for c in args.cells.split(","))]
    recorded = {(c["dataset"], c["k"]): c for c in records.read_cells([Path(args.record)])
                if c["input_size"] == args.input_size and c["seed"] == args.seed and c.get("epochs_cap") == 8}
    missing = [c for c in wanted if c not in recorded]
    if missing:
        sys.exit(f"not in the record at {args.input_size} px, seed {args.seed}: {missing}")
    out, cache = Path(args.out), Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["ADVISOR_CACHE_DIR"] = str(cache)
    now = {}
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            now[(row["dataset"], row["k"])] = row
    for d, k in wanted:
        if (d, k) in now:
            continue
        cell = {"dataset": d, "k": k, "input_size": args.input_size, "epochs_cap": 8, "seed": args.seed}
        work = Path(tempfile.mkdtemp(prefix="recheck-"))
        try:
            row = records.run_cell(cell, work=work, cache=cache, sample_size=300)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        now[(d, k)] = row
    print("| cell | validation images | full fine-tune s (recorded -> now) | partial s | same fine-tune accuracy | "
          "recommended (then / now) | time over cheapest tied (then / now) |")
    print("|---|---|---|---|---|---|---|")
    then_sum = now_sum = 0.0
    for key in wanted:
        old, new = recorded[key], now[key]
        so, sn = old["strategies"], new["strategies"]
        same = all(abs(so[s]["accuracy"] - sn[s]["accuracy"]) < 1e-9 for s in ("partial-finetune", "full-finetune"))
        ro, rn = time_over_cheapest_tied(old, old["recommended"]), time_over_cheapest_tied(new, new["recommended"])
        then_sum, now_sum = then_sum + ro, now_sum + rn
        print(f"| {key[0]} k={key[1]} | {new['n_val']} | {so['full-finetune']['seconds']:.1f} -> {sn['full-finetune']['seconds']:.1f} | "
              f"{so['partial-finetune']['seconds']:.1f} -> {sn['partial-finetune']['seconds']:.1f} | {'yes' if same else 'no'} | "
              f"{old['recommended']} / {new['recommended']} | {ro:.1f}x / {rn:.1f}x |")
    print(f"mean time over the cheapest tied strategy: then {then_sum / len(wanted):.2f}x, now {now_sum / len(wanted):.2f}x "
          f"over {len(wanted)} cells")


if __name__ == "__main__":
    main()
