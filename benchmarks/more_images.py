"""What more images buy, checked for all four strategies: from a k-shot subsample, forecast the full set.

    python benchmarks/more_images.py [--records docs/records/cpu.jsonl] [--k 20,50] [--cache-dir .cache/records]

For every dataset with a full-set cell at 128 px and k-shot cells (seed 0) in the track record, the
k-shot subsample is profiled again (the same seeded draw as benchmarks/records.py, features from
that script's cache; the profile measures the probe's learning curve) and each strategy's accuracy
on the whole training set is forecast the way `recommend`'s "more images" answer does it
(``advisor.decide.curves.forecast_at``): the probe's curve extrapolated from k images per class to
the full set's, the fine-tunes from the forecaster at the full size fed that extrapolated probe CV.
The forecaster's references leave the dataset out (all its cells, every k and seed), as in
benchmarks/policy.py. Each forecast is compared with the strategy's measured accuracy in the
full-set cell (same epoch cap, same validation split): |error| <= 2 points and 80 % interval
coverage, issue 27's targets (>= 70 % of (dataset, strategy) pairs; 70-90 %).
Prints a markdown table and the summary; ``--out`` keeps the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from policy import as_record, load_cells
from sweeps import subsample

from advisor import api
from advisor.decide.curves import forecast_at
from advisor.decide.forecast import forecast

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STRATS = ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=Path, nargs="+", default=[ROOT / "docs" / "records" / "cpu.jsonl"])
    ap.add_argument("--k", default="20,50")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "records")
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    cells = load_cells(args.records)
    full = {c["dataset"]: c for c in cells if c.get("k") is None and c["input_size"] == 128 and c.get("seed", 0) == 0}
    shots = [c for c in cells if c.get("k") in ks and c.get("seed", 0) == 0 and c["input_size"] == 128
             and c["dataset"] in full]
    records = [as_record(c) for c in cells]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in sorted(shots, key=lambda c: (c["dataset"], c["k"])):
            big = full[c["dataset"]]
            path = subsample(str(args.data / c["dataset"]), c["k"], Path(tmp) / f"{c['dataset']}-k{c['k']}", seed=0)
            prof = api.profile(path, sample_size=args.sample_size, seed=0, cache_dir=args.cache_dir)
            refs = [r for r in records if r["group"] != c["dataset"]]
            base = dict(probe_cv=prof.probe_cv, val_images=c["n_val"], train_images=prof.train_images,
                        per_class=prof.train_per_class_median, similarity=c["similarity"], epochs=c["epochs_cap"],
                        step_seconds=None, batch_size=32, input_size=c["input_size"],
                        schedule_share=big["schedule_share"], cv_images=prof.probe_cv_images)
            factor = big["train_per_class_median"] / prof.train_per_class_median
            run_forecast = lambda **kw: forecast(records=refs, **kw)  # noqa: E731
            today = {f.strategy: f.accuracy for f in run_forecast(**{**base, "schedule_share": c["schedule_share"]}).strategies}
            at = forecast_at(prof, base, run_forecast, factor, epochs=big["epochs_cap"],
                             per_class=big["train_per_class_median"], train_images=big["train_images"], today=today)
            if at is None:
                print(f"{c['dataset']} k={c['k']}: the probe's curve has too few points; skipped")
                continue
            strategies, gain = at
            for s in STRATS:
                f, lo, hi = strategies[s]
                measured = big["strategies"][s]["accuracy"]
                rows.append({"dataset": c["dataset"], "k": c["k"], "full_per_class": big["train_per_class_median"],
                             "strategy": s, "at_k": c["strategies"][s]["accuracy"], "forecast": round(f, 4),
                             "low": round(lo, 4), "high": round(hi, 4), "measured": measured,
                             "error_points": round(100 * (f - measured), 2), "covered": lo <= measured <= hi,
                             "probe_gain": gain})
    print("| dataset | k | full set per class | strategy | measured at k | forecast for the full set [80 %] | measured | error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['k']} | {r['full_per_class']:.0f} | {r['strategy']} | {r['at_k']:.3f} | "
              f"{r['forecast']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {r['measured']:.3f} | {r['error_points']:+.1f} |")
    if not rows:
        return
    print()
    for group in (STRATS[:2], STRATS[2:], STRATS):
        sub = [r for r in rows if r["strategy"] in group]
        within = sum(abs(r["error_points"]) <= 2 for r in sub)
        covered = sum(r["covered"] for r in sub)
        print(f"{' and '.join(group) if len(group) < 4 else 'all four'}: |error| <= 2 points on {within}/{len(sub)} "
              f"({within / len(sub):.0%}); 80 % interval held {covered}/{len(sub)} ({covered / len(sub):.0%}); "
              f"mean error {sum(r['error_points'] for r in sub) / len(sub):+.1f} points")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
