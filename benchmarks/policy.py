"""Which decision policy to ship, and how good the forecast is, both measured leave one dataset out.

    python benchmarks/policy.py [--records docs/records/cpu.jsonl] [--out docs/policy]
    python benchmarks/policy.py --forecast-on gpu.jsonl   # forecast error of new cells against the shipped record

Reads the cells `benchmarks/records.py` measured (every strategy on full sets and k-shot
subsamples). For each cell, everything that decides is fitted on the *other* datasets only (a
dataset's subsamples, seeds and sizes leave together) and then applied to the cell:

* ``table``: the 2x2 table, its boundaries re-derived on the other datasets by
  benchmarks/calibrate.py's rule 3 (cut each axis where its own decision changed);
* ``forecast``: the forecast's best strategy with a one-standard-error tie-break to the cheaper;
* ``hybrid``: the forecast picks probe or fine-tune, the table's similarity column which one;
* ``best-forecast``: the highest forecast, no tie-break;
* ``per-setting``: ``hybrid`` below 20 training images per class, ``best-forecast`` from there up
  (its boundary and policies were chosen on these records: benchmarks/policy_regimes.py gives its
  nested, out-of-sample figure);
* baselines: always linear-probe, always layer-probe, always full-finetune, today's table (the
  shipped thresholds, not refitted).

Per policy and input size: mean and max regret (points behind the best strategy), the share of
cells where the chosen strategy is tied with the best (its paired 95 % interval behind the best
reaches 0), and the time spent: the chosen strategy's wall time over that of the cheapest
strategy tied with the best. Also the forecast's out-of-sample error (|error| <= 2 points,
80 % interval coverage) and the noise floor (seed-to-seed spread per strategy). Writes OUT.json,
OUT.md and OUT-kshot.svg (accuracy against images per class, the four strategies).

    python benchmarks/policy.py --records docs/records/cpu.jsonl docs/records/cpu64_legacy.jsonl --update-docs --suites

re-derives it all in one command from the records: the generated blocks of docs/decision-rules.md,
docs/forecast_error.md and README.md, docs/suite_cpu{64,128}_cap8.md, and the shipped track record
the forecaster learns from (advisor/reference/track_record.json, as benchmarks/track_record.py writes it).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from calibrate import calibrate_boundaries
from records import probe_gap_inputs, read_cells

from advisor.backbones import PRE_LOGITS, TapInfo
from advisor.decide.forecast import FINETUNES, forecast
from advisor.decide.models import STRATEGIES
from advisor.decide.rules import Thresholds, recommend
from advisor.decide.rules.policy import COST_ORDER, choose, views
from advisor.measure.models import DatasetProfile

ROOT = Path(__file__).resolve().parents[1]
TAPS = tuple(TapInfo(name=n, channels=1) for n in ["stage1", "stage2", "stage3", "stage4", "stage5", PRE_LOGITS])
POLICIES = ("table", "forecast", "hybrid", "best-forecast", "per-setting")
BASELINES = ("always linear-probe", "always layer-probe", "always full-finetune", "today's table")
# The trade-off study: the cheapest strategy forecast within MARGIN points of the best forecast.
MARGINS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)


def load_cells(paths: list[Path]) -> list[dict]:
    """The complete cells of benchmarks/records.py's files, each with its profile as a model."""
    cells = read_cells(paths)
    for c in cells:
        c["profile_model"] = DatasetProfile.model_validate(c["profile"])
    return cells


def as_record(c: dict) -> dict:
    """A cell as the forecaster's track-record entry."""
    return {"dataset": c["dataset"], "group": c["dataset"], "k": c.get("k"), "seed": c.get("seed"),
            "input_size": c["input_size"], "epochs_cap": c["epochs_cap"], "schedule_share": c["schedule_share"],
            "train_per_class_median": c["train_per_class_median"], "similarity": c["similarity"],
            "accuracy": {s: v["accuracy"] for s, v in c["strategies"].items()},
            "probe_cv": {s: v["cv"] for s, v in c["strategies"].items() if v.get("cv") is not None},
            "sample_cv": c["profile"].get("probe_cv") or {}, "best": c["best"], **probe_gap_inputs(c)}


def as_point(c: dict) -> dict:
    return {"dataset": c["dataset"], "group": c["dataset"], "profile": c["profile_model"],
            "accuracy": {s: v["accuracy"] for s, v in c["strategies"].items()}, "epochs_cap": c["epochs_cap"]}


def cell_forecast(c: dict, references: list[dict]):
    p = c["profile_model"]
    return forecast(probe_cv=p.probe_cv, val_images=c["n_val"], train_images=c["train_images"],
                    per_class=c["train_per_class_median"], similarity=c["similarity"], epochs=c["epochs_cap"],
                    step_seconds=None, batch_size=32, records=references, input_size=c["input_size"],
                    schedule_share=c["schedule_share"], **{k: v for k, v in probe_gap_inputs(c).items() if k != "train_images"})


def table_choice(c: dict, t: Thresholds) -> tuple[str, str]:
    rec = recommend(c["profile_model"], taps=TAPS, thresholds=t, epochs_cap=c["epochs_cap"])
    return rec.strategy, rec.similarity_class


def score(c: dict, strategy: str) -> dict:
    s = c["strategies"]
    best = max(v["accuracy"] for v in s.values())
    tied = [n for n, v in s.items() if v["winner"] or v["tied_with_best"]]
    cheapest = min(tied, key=lambda n: s[n]["seconds"])
    return {"strategy": strategy, "regret": 100 * (best - s[strategy]["accuracy"]), "tied": strategy in tied,
            "time_ratio": s[strategy]["seconds"] / max(1e-9, s[cheapest]["seconds"])}


def margin_choice(fv: list, margin_points: float) -> str:
    """The cheapest strategy (cost order) whose forecast lies within ``margin_points`` of the best forecast."""
    best = max(v.accuracy for v in fv)
    close = [v for v in fv if v.accuracy >= best - margin_points / 100]
    return min(close, key=lambda v: COST_ORDER.index(v.strategy)).strategy


