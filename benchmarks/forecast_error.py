"""How far the forecasts are from what the suite achieved, one dataset held out at a time.

    python benchmarks/forecast_error.py docs/suite_cpu64_cap8.json --runs /tmp/bench/runs [--out docs/forecast_error]

* probes: the forecast is the probe's cross-validated accuracy on the training split (read from
  each suite run's ``result.json``: ``selected.cv_accuracy``; ``recommend`` uses the same CV on
  its profiling sample) shifted by the median validation-vs-CV gap of the *other* datasets;
* fine-tunes: the better probe's forecast plus the gain :mod:`advisor.decide.forecast` fits on the
  *other* datasets of the suite (leave one dataset out), with its 80 % interval.

Budget regret: at every budget that changes which strategies fit (each strategy's measured wall
time on that dataset), the strategy ``--budget`` picks (best forecast that fits) against the best
achieved among those that fit. The measured times stand in for the time forecast here, so this
isolates the accuracy forecast; ``benchmarks/forecast_time.py`` measures the time forecast.

Prints, and writes as OUT.md/OUT.json, |forecast - achieved| per (dataset, strategy), the share
within 2 points (target >= 80 %) and how often the 80 % interval held the achieved value
(target 70-90 %).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from advisor.decide.forecast import forecast


def _cv(runs: Path, dataset: str, strategy: str) -> float | None:
    found = sorted(runs.glob(f"compare-{dataset}-*/{strategy}/result.json"))
    if not found:
        return None
    return json.loads(found[-1].read_text())["selected"].get("cv_accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite")
    ap.add_argument("--runs", required=True, help="the suite's --runs-dir (each run's result.json holds the probe's CV)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    suite = json.loads(Path(args.suite).read_text())
    runs = Path(args.runs)
    records = [{"dataset": r["dataset"], "train_per_class_median": r["train_per_class_median"],
                "similarity": r["similarity"]["value"] if r.get("similarity") else None, "accuracy": r["accuracy"],
                "probe_cv": {s: cv for s in ("linear-probe", "layer-probe") if (cv := _cv(runs, r["dataset"], s)) is not None}}
               for r in suite]
    rows = []
    for r, rec in zip(suite, records, strict=True):
        cv = {"pre_logits": rec["probe_cv"].get("linear-probe")}
        layer = rec["probe_cv"].get("layer-probe")
        if cv["pre_logits"] is None or layer is None:
            continue
        cv["best earlier tap"] = layer
        n_val = r["profile"]["images_total"] - r["train_images"]
        fc = forecast(probe_cv=cv, val_images=n_val, train_images=r["train_images"], per_class=r["train_per_class_median"],
                      similarity=rec["similarity"], epochs=None, step_seconds=None, batch_size=32,
                      extract_images_per_second=None, records=[q for q in records if q is not rec])
        for f in fc.strategies:
            achieved = r["accuracy"].get(f.strategy)
            if achieved is None:
                continue
            sd = math.sqrt(max(achieved * (1 - achieved), 1e-6) / max(n_val, 1))
            rows.append({"dataset": r["dataset"], "strategy": f.strategy, "forecast": f.accuracy, "low": f.low, "high": f.high,
                         "achieved": round(achieved, 4), "error_points": round(100 * (f.accuracy - achieved), 2),
                         "covered": f.low <= achieved <= f.high,
                         # P(|error| <= 2 points) for a forecast equal to the true accuracy: the validation split's own noise
                         "noise_floor_within_2": round(math.erf(0.02 / (sd * math.sqrt(2))), 3)})
    regrets = []
    for r in suite:
        fc = {x["strategy"]: x["forecast"] for x in rows if x["dataset"] == r["dataset"]}
        secs = {k: v for k, v in (r.get("seconds") or {}).items() if k in fc}
        for budget in sorted(set(secs.values())):
            fits = [k for k in secs if secs[k] <= budget]
            pick = max(fits, key=lambda k: (fc[k], -secs[k]))
            best = max(r["accuracy"][k] for k in fits)
            regrets.append({"dataset": r["dataset"], "budget_s": budget, "fits": sorted(fits), "picked": pick,
                            "regret_points": round(100 * (best - r["accuracy"][pick]), 2)})
    mean_regret = sum(g["regret_points"] for g in regrets) / max(1, len(regrets))
    choices = [g for g in regrets if len(g["fits"]) > 1]
    choice_regret = sum(g["regret_points"] for g in choices) / max(1, len(choices))
    within = sum(abs(x["error_points"]) <= 2.0 for x in rows) / len(rows)
    floor = sum(x["noise_floor_within_2"] for x in rows) / len(rows)
    covered = sum(x["covered"] for x in rows) / len(rows)
    lines = [f"`python benchmarks/forecast_error.py {Path(args.suite).as_posix()} --runs RUNS` (the suite's own runs; "
             "the CV gap and fine-tune gains fitted without the dataset forecast; CPU, 64 px, 8-epoch cap)", "",
             "| dataset | strategy | forecast [80 %] | achieved | error (points) |", "|---|---|---|---|---|"]
    lines += [f"| {x['dataset']} | {x['strategy']} | {x['forecast']:.3f} [{x['low']:.3f}, {x['high']:.3f}] | {x['achieved']:.3f} | "
              f"{x['error_points']:+.2f}{'' if x['covered'] else ' (outside)'} |" for x in rows]
    lines += ["", f"{len(rows)} (dataset, strategy) pairs: |error| <= 2 points for {within:.0%} (target >= 80 %); "
                  f"the 80 % interval held the achieved value for {covered:.0%} (target 70-90 %)",
              f"noise floor: a forecast equal to each strategy's true accuracy would land within 2 points of the measured "
              f"one for only {floor:.0%} of these pairs, given the validation splits' sizes (binomial)"]
    lines.append(f"budget: over {len(regrets)} (dataset, budget) pairs, the strategy picked by forecast lost "
                 f"{mean_regret:.2f} points on average to the best one that fit (target <= 1.0); "
                 f"{sum(g['regret_points'] > 0 for g in regrets)} picks were not the best; "
                 f"{choice_regret:.2f} points over the {len(choices)} pairs where two or more strategies fit")
    for s in ("linear-probe", "layer-probe", "partial-finetune", "full-finetune"):
        errs = [abs(x["error_points"]) for x in rows if x["strategy"] == s]
        if errs:
            lines.append(f"{s}: mean |error| {sum(errs) / len(errs):.2f} points over {len(errs)} datasets")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(md)
        Path(args.out).with_suffix(".json").write_text(json.dumps({"rows": rows, "within_2_points": within, "noise_floor_within_2": floor,
                                                                    "interval_coverage": covered,
                                                                    "budget_regret": regrets, "mean_budget_regret_points": mean_regret}, indent=2))


if __name__ == "__main__":
    main()