def evaluate(cells: list[dict]) -> tuple[dict, list[dict], list[dict]]:
    """(choices per cell and policy, forecast errors, per-cell rows)."""
    groups = sorted({c["dataset"] for c in cells})
    rows, errors = [], []
    records = [as_record(c) for c in cells]
    for g in groups:
        train = [c for c in cells if c["dataset"] != g]
        refs = [r for r in records if r["group"] != g]
        if len({c["dataset"] for c in train}) < 3:
            continue
        t, _ = calibrate_boundaries([as_point(c) for c in train], Thresholds())
        for c in (c for c in cells if c["dataset"] == g):
            fc = cell_forecast(c, refs)
            fv = views(fc)
            table, column = table_choice(c, t)
            today, today_col = table_choice(c, Thresholds())
            picks = {"table": table,
                     "forecast": choose("forecast", table=table, column=column, fc=fv)[0],
                     "hybrid": choose("hybrid", table=table, column=column, fc=fv)[0],
                     "best-forecast": choose("best-forecast", table=table, column=column, fc=fv)[0],
                     "per-setting": choose("per-setting", table=table, column=column, fc=fv,
                                           per_class=c["train_per_class_median"])[0],
                     "always linear-probe": "linear-probe", "always layer-probe": "layer-probe",
                     "always full-finetune": "full-finetune", "today's table": today}
            rows.append({"dataset": c["dataset"], "k": c.get("k"), "seed": c.get("seed"), "input_size": c["input_size"],
                         "per_class": c["train_per_class_median"], "best": c["best"],
                         "thresholds": {"similarity": t.similarity, "large_per_class": t.large_per_class},
                         "scores": {name: score(c, s) for name, s in picks.items()},
                         "margins": {f"{m:g}": score(c, margin_choice(fv, m)) for m in MARGINS}})
            for f in fc.strategies:
                achieved = c["strategies"][f.strategy]["accuracy"]
                errors.append({"dataset": c["dataset"], "k": c.get("k"), "input_size": c["input_size"], "strategy": f.strategy,
                               "forecast": f.accuracy, "low": f.low, "high": f.high, "achieved": achieved,
                               "n_val": c["n_val"], "extrapolating": bool(fc.extrapolating)})
    return {}, errors, rows


def summarise(rows: list[dict], name: str) -> dict:
    s = [r["scores"][name] for r in rows]
    if not s:
        return {}
    return {"cells": len(s), "mean_regret": round(statistics.fmean(x["regret"] for x in s), 2),
            "max_regret": round(max(x["regret"] for x in s), 2),
            "tied_share": round(sum(x["tied"] for x in s) / len(s), 3),
            "time_ratio": round(statistics.fmean(x["time_ratio"] for x in s), 2)}


def tradeoff(rows: list[dict]) -> list[dict]:
    """Accuracy for time, out of sample: per margin, the scores of the cheapest strategy forecast within it of the best."""
    out = []
    for m in MARGINS:
        s = [r["margins"][f"{m:g}"] for r in rows]
        out.append({"margin_points": m, "cells": len(s), "mean_regret": round(statistics.fmean(x["regret"] for x in s), 2),
                    "max_regret": round(max(x["regret"] for x in s), 2),
                    "tied_share": round(sum(x["tied"] for x in s) / len(s), 3),
                    "time_ratio": round(statistics.fmean(x["time_ratio"] for x in s), 2),
                    "probe_share": round(sum(x["strategy"] in COST_ORDER[:2] for x in s) / len(s), 3)})
    return out


def tradeoff_markdown(trade: list[dict]) -> list[str]:
    lines = ["### Accuracy for time: what a tie margin would trade", "",
             "The cheapest strategy (linear probe, layer probe, partial, full fine-tune) whose forecast lies within "
             "*margin* points of the best forecast, leave one dataset out, every cell. Margin 0 is best-forecast. A policy "
             "meets the time target (<= 2x the cheapest tied strategy) only where the forecast can tell a tied probe "
             "from a probe that loses; the rows say how much accuracy each step of time costs with today's forecast.", "",
             "| margin (points) | cells | mean regret | max regret | tied with best | time / cheapest tied | probes chosen |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {t['margin_points']:g} | {t['cells']} | {t['mean_regret']:.2f} | {t['max_regret']:.2f} | {t['tied_share']:.0%} | "
              f"{t['time_ratio']:.2f}x | {t['probe_share']:.0%} |" for t in trade]
    return lines + [""]


def forecast_summary(errors: list[dict]) -> dict:
    if not errors:
        return {}
    within = [abs(e["forecast"] - e["achieved"]) <= 0.02 for e in errors]
    covered = [e["low"] <= e["achieved"] <= e["high"] for e in errors]
    # What a perfect forecast would score: the binomial noise of each validation split alone.
    floor = [math.erf(0.02 / max(1e-9, math.sqrt(max(e["achieved"] * (1 - e["achieved"]), 1e-6) / e["n_val"])) / math.sqrt(2))
             for e in errors]
    return {"pairs": len(errors), "within_2_points": round(sum(within) / len(within), 3),
            "coverage_80": round(sum(covered) / len(covered), 3),
            "mean_abs_error_points": round(100 * statistics.fmean(abs(e["forecast"] - e["achieved"]) for e in errors), 2),
            "noise_floor_within_2": round(statistics.fmean(floor), 3)}


# Cells recorded from here on were forecast by today's timing (a short step timed at the run's own
# batch, an epoch's partial batch by its share: commits 770e145 and c759f33); earlier ones were not.
CURRENT_TIMING_SINCE = "2026-12-06T16:45:00"


def time_summary(cells: list[dict]) -> dict:
    """The wall-time forecast each cell's `recommend` made (timed steps on that machine) against the measured time.

    Also with the feedback a user's machine applies (advisor/decide/timing.py ``time_correction``): each
    forecast scaled by the median achieved/forecast ratio of the 5 runs of its kind (probe or
    fine-tune) before it, in the order the cells ran (the records' own runs did not feed back:
    each cell started without a local record).
    """
    from advisor.decide.timing import time_kind

    runs = [(time_kind(s), c["strategies"][s]["seconds"] / f["seconds"])
            for c in sorted(cells, key=lambda c: c.get("time", ""))
            for s, f in (c.get("forecast") or {}).items() if f.get("seconds") and c["strategies"].get(s, {}).get("seconds")]
    ratios = [r for _, r in runs]
    if not ratios:
        return {}
    fed = []
    for i, (kind, r) in enumerate(runs):
        before = [q for k, q in runs[:i] if k == kind][-5:]
        if before:
            fed.append(r / statistics.median(before))
    now = [(time_kind(s), c["strategies"][s]["seconds"] / f["seconds"]) for c in cells if c.get("time", "") >= CURRENT_TIMING_SINCE
           for s, f in (c.get("forecast") or {}).items() if f.get("seconds") and c["strategies"].get(s, {}).get("seconds")]

    def share(rs: list[float]) -> dict:
        return {"runs": len(rs), "within_30_percent": round(sum(0.7 <= r <= 1.3 for r in rs) / len(rs), 3),
                "median_achieved_over_forecast": round(statistics.median(rs), 2)}

    current = {}
    if now:
        # by kind too: a probe runs for seconds, where +-30 % is a fraction of a second of process jitter
        by_kind: dict[str, list[float]] = defaultdict(list)
        for kind, r in now:
            by_kind[kind].append(r)
        current = {**share([r for _, r in now]), "by_kind": {k: share(by_kind[k]) for k in ("finetune", "probe") if by_kind[k]}}
    return {"runs": len(ratios), "within_30_percent": round(sum(0.7 <= r <= 1.3 for r in ratios) / len(ratios), 3),
            "median_achieved_over_forecast": round(statistics.median(ratios), 2),
            "with_feedback_within_30_percent": round(sum(0.7 <= r <= 1.3 for r in fed) / len(fed), 3) if fed else None,
            **({"current_timing": current} if current else {})}


def current_timing_text(tsum: dict) -> str:
    """A sentence on the runs forecast by today's step timing, where the record has any."""
    cur = tsum.get("current_timing")
    if not cur:
        return ""
    kinds = cur.get("by_kind") or {}
    split = "; ".join(f"{'fine-tunes' if k == 'finetune' else 'probes'} {v['within_30_percent']:.0%} of {v['runs']} "
                      f"(median {v['median_achieved_over_forecast']:.2f})" for k, v in kinds.items())
    return (f" Runs forecast by the current timing (recorded since {CURRENT_TIMING_SINCE[:10]}): {cur['within_30_percent']:.0%} "
            f"of {cur['runs']} within +-30 % (median achieved/forecast {cur['median_achieved_over_forecast']:.2f})"
            + (f"; {split}: a probe runs for seconds, where 30 % is a second or less" if split else "") + ".")


def noise_floor(cells: list[dict]) -> dict:
    """Seed-to-seed standard deviation of each strategy's accuracy (points), over cells measured with several seeds."""
    by: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        by[(c["dataset"], c.get("k"), c["input_size"], c["epochs_cap"])].append(c)
    out = {}
    for s in STRATEGIES:
        sds = [statistics.stdev([c["strategies"][s]["accuracy"] for c in v]) for v in by.values() if len(v) >= 2]
        if sds:
            out[s] = {"cells": len(sds), "mean_sd_points": round(100 * statistics.fmean(sds), 2)}
    return out


def regret_difference(rows: list[dict], a: str, b: str, *, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean regret of policy ``a`` minus that of ``b`` on the same cells, with a 95 % interval from a bootstrap over
    datasets (a dataset's cells, subsamples, seeds and sizes are drawn together: they are not independent)."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[r["dataset"]].append(r["scores"][a]["regret"] - r["scores"][b]["regret"])
    groups = list(by.values())
    if not groups:
        return {}
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        draw = [d for _ in groups for d in rng.choice(groups)]
        means.append(statistics.fmean(draw))
    means.sort()
    return {"a": a, "b": b, "datasets": len(groups), "difference": round(statistics.fmean(d for g in groups for d in g), 2),
            "low": round(means[int(0.025 * resamples)], 2), "high": round(means[int(0.975 * resamples) - 1], 2)}


def regret_difference_text(diff: dict) -> str:
    """One sentence: is the chosen policy's lead over (or lag behind) the closest fixed baseline more than chance?"""
    if not diff:
        return ""
    verdict = ("ahead beyond chance" if diff["high"] < 0 else "behind beyond chance" if diff["low"] > 0
               else "not distinguishable from it on this record")
    return (f"{diff['a']} minus {diff['b']}, mean regret over every cell: {diff['difference']:+.2f} points "
            f"(95 % interval {diff['low']:+.2f} to {diff['high']:+.2f}, bootstrap over the {diff['datasets']} datasets): "
            f"{verdict}.")


def regret_floor(cells: list[dict], rows: list[dict], chosen: str) -> dict:
    """Per input size, what seed noise alone costs: over the settings measured with 3 or more seeds, the regret of
    running each setting's best strategy *on average* (known from all its seeds, in sample), next to the chosen
    policy on the same cells.

    A rule that reads a dataset's size and similarity cannot tell one seed's draw of images from another's, so its
    regret on these cells cannot be expected to fall below the floor's; only a rule that measures on its own draw
    which strategy wins could (the probe CV measures one side of that).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["dataset"], c.get("k"), c["input_size"], c["epochs_cap"])].append(c)
    by_row = {(r["dataset"], r["k"], r["seed"], r["input_size"]): r for r in rows}
    floor: dict[int, list[float]] = defaultdict(list)
    policy: dict[int, list[float]] = defaultdict(list)
    for (dataset, k, size, _), members in groups.items():
        if len(members) < 3:
            continue
        best_on_average = max(STRATEGIES, key=lambda s: statistics.fmean(c["strategies"][s]["accuracy"] for c in members))
        for c in members:
            row = by_row.get((dataset, k, c["seed"], size))
            if row is None:
                continue
            floor[size].append(100 * (max(v["accuracy"] for v in c["strategies"].values())
                                      - c["strategies"][best_on_average]["accuracy"]))
            policy[size].append(row["scores"][chosen]["regret"])
    return {size: {"cells": len(v), "floor_mean": round(statistics.fmean(v), 2), "floor_max": round(max(v), 2),
                   "policy_mean": round(statistics.fmean(policy[size]), 2), "policy_max": round(max(policy[size]), 2)}
            for size, v in sorted(floor.items())}


def regret_floor_text(floor: dict, chosen: str) -> str:
    """One sentence per input size: the regret floor of seed noise against the chosen policy on the same cells."""
    if not floor:
        return ""
    return ("Regret floor of seed noise (settings measured with 3 seeds; each run with the strategy best on average over "
            "its seeds, known in sample): " + "; ".join(
                f"{size} px, {f['cells']} cells: mean {f['floor_mean']:.2f}, max {f['floor_max']:.2f} "
                f"({chosen} on the same cells: {f['policy_mean']:.2f}, {f['policy_max']:.2f})" for size, f in floor.items())
            + ". A rule that reads only a dataset's size and similarity cannot see which draw of images it got, so for "
            "such a rule a max-regret target below the floor's max is a target on noise; only measuring on the draw "
            "itself which strategy wins could go below it.")


def kshot_figure(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [c for c in cells if c["input_size"] == 128]
    names = sorted({c["dataset"] for c in ks if c.get("k")})  # the full set, where measured, is the rightmost point
    if not names:
        return
    cols = min(4, len(names))
    fig, axes = plt.subplots(math.ceil(len(names) / cols), cols, figsize=(3.2 * cols, 2.6 * math.ceil(len(names) / cols)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        pts = [c for c in ks if c["dataset"] == name]
        for s, colour in zip(STRATEGIES, ("#0072B2", "#009E73", "#CC79A7", "#E69F00"), strict=True):
            by: dict[float, list[float]] = defaultdict(list)
            for c in pts:
                by[c["train_per_class_median"]].append(c["strategies"][s]["accuracy"])
            xs = sorted(by)
            ax.plot(xs, [statistics.fmean(by[x]) for x in xs], marker="o", ms=3, color=colour, label=s)
        ax.set_xscale("log")
        xs_all = sorted({c["train_per_class_median"] for c in pts})
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{x:g}" + ("\n(all)" if not any(c.get("k") and c["train_per_class_median"] == x for c in pts) else "")
                            for x in xs_all])
        ax.minorticks_off()
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("training images per class", fontsize=7)
        ax.set_ylabel("validation accuracy", fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    # a fixed id salt and no date: re-deriving unchanged records gives a byte-identical figure
    with matplotlib.rc_context({"svg.hashsalt": "advisor-policy"}):
        fig.savefig(path, format="svg", metadata={"Date": None})


def markdown(summary: dict, fsum: dict, noise: dict, rows: list[dict], command: str, tsum: dict | None = None,
             evidence_text: str = "") -> str:
    lines = [f"Measured by `{command}`: leave one dataset out (its subsamples, seeds and sizes leave together).", ""]
    if rows and "margins" in rows[0]:
        lines += tradeoff_markdown(tradeoff(rows))
    for size, table in summary.items():
        lines += [f"### {size}", "", "| policy | cells | mean regret | max regret | tied with best | time / cheapest tied |",
                  "|---|---|---|---|---|---|"]
        for name, s in table.items():
            if s:
                lines.append(f"| {name} | {s['cells']} | {s['mean_regret']:.2f} | {s['max_regret']:.2f} | "
                             f"{s['tied_share']:.0%} | {s['time_ratio']:.2f}x |")
        lines.append("")
    lines += ["### Forecast, out of sample", "", "| input size | pairs | within 2 points | noise floor (perfect forecast) | "
              "80 % coverage | mean abs error |", "|---|---|---|---|---|---|"]
    for size, f in fsum.items():
        if f:
            lines.append(f"| {size} | {f['pairs']} | {f['within_2_points']:.0%} | {f['noise_floor_within_2']:.0%} | "
                         f"{f['coverage_80']:.0%} | {f['mean_abs_error_points']:.2f} |")
    if tsum:
        lines += ["", f"Wall time: {tsum['within_30_percent']:.0%} of {tsum['runs']} runs within +-30 % of their forecast "
                      f"(median achieved/forecast {tsum['median_achieved_over_forecast']:.2f}); "
                      f"{tsum['with_feedback_within_30_percent']:.0%} with the correction finished runs of the same kind feed back."
                      + current_timing_text(tsum)]
    lines += ["", "### Noise floor: seed-to-seed standard deviation (points)", ""]
    lines += [f"- {s}: {v['mean_sd_points']:.2f} over {v['cells']} cells" for s, v in noise.items()] or ["- no cell has several seeds yet"]
    if evidence_text:
        lines += ["", evidence_text]
    lines += ["", "### Per cell (regret in points; * = tied with the best)", "",
              "| dataset | k | px | seed | best | " + " | ".join(POLICIES + BASELINES) + " |",
              "|" + "---|" * (5 + len(POLICIES) + len(BASELINES))]
    for r in rows:
        cells = " | ".join(f"{r['scores'][n]['strategy']} {r['scores'][n]['regret']:.1f}{'*' if r['scores'][n]['tied'] else ''}"
                           for n in POLICIES + BASELINES)
        lines.append(f"| {r['dataset']} | {r['k'] or 'all'} | {r['input_size']} | {r['seed']} | {r['best']} | {cells} |")
    return "\n".join(lines) + "\n"


SINGLE = ("table", "forecast", "hybrid", "best-forecast")  # what a setting of ``per-setting`` may take
BOUNDARIES = (5, 10, 20, 50)  # training images per class the nested study may split at


# Tie margins (points) a per-setting rule may also pick from, as "margin 0.5": the cheapest strategy forecast
# within that margin of the best (the trade-off table's rows); scored nested only, beside the shipped candidates.
NESTED_MARGINS = (0.25, 0.5, 1.0)


def _score(r: dict, name: str) -> dict:
    return r["margins"][name.split()[1]] if name.startswith("margin ") else r["scores"][name]


def pick_per_setting(rows: list[dict], candidates: tuple[str, ...] = SINGLE) -> tuple[int, str, str]:
    """(boundary, policy below it, policy from it up) with the lowest total regret on ``rows``."""
    best = None
    for b in BOUNDARIES:
        for a in candidates:
            for c in candidates:
                total = sum(_score(r, a if r["per_class"] < b else c)["regret"] for r in rows)
                if best is None or total < best[0]:
                    best = (total, b, a, c)
    return best[1:]


def nested_per_setting(cells: list[dict], rows: list[dict]) -> dict:
    """``per-setting`` scored out of sample: for each held-out dataset, its boundary and policies are picked on
    the leave-one-dataset-out evaluation of the *other* datasets alone, then applied to the held-out cells."""
    with_margins = (*SINGLE, *(f"margin {m:g}" for m in NESTED_MARGINS))
    scored, folds, scored_m = [], {}, []
    for g in sorted({c["dataset"] for c in cells}):
        _, _, inner = evaluate([c for c in cells if c["dataset"] != g])
        b, a, c = pick_per_setting(inner)
        folds[g] = [b, a, c]
        scored += [r["scores"][a if r["per_class"] < b else c] for r in rows if r["dataset"] == g]
        # the same nested choice with tie margins among the candidates: does trading accuracy for time hold out of sample?
        bm, am, cm = pick_per_setting(inner, with_margins)
        scored_m += [_score(r, am if r["per_class"] < bm else cm) for r in rows if r["dataset"] == g]

    def summary(xs: list[dict]) -> dict:
        return {"cells": len(xs), "mean_regret": round(statistics.fmean(x["regret"] for x in xs), 2),
                "max_regret": round(max(x["regret"] for x in xs), 2),
                "tied_share": round(sum(x["tied"] for x in xs) / len(xs), 3),
                "time_ratio": round(statistics.fmean(x["time_ratio"] for x in xs), 2)}
    return {**summary(scored), "folds": folds, "picked_on_all": list(pick_per_setting(rows)),
            "with_margins": {**summary(scored_m), "picked_on_all": list(pick_per_setting(rows, with_margins))}}


def nested_text(nested: dict) -> str:
    from advisor.decide.rules.policy import PER_SETTING, PER_SETTING_BOUNDARY

    shipped = [PER_SETTING_BOUNDARY, *PER_SETTING]
    same = sum(f == shipped for f in nested["folds"].values())
    picked = nested.get("picked_on_all")
    check = ("" if picked is None else " The same procedure on all the records picks the shipped rule." if picked == shipped
             else f" The same procedure on all the records picks {picked}, not the shipped rule: ship it or say why.")
    return (f"per-setting's boundary ({PER_SETTING_BOUNDARY} images per class) and policies ({PER_SETTING[0]} below, "
            f"{PER_SETTING[1]} from there up) were chosen on these records, so its row above is in sample in those three "
            f"choices; chosen nested, leave one dataset out (for each held-out dataset on the other ten alone), it scores "
            f"mean regret {nested['mean_regret']:.2f}, max {nested['max_regret']:.2f}, tied {nested['tied_share']:.0%}, "
            f"time {nested['time_ratio']:.2f}x ({same} of {len(nested['folds'])} folds chose the shipped rule).{check}"
            + _margins_text(nested))


def _margins_text(nested: dict) -> str:
    m = nested.get("with_margins")
    if not m:
        return ""
    verdict = ("less regret for less time" if m["mean_regret"] < nested["mean_regret"] and m["time_ratio"] < nested["time_ratio"]
               else "not a better trade than the shipped rule's candidates")
    return (f" With tie margins ({', '.join(f'{x:g}' for x in NESTED_MARGINS)} points: the cheapest strategy forecast within "
            f"them of the best) among the candidates, the same nested choice scores mean regret {m['mean_regret']:.2f}, max "
            f"{m['max_regret']:.2f}, tied {m['tied_share']:.0%}, time {m['time_ratio']:.2f}x: {verdict}.")


def winner(rows: list[dict]) -> str:
    """The policy to ship: the lowest mean regret over every cell (every size), then the most ties, then the least time."""
    def key(name: str) -> tuple:
        s = summarise(rows, name)
        return (s["mean_regret"], -s["tied_share"], s["time_ratio"], POLICIES.index(name))
    return min(POLICIES, key=key)


def suite_markdown(cells: list[dict], rows: list[dict], policy_name: str, size: int, command: str) -> str:
    """The full sets at one input size, as the suite tables read: every strategy, the shipped policy's choice (held out)."""
    by = {(r["dataset"], r["seed"]): r for r in rows if r["input_size"] == size and not r["k"]}
    lines = [f"Full shared sets at {size} px, 8-epoch cap, 2 CPU cores (`{command}`). The policy column is "
             f"the shipped policy (`{policy_name}`) fitted without the dataset (leave one dataset out).", "",
             "| dataset | seed | train (median/class) | similarity | " + " | ".join(STRATEGIES) + " | best | policy | regret |",
             "|" + "---|" * (7 + len(STRATEGIES))]
    regrets = []
    for c in sorted((c for c in cells if c["input_size"] == size and not c.get("k")), key=lambda c: (c["dataset"], c["seed"])):
        r = by.get((c["dataset"], c["seed"]))
        if r is None:
            continue
        sc = r["scores"][policy_name]
        regrets.append(sc["regret"])
        accs = " | ".join(f"{c['strategies'][s]['accuracy']:.3f}" for s in STRATEGIES)
        sim = f"{c['similarity']:.3f}" if c["similarity"] is not None else "n/a"
        lines.append(f"| {c['dataset']} | {c['seed']} | {c['train_images']} ({c['train_per_class_median']:g}) | {sim} | {accs} | "
                     f"{c['best']} | {sc['strategy']}{' (tied)' if sc['tied'] else ''} | {sc['regret']:.2f} |")
    if regrets:
        lines += ["", f"mean regret {statistics.fmean(regrets):.2f} points, max {max(regrets):.2f}, over {len(regrets)} cells"]
    else:
        lines += ["", "no full set measured at this size yet"]
    return "\n".join(lines) + "\n"


def update_decision_rules(path: Path, summary: dict, fsum: dict, tsum: dict, noise: dict, chosen: str, cells: int,
                          command: str, trade: list[dict] | None = None, evidence_text: str = "") -> None:
    """Rewrite the block between the policy-summary markers of docs/decision-rules.md from this run."""
    start, end = "<!-- policy-summary -->", "<!-- /policy-summary -->"
    text = path.read_text()
    if start not in text:
        return
    lines = [start, "", f"Measured by `{command}` on {cells} cells, leave one dataset out; the shipped policy is "
             f"**{chosen}**. Regret in accuracy points; *tied*: the chosen strategy's paired 95 % interval behind the best "
             "reaches 0; *time*: its wall time over that of the cheapest strategy tied with the best.", "",
             "| cells | policy | mean regret | max regret | tied with best | time |", "|---|---|---|---|---|---|"]
    for label, table in summary.items():
        for name, v in table.items():
            if v:
                mark = "**" if name == chosen else ""
                lines.append(f"| {label} | {mark}{name}{mark} | {v['mean_regret']:.2f} | {v['max_regret']:.2f} | "
                             f"{v['tied_share']:.0%} | {v['time_ratio']:.2f}x |")
    lines += ["", "Forecast out of sample (same cells): " + "; ".join(
        f"{k}: {v['within_2_points']:.0%} within 2 points (a perfect forecast, only the validation split's noise: "
        f"{v['noise_floor_within_2']:.0%}), 80 % interval coverage {v['coverage_80']:.0%}" for k, v in fsum.items() if v) + "."]
    if tsum:
        lines.append(f"Wall time: {tsum['within_30_percent']:.0%} of {tsum['runs']} runs within +-30 % of their forecast; "
                     f"{tsum['with_feedback_within_30_percent']:.0%} with the correction finished runs of the same kind feed back."
                     + current_timing_text(tsum))
    if trade:
        lines.append("Accuracy for time (the cheapest strategy forecast within a margin of the best; every cell): " + "; ".join(
            f"{t['margin_points']:g} points: mean regret {t['mean_regret']:.2f}, time {t['time_ratio']:.2f}x" for t in trade)
            + (". No margin meets both the regret target (<= 1.0) and the time target (<= 2x): the forecast cannot yet tell a "
               "tied probe from a losing one." if not any(t["mean_regret"] <= 1.0 and t["time_ratio"] <= 2.0 for t in trade)
               else "."))
    if noise:
        lines.append("Noise floor (seed-to-seed sd, points): " + ", ".join(f"{s} {v['mean_sd_points']:.2f}" for s, v in noise.items()) + ".")
    else:
        lines.append("Noise floor: no cell has been measured with several seeds yet.")
    if evidence_text:
        lines.append(evidence_text)
    lines += ["", end]
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1] if end in rest else rest
    path.write_text(before + "\n".join(lines) + after)


TARGETS = {"mean_regret": 1.0, "max_regret": 3.0, "tied_share": 0.9, "time_ratio": 2.0}  # issue 23, per input size


def describe_cells(cells: list[dict]) -> str:
    """What the track record holds, in words: per input size, the full sets and the k-shot draws with their seeds."""
    def seeds(xs: set[int]) -> str:
        xs = sorted(xs)
        return f"seed {xs[0]}" if len(xs) == 1 else (f"seeds {xs[0]}-{xs[-1]}" if xs == list(range(xs[0], xs[-1] + 1))
                                                      else "seeds " + ", ".join(map(str, xs)))
    parts = []
    for size in sorted({c["input_size"] for c in cells}):
        at = [c for c in cells if c["input_size"] == size]
        full = [c for c in at if not c.get("k")]
        kshot = [c for c in at if c.get("k")]
        bits = []
        if kshot:
            by_k: dict[int, list[dict]] = defaultdict(list)
            for c in kshot:
                by_k[c["k"]].append(c)
            per_k = "; ".join(f"k = {k}: {len(v)} cells, {len({c['dataset'] for c in v})} sets, {seeds({c['seed'] for c in v})}"
                              for k, v in sorted(by_k.items()))
            bits.append(f"{len(kshot)} seeded k-shot subsamples ({per_k})")
        if full:
            legacy = sum(bool(c.get("legacy")) for c in full)
            bits.append(f"{len({c['dataset'] for c in full})} full sets in {len(full)} cells ({seeds({c['seed'] for c in full})}"
                        + (f"; {legacy} of them runs of the earlier 64-px suite, profiled again" if legacy else "") + ")")
        parts.append(f"{size} px: " + " and ".join(bits))
    return f"{len(cells)} cells from {len({c['dataset'] for c in cells})} datasets; " + "; ".join(parts)


def target_check(summary: dict, chosen: str, sizes: list[int]) -> list[str]:
    """Per input size, which of the issue's targets the chosen policy meets and which it misses, with the numbers."""
    out = []
    for size in sizes:
        table = summary.get(f"{size} px, all cells") or {}
        s = table.get(chosen)
        if not s:
            continue
        met, missed = [], []
        for key, label, fmt, ok in (("mean_regret", "mean regret", "{:.2f}", lambda v, t: v <= t),
                                    ("max_regret", "max regret", "{:.2f}", lambda v, t: v <= t),
                                    ("tied_share", "tied", "{:.0%}", lambda v, t: v >= t),
                                    ("time_ratio", "time", "{:.1f}x", lambda v, t: v <= t)):
            (met if ok(s[key], TARGETS[key]) else missed).append(f"{label} {fmt.format(s[key])}")
        rivals = [n for n in BASELINES if table.get(n) and table[n]["mean_regret"] <= s["mean_regret"]]
        closest = min((n for n in BASELINES if table.get(n)), key=lambda n: table[n]["mean_regret"])
        margin = table[closest]["mean_regret"] - s["mean_regret"]
        (missed if rivals or margin < 0.05 else met).append(
            f"better than every fixed baseline ({closest} {table[closest]['mean_regret']:.2f})")
        out.append(f"{size} px ({s['cells']} cells): met " + (", ".join(met) or "none") + "; missed "
                   + (", ".join(missed) or "none"))
    return out


def update_readme(path: Path, cells: list[dict], summary: dict, fsum: dict, tsum: dict, noise: dict, chosen: str,
                  trade: list[dict], command: str, evidence_text: str = "") -> None:
    """Rewrite the README's block between the policy-readme markers: the record, the table, the targets, the forecast."""
    start, end = "<!-- policy-readme -->", "<!-- /policy-readme -->"
    text = path.read_text()
    if start not in text:
        return
    sizes = sorted({c["input_size"] for c in cells})
    table = summary["all cells, every size"]
    lines = [start, "", f"The shipped policy, **{chosen}**, is the one `{command}` ranks first among the policies on the "
             f"track record (`docs/records/`: {describe_cells(cells)}; 8-epoch cap; 2 CPU cores), each cell decided by "
             "models fitted on the *other* datasets only (regret in accuracy points behind the best strategy; *tied*: the "
             "chosen strategy's paired 95 % interval behind the best reaches 0; *time*: its wall time over the cheapest "
             "strategy tied with the best):", "", "| policy | mean regret | max regret | tied with best | time |",
             "|---|---|---|---|---|"]
    lines += [f"| {n} | {v['mean_regret']:.2f} | {v['max_regret']:.2f} | {v['tied_share']:.0%} | {v['time_ratio']:.2f}x |"
              for n, v in table.items() if v]
    lines += ["", "Targets (issue 23, at each input size): mean regret <= 1.0, max <= 3.0, tied >= 90 %, better than every "
              "fixed baseline (by 0.05 points or more), time <= 2x. " + "; ".join(target_check(summary, chosen, sizes)) + "."]
    for label in [k for k in summary if "full sets" in k or "k-shot" in k]:
        v = summary[label].get(chosen)
        if v:
            lines[-1] += f" {label[0].upper()}{label[1:]}: mean {v['mean_regret']:.2f}, max {v['max_regret']:.2f}, tied {v['tied_share']:.0%}."
    if trade:
        picks = [t for t in trade if t["margin_points"] in (1.0, 3.0)]
        lines += ["", "What a looser tie would trade, out of sample (the cheapest strategy forecast within a margin of the "
                  "best): " + "; ".join(f"within {t['margin_points']:g} point{'s' if t['margin_points'] != 1 else ''}: mean "
                                        f"regret {t['mean_regret']:.2f} for {t['time_ratio']:.1f}x" for t in picks)
                  + (". No margin meets both the regret and the time target: the forecast cannot yet tell a tied probe "
                     "from one that loses." if not any(t["mean_regret"] <= TARGETS["mean_regret"]
                                                       and t["time_ratio"] <= TARGETS["time_ratio"] for t in trade) else ".")]
    if noise:
        sds = [v["mean_sd_points"] for v in noise.values()]
        lines += ["", f"The noise floor, seed to seed on the same setting: {min(sds):.1f}-{max(sds):.1f} points (standard "
                  f"deviation) per strategy over {max(v['cells'] for v in noise.values())} groups."]
    if evidence_text:
        lines += ["", evidence_text]
    flines = []
    for key, f in fsum.items():
        if f:
            name = f"{key} px" if key.isdigit() else key
            flines.append(f"{name}: {f['within_2_points']:.0%} of {f['pairs']} pairs within 2 points (noise floor "
                          f"{f['noise_floor_within_2']:.0%}), 80 % intervals covering {f['coverage_80']:.0%}")
    if flines:
        lines += ["", "The forecast, out of sample on the same cells (targets: 70 % within 2 points, coverage 70-90 %): "
                  + "; ".join(flines) + "."]
    if tsum:
        lines[-1] += (f" Wall time within +-30 %: {tsum['within_30_percent']:.0%} of {tsum['runs']} runs "
                      f"({tsum['with_feedback_within_30_percent']:.0%} with the correction finished runs of the same kind feed back; target 80 %)."
                      + current_timing_text(tsum))
    lines += ["", end]
    before, rest = text.split(start, 1)
    path.write_text(before + "\n".join(lines) + rest.split(end, 1)[1])


def update_forecast_error(path: Path, fsum: dict, tsum: dict, errors: list[dict], command: str) -> None:
    """Rewrite the block between the forecast-records markers of docs/forecast_error.md from this run."""
    start, end = "<!-- forecast-records -->", "<!-- /forecast-records -->"
    text = path.read_text()
    if start not in text:
        return
    lines = [start, "", f"Out of sample on the track record (`{command}`): every cell forecast by models fitted on "
             "the other datasets only. Targets (issue 23): |error| <= 2 points for >= 70 % of (cell, strategy) pairs, "
             "80 % intervals covering 70-90 %, wall time within +-30 % for >= 80 % of runs. The noise floor is the share a "
             "perfect forecast would reach, given only each validation split's binomial noise.", "",
             "| cells | pairs | within 2 points | noise floor | 80 % coverage | mean abs error (points) |", "|---|---|---|---|---|---|"]
    for k, v in fsum.items():
        if v:
            lines.append(f"| {k + ' px' if k.isdigit() else k} | {v['pairs']} | {v['within_2_points']:.0%} | "
                         f"{v['noise_floor_within_2']:.0%} | {v['coverage_80']:.0%} | {v['mean_abs_error_points']:.2f} |")
    by_k: dict = defaultdict(list)
    for e in errors:
        by_k["all" if e["k"] is None else e["k"]].append(abs(e["forecast"] - e["achieved"]))
    lines += ["", "By training images per class (k-shot subsamples; *all*: full sets): " + ", ".join(
        f"k={k}: mean |error| {100 * statistics.fmean(v):.1f} points over {len(v)}" for k, v in
        sorted(by_k.items(), key=lambda kv: (kv[0] == "all", kv[0] if kv[0] != "all" else 0))) + ". A probe CV on a "
        "handful of images is itself that noisy; the probes' intervals widen to its binomial spread."]
    if tsum:
        lines.append(f"Wall time: {tsum['within_30_percent']:.0%} of {tsum['runs']} runs within +-30 % (median achieved/"
                     f"forecast {tsum['median_achieved_over_forecast']:.2f}); {tsum['with_feedback_within_30_percent']:.0%} "
                     "with the correction finished runs of the same kind feed back on a user's machine." + current_timing_text(tsum))
    lines += ["", end]
    before, rest = text.split(start, 1)
    path.write_text(before + "\n".join(lines) + rest.split(end, 1)[1])


def forecast_on(paths: list[Path]) -> dict:
    """The shipped forecaster on cells it never saw (say, a GPU run): its references leave each cell's dataset out."""
    from advisor.decide.records import shipped_track_record

    shipped = shipped_track_record()
    errors = []
    for c in load_cells(paths):
        fc = cell_forecast(c, [r for r in shipped if r["dataset"] != c["dataset"]])
        for f in fc.strategies:
            achieved = c["strategies"][f.strategy]["accuracy"]
            errors.append({"dataset": c["dataset"], "input_size": c["input_size"], "strategy": f.strategy, "forecast": f.accuracy,
                           "low": f.low, "high": f.high, "achieved": achieved, "n_val": c["n_val"],
                           "extrapolating": "; ".join(fc.extrapolating)})
            print(f"{c['dataset']:14s} {c['input_size']} px {f.strategy:17s} forecast {f.accuracy:.3f} "
                  f"[{f.low:.3f}, {f.high:.3f}] achieved {achieved:.3f}", flush=True)
    summary = forecast_summary(errors)
    if summary:
        print(f"within 2 points {summary['within_2_points']:.0%} (noise floor {summary['noise_floor_within_2']:.0%}), "
              f"80 % coverage {summary['coverage_80']:.0%}, mean |error| {summary['mean_abs_error_points']:.2f} points")
    return {"summary": summary, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", default=[str(ROOT / "docs" / "records" / "cpu.jsonl")])
    ap.add_argument("--out", default=str(ROOT / "docs" / "policy"))
    ap.add_argument("--forecast-on", nargs="*", default=None, help="score the shipped forecaster on these cells and stop")
    ap.add_argument("--update-docs", action="store_true", help="rewrite the generated blocks of docs/decision-rules.md, docs/forecast_error.md and README.md")
    ap.add_argument("--suites", action="store_true", help="also write OUT's folder/suite_cpu{size}_cap8.md for the full sets")
    ap.add_argument("--cv-at-size", default=None, metavar="FILE",
                    help="a study: the profile's probe CV at each cell's own input size from FILE (profile_cv.py "
                         "--at-input-size) in place of the 224-px one; prints the evaluation, writes nothing")
    args = ap.parse_args()
    if args.forecast_on:
        forecast_on([Path(p) for p in args.forecast_on])
        return
    if args.cv_at_size:
        if args.update_docs or args.suites:
            sys.exit("--cv-at-size is a study: it writes nothing, so drop --update-docs and --suites")
        from records import add_profile_cv_at_size

        cells = read_cells([Path(p) for p in args.records])
        print(f"{add_profile_cv_at_size(cells, Path(args.cv_at_size))} cells below 224 px take the CV at their own size")
        for c in cells:
            c["profile_model"] = DatasetProfile.model_validate(c["profile"])
    else:
        cells = load_cells([Path(p) for p in args.records])
    if len({c["dataset"] for c in cells}) < 4:
        sys.exit(f"{len(cells)} complete cells from {len({c['dataset'] for c in cells})} datasets: at least 4 datasets needed")
    _, errors, rows = evaluate(cells)
    sizes = sorted({r["input_size"] for r in rows})
    summary = {}
    for label, subset in [*[(f"{s} px, all cells", [r for r in rows if r["input_size"] == s]) for s in sizes],
                          *[(f"{s} px, k-shot cells", [r for r in rows if r["input_size"] == s and r["k"]]) for s in sizes],
                          *[(f"{s} px, full sets", [r for r in rows if r["input_size"] == s and not r["k"]]) for s in sizes]]:
        if subset:
            summary[label] = {name: summarise(subset, name) for name in POLICIES + BASELINES}
    fsum = {str(s): forecast_summary([e for e in errors if e["input_size"] == s]) for s in sizes}
    fsum["finetunes only"] = forecast_summary([e for e in errors if e["strategy"] in FINETUNES])
    # Where the miss lies: a probe CV on 2-10 images per class is itself as noisy as the error it causes.
    for s in sizes:
        few = [e for e in errors if e["input_size"] == s and e["k"] is not None and e["k"] <= 10]
        if few:
            fsum[f"{s} px, 2-10 per class"] = forecast_summary(few)
            fsum[f"{s} px, 20+ per class"] = forecast_summary([e for e in errors if e["input_size"] == s and e not in few])
    noise = noise_floor(cells)
    tsum = time_summary(cells)
    out = Path(tempfile.mkdtemp(prefix="policy-study-")) / "policy" if args.cv_at_size else Path(args.out)
    names = [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(ROOT) else p for p in args.records]
    command = "python benchmarks/policy.py --records " + " ".join(names)
    chosen = winner(rows)
    summary["all cells, every size"] = {name: summarise(rows, name) for name in POLICIES + BASELINES}
    trade = tradeoff(rows)
    floor = regret_floor(cells, rows, chosen)
    overall = summary["all cells, every size"]
    rival = min((n for n in BASELINES if overall.get(n)), key=lambda n: overall[n]["mean_regret"])
    diff = regret_difference(rows, chosen, rival)
    nested = nested_per_setting(cells, rows)
    evidence_text = " ".join(t for t in (regret_difference_text(diff), regret_floor_text(floor, chosen), nested_text(nested)) if t)
    out.with_suffix(".json").write_text(json.dumps({"winner": chosen, "summary": summary, "forecast": fsum, "tradeoff": trade,
                                                    "noise_floor": noise, "regret_floor": floor, "against_closest_baseline": diff, "per_setting_nested": nested, "time": tsum, "rows": rows, "forecast_errors": errors}, indent=1))
    out.with_suffix(".md").write_text(f"The policy with the lowest mean regret over every cell: **{chosen}**.\n\n"
                                      + markdown(summary, fsum, noise, rows, command, tsum, evidence_text))
    kshot_figure(cells, out.parent / f"{out.name}-kshot.svg")
    if args.update_docs:
        update_decision_rules(ROOT / "docs" / "decision-rules.md", summary, fsum, tsum, noise, chosen, len(cells), command, trade,
                              evidence_text)
        update_forecast_error(ROOT / "docs" / "forecast_error.md", fsum, tsum, errors, command)
        update_readme(ROOT / "README.md", cells, summary, fsum, tsum, noise, chosen, trade, command, evidence_text)
        # the shipped track record the forecaster learns from, from the same records: one command re-derives it all
        from track_record import OUT, from_records

        OUT.write_text(json.dumps(from_records([Path(p) for p in args.records], names), indent=1) + "\n")
    if args.suites:
        for size in sorted({c["input_size"] for c in cells if not c.get("k")}):  # sizes with full-set cells
            (out.parent / f"suite_cpu{size}_cap8.md").write_text(suite_markdown(cells, rows, chosen, size, command))
    for label, table in summary.items():
        print(label)
        for name, s in table.items():
            if s:
                print(f"  {name:22s} mean {s['mean_regret']:5.2f} max {s['max_regret']:5.2f} tied {s['tied_share']:.0%} "
                      f"time {s['time_ratio']:.2f}x")
    print(f"winner: {chosen}")
    print("  " + nested_text(nested))
    print("  " + regret_difference_text(diff))
    for size, f in floor.items():
        print(f"  regret floor {size} px ({f['cells']} cells): mean {f['floor_mean']:.2f} max {f['floor_max']:.2f}; "
              f"{chosen} there: mean {f['policy_mean']:.2f} max {f['policy_max']:.2f}")
    for t in trade:
        print(f"  margin {t['margin_points']:4g} points: mean {t['mean_regret']:5.2f} max {t['max_regret']:5.2f} "
              f"tied {t['tied_share']:.0%} time {t['time_ratio']:.2f}x probes {t['probe_share']:.0%}")
    if tsum:
        print(f"time: {tsum['within_30_percent']:.0%} of {tsum['runs']} runs within 30 % (median achieved/forecast "
              f"{tsum['median_achieved_over_forecast']:.2f}); with the finished-run feedback "
              f"{tsum['with_feedback_within_30_percent']:.0%}" + current_timing_text(tsum))
    for size, f in fsum.items():
        if f:
            print(f"forecast {size}: within 2 points {f['within_2_points']:.0%} (noise floor {f['noise_floor_within_2']:.0%}), "
                  f"80 % coverage {f['coverage_80']:.0%}")


if __name__ == "__main__":
    main()
