"""Set the rule thresholds from measured outcomes, and check the result on data it did not see.

    python benchmarks/calibrate.py [--suite docs/suite_gpu_before.json] [--sweeps docs/sweeps_gpu.json]
        [--out docs/calibration]

Inputs are what ``benchmarks/suite.py`` (every strategy's accuracy and the dataset profile) and
``benchmarks/sweeps.py`` (per-tap probes, fine-tune depths, training-set sizes) measured. The
rules, in words:

1. **Taps to sweep.** The layer probe sweeps, counted from the deepest stage, every stage tap
   that came within ``TAP_MARGIN`` accuracy points of the best single tap on at least one dataset.
2. **Fine-tune depth.** A partial fine-tune freezes the share of stages whose fine-tunes had the
   highest mean validation accuracy over the depth sweeps (ties: more frozen, which is cheaper).
3. **Size and similarity boundaries.** ``similarity``, ``large_per_class`` and ``large_total``
   take the values that minimise the mean regret over the suite's datasets and the size sweep's
   subsets (each a data point with its own measured accuracies). Candidates are the midpoints
   between measured values. Among equally good candidates the one closest to the provisional
   values wins (sum of |log ratio|): a threshold moves only as far as the measurements demand.

4. **Budget.** ``min_schedule_fraction`` (R15, R16) is cut, among the suite rows run under an
   epoch cap, between the shares of the schedule at which a capped fine-tune lost to the better
   probe and those at which it beat it (fewest misplaced, ties nearest the provisional value).
   The cut never goes below the smallest share measured: below it the evidence was mixed (5 of
   30 epochs at 128 px: fine-tunes tied or lost to the probe, docs/finetune.md).

Check: leave one dataset (and its subsets) out, calibrate on the rest, score the one left out.
Writes OUT.json and OUT.md; ``tests/test_calibration.py`` checks that the shipped defaults of
:class:`advisor.decide.rules.Thresholds` are what this script derives from the shipped measurements.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

from advisor.backbones import PRE_LOGITS, TapInfo
from advisor.decide.recipe import finetune_schedule
from advisor.decide.rules import Thresholds, recommend
from advisor.measure.models import DatasetProfile

TAP_MARGIN = 0.02
PROVISIONAL = Thresholds(similarity=0.5, large_per_class=200, large_total=1000, probe_stages=3, frozen_fraction=0.6,
                         min_schedule_fraction=0.5)
CALIBRATED = ("similarity", "large_per_class", "large_total", "probe_stages", "frozen_fraction", "min_schedule_fraction")
# EfficientNet-Lite0's taps: calibration only needs their names and order.
TAPS = tuple(TapInfo(name=n, channels=1) for n in ["stage1", "stage2", "stage3", "stage4", "stage5", PRE_LOGITS])


def calibrate_probe_stages(sweeps: dict, *, margin: float = TAP_MARGIN) -> tuple[int, list[str]]:
    """Rule 1: (stages to sweep, the reason per dataset)."""
    deepest_needed, notes = 1, []
    for name, entry in sweeps.items():
        rows = entry.get("taps")
        if not rows:
            continue
        stages = [r for r in rows if r["tap"] != PRE_LOGITS]
        best = max(r["val_accuracy"] for r in rows)
        close = [i for i, r in enumerate(stages) if r["val_accuracy"] >= best - margin - 1e-9]
        if close:
            deepest_needed = max(deepest_needed, len(stages) - min(close))
        notes.append(f"{name}: best tap {max(rows, key=lambda r: r['val_accuracy'])['tap']} ({best:.3f}); within "
                     f"{100 * margin:.0f} points: {', '.join(stages[i]['tap'] for i in close) or 'no stage'}")
    return deepest_needed, notes


def calibrate_frozen_fraction(sweeps: dict) -> tuple[float, dict[int, float]]:
    """Rule 2: (frozen share, mean accuracy per number of frozen stages)."""
    by_frozen: dict[int, list[float]] = {}
    stages = None
    for entry in sweeps.values():
        rows = [r for r in entry.get("depths") or [] if r["frozen_stages"] is not None]
        if rows:
            stages = rows[0]["stages"]
            for r in rows:
                by_frozen.setdefault(r["frozen_stages"], []).append(r["val_accuracy"])
    if not by_frozen or stages is None:
        return PROVISIONAL.frozen_fraction, {}
    n = min(len(v) for v in by_frozen.values())
    means = {f: sum(v) / len(v) for f, v in by_frozen.items() if len(v) == n}
    best = max(means, key=lambda f: (round(means[f], 9), f))
    return best / stages, means


def _subset_profile(profile: DatasetProfile, per_class: int) -> DatasetProfile:
    counts = {c: min(per_class, n) for c, n in profile.train_per_class.items()}
    values = sorted(counts.values())
    mid = len(values) // 2
    median = float(values[mid]) if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return profile.model_copy(update={
        "train_per_class": counts, "train_images": sum(values), "train_per_class_min": values[0],
        "train_per_class_median": median, "imbalance_ratio": values[-1] / max(1, values[0]),
    })


def data_points(suite: list[dict], sweeps: dict, *, size_subsets: bool = True) -> list[dict]:
    """One point per suite dataset and (unless ``size_subsets`` is off) per size-sweep subset.

    Each point has its profile, measured accuracies and the epoch cap its fine-tunes ran under.
    Turn ``size_subsets`` off when the sweeps were measured under another recipe than the suite.
    """
    points = []
    for row in suite:
        profile = DatasetProfile.model_validate(row["profile"])
        points.append({"dataset": row["dataset"], "group": row["dataset"], "profile": profile, "accuracy": row["accuracy"],
                       "epochs_cap": row.get("epochs_cap")})
        for sub in ((sweeps.get(row["dataset"]) or {}).get("sizes") or []) if size_subsets else []:
            if sub["per_class"] >= profile.train_per_class_median:
                continue
            points.append({"dataset": f"{row['dataset']}@{sub['per_class']}/class", "group": row["dataset"],
                           "profile": _subset_profile(profile, sub["per_class"]), "accuracy": sub["accuracy"],
                           "epochs_cap": None})
    return points


def strategy_for(point: dict, t: Thresholds) -> str:
    return recommend(point["profile"], taps=TAPS, thresholds=t, epochs_cap=point.get("epochs_cap")).strategy


def schedule_share(point: dict) -> float | None:
    """The share of its fine-tune schedule a capped point ran, or None when it ran the whole schedule."""
    cap = point.get("epochs_cap")
    if cap is None or point["profile"].train_images < 1:
        return None
    epochs = finetune_schedule(point["profile"].train_images)[1]
    return cap / epochs if cap < epochs else None


def regret(point: dict, t: Thresholds) -> float:
    acc = point["accuracy"]
    return 100 * (max(acc.values()) - acc[strategy_for(point, t)])


def _midpoints(values: Sequence[float], *, geometric: bool, lowest_measured: bool = False) -> list[float]:
    """Cut candidates: the midpoints between measured values and one beyond each end.

    With ``lowest_measured`` the low end is the smallest measured value itself, so that a cut
    ``value >= t`` never reaches below what was measured.
    """
    v = sorted(set(values))
    mids = [math.sqrt(a * b) if geometric else (a + b) / 2 for a, b in itertools.pairwise(v)]
    lo, hi = (v[0] / 2, v[-1] * 2) if geometric else (max(0.0, v[0] - 0.05), min(1.0, v[-1] + 0.05))
    return [v[0] if lowest_measured else lo, *mids, hi]


def _threshold(points: list[tuple[float, bool]], candidates: Sequence[float], provisional: float) -> tuple[float, int]:
    """The cut ``value >= t`` that misplaces the fewest points; ties to the candidate nearest ``provisional``."""
    def key(t: float) -> tuple[int, float]:
        errors = sum((v >= t) != positive for v, positive in points)
        return errors, abs(math.log(max(t, 1e-6) / provisional))
    best = min(candidates, key=key)
    return best, key(best)[0]


def _probe_best(acc: dict) -> float:
    return max(acc.get("linear-probe", -1.0), acc.get("layer-probe", -1.0))


def _finetune_best(acc: dict) -> float:
    return max(acc.get("partial-finetune", -1.0), acc.get("full-finetune", -1.0))


def calibrate_boundaries(points: list[dict], base: Thresholds) -> tuple[Thresholds, dict]:
    """Rule 3: each axis of the table is cut where its own decision changed in the measurements.

    * similarity decides top layer vs earlier layers: a point is 'different' when the layer
      probe beat the linear probe on it;
    * size decides probe vs fine-tune: a point is 'large' when the better fine-tune beat the
      better probe on it; the per-class cut comes first, then the total, among points above it.
    """
    sim_pts = [(p["profile"].similarity.score.value, p["accuracy"]["linear-probe"] >= p["accuracy"]["layer-probe"])
               for p in points if p["profile"].similarity and {"linear-probe", "layer-probe"} <= p["accuracy"].keys()]
    size_pts = [(p, _finetune_best(p["accuracy"]) > _probe_best(p["accuracy"])) for p in points]
    # The provisional value is a candidate too: on a tie it stays.
    sim, sim_err = _threshold(sim_pts, [*_midpoints([v for v, _ in sim_pts], geometric=False), PROVISIONAL.similarity],
                              PROVISIONAL.similarity)
    per_class = [(p["profile"].train_per_class_median, large) for p, large in size_pts]
    pc, pc_err = _threshold(per_class, [*_midpoints([v for v, _ in per_class], geometric=True), PROVISIONAL.large_per_class],
                            PROVISIONAL.large_per_class)
    pc = float(round(pc))
    above = [(p["profile"].train_images, large) for p, large in size_pts if p["profile"].train_per_class_median >= pc]
    totals = [p["profile"].train_images for p, _ in size_pts]
    tot, tot_err = _threshold(above, [*_midpoints(totals, geometric=True), PROVISIONAL.large_total],
                              PROVISIONAL.large_total) if above else (
        PROVISIONAL.large_total, 0)
    t = base.model_copy(update={"similarity": round(sim, 3), "large_per_class": pc, "large_total": int(round(tot))})
    evidence = {
        "similarity": {"points": len(sim_pts), "misplaced": sim_err,
                       "different": sorted(p["dataset"] for p in points if p["profile"].similarity
                                           and p["accuracy"].get("layer-probe", 0) > p["accuracy"].get("linear-probe", 0))},
        "size": {"points": len(size_pts), "misplaced_by_per_class": pc_err, "misplaced_by_total": tot_err,
                 "large": sorted(p["dataset"] for p, large in size_pts if large)},
    }
    return t, evidence


def calibrate_budget(points: list[dict], base: Thresholds) -> tuple[Thresholds, dict]:
    """Rule 4: the least share of its schedule at which a capped fine-tune may still run (R15, R16).

    A capped point counts as 'enough' when its better fine-tune beat the better probe under the cap.
    """
    pts = [(share, _finetune_best(p["accuracy"]) > _probe_best(p["accuracy"]))
           for p in points if (share := schedule_share(p)) is not None
           and {"partial-finetune", "full-finetune"} & p["accuracy"].keys()]
    if not pts:
        return base, {"points": 0, "misplaced": 0, "won": [], "lost": []}
    cut, errors = _threshold(pts, [*_midpoints([v for v, _ in pts], geometric=False, lowest_measured=True),
                                   PROVISIONAL.min_schedule_fraction], PROVISIONAL.min_schedule_fraction)
    cut = math.floor(cut * 100) / 100  # two decimals, rounded down so the measured shares stay on the allowed side
    evidence = {"points": len(pts), "misplaced": errors,
                "won": sorted(round(v, 3) for v, won in pts if won), "lost": sorted(round(v, 3) for v, won in pts if not won)}
    return base.model_copy(update={"min_schedule_fraction": cut}), evidence


def budget_report(points: list[dict], calibrated: Thresholds) -> dict:
    """Regret on the capped suite under the thresholds before rule 4 moved, after, and with rule 4 held out."""
    before = calibrated.model_copy(update={"min_schedule_fraction": PROVISIONAL.min_schedule_fraction})
    rows = []
    for p in points:
        rest = [q for q in points if q["group"] != p["group"]]
        held, _ = calibrate_budget(rest, calibrated)
        rows.append({"dataset": p["dataset"], "share": round(schedule_share(p) or 1.0, 3),
                     "best": max(p["accuracy"], key=p["accuracy"].get),
                     **{label: {"strategy": strategy_for(p, t), "regret": round(regret(p, t), 3)}
                        for label, t in (("before", before), ("after", calibrated), ("held_out", held))}})
    return {"rows": rows}


def _fit(points: list[dict], base: Thresholds) -> tuple[Thresholds, dict]:
    """Rules 3 and 4 on these points."""
    t, evidence = calibrate_boundaries(points, base)
    t, evidence["budget"] = calibrate_budget(points, t)
    return t, evidence


def joint_grid(points: list[dict], base: Thresholds) -> tuple[Thresholds, float]:
    """The alternative this script rejects: all three boundaries searched jointly for least mean regret."""
    sims = [p["profile"].similarity.score.value for p in points if p["profile"].similarity]
    sim_c = sorted({*_midpoints(sims, geometric=False), PROVISIONAL.similarity})
    pc_c = sorted({*_midpoints([p["profile"].train_per_class_median for p in points], geometric=True),
                   PROVISIONAL.large_per_class})
    tot_c = sorted({*_midpoints([p["profile"].train_images for p in points], geometric=True), PROVISIONAL.large_total})
    best, best_key = base, None
    for s, pc, tot in itertools.product(sim_c, pc_c, tot_c):
        t = base.model_copy(update={"similarity": round(s, 3), "large_per_class": round(pc, 1), "large_total": int(round(tot))})
        mean = sum(regret(p, t) for p in points) / len(points)
        dist = (abs(math.log(max(s, 1e-3) / PROVISIONAL.similarity)) + abs(math.log(pc / PROVISIONAL.large_per_class))
                + abs(math.log(max(tot, 1) / PROVISIONAL.large_total)))
        key = (round(mean, 6), dist)
        if best_key is None or key < best_key:
            best, best_key = t, key
    return best, best_key[0] if best_key else math.nan


def calibrate(suite: list[dict], sweeps: dict, *, size_subsets: bool = True, budget_suite: list[dict] | None = None) -> dict:
    """Rules 1-4 on the measurements; ``budget_suite`` (capped runs of another suite) sets rule 4 alone."""
    probe_stages, tap_notes = calibrate_probe_stages(sweeps)
    frozen_fraction, depth_means = calibrate_frozen_fraction(sweeps)
    base = PROVISIONAL.model_copy(update={"probe_stages": probe_stages, "frozen_fraction": round(frozen_fraction, 3)})
    points = data_points(suite, sweeps, size_subsets=size_subsets)
    calibrated, evidence = _fit(points, base)
    budget = None
    if budget_suite is not None:
        budget_points = data_points(budget_suite, {}, size_subsets=False)
        calibrated, evidence["budget"] = calibrate_budget(budget_points, calibrated)
        budget = budget_report(budget_points, calibrated)
    grid, grid_mean = joint_grid(points, base)
    grid_lodo = {}
    held_out = {}
    for group in dict.fromkeys(p["group"] for p in points):
        rest = [p for p in points if p["group"] != group]
        fit, _ = _fit(rest, base)
        gfit, _ = joint_grid(rest, base)
        grid_lodo[group] = {p["dataset"]: round(regret(p, gfit), 3) for p in points if p["group"] == group}
        held_out[group] = {"thresholds": {k: getattr(fit, k) for k in
                                          ("similarity", "large_per_class", "large_total", "min_schedule_fraction")},
                           "points": {p["dataset"]: {"strategy": strategy_for(p, fit), "regret": round(regret(p, fit), 3)}
                                      for p in points if p["group"] == group}}
    rows = []
    for p in points:
        lodo = held_out[p["group"]]["points"][p["dataset"]]
        rows.append({
            "dataset": p["dataset"], "suite": p["dataset"] == p["group"],
            "train_per_class_median": p["profile"].train_per_class_median, "train_images": p["profile"].train_images,
            "similarity": p["profile"].similarity.score.value if p["profile"].similarity else None,
            "best": max(p["accuracy"], key=p["accuracy"].get), "accuracy": p["accuracy"],
            "before": {"strategy": strategy_for(p, PROVISIONAL), "regret": round(regret(p, PROVISIONAL), 3)},
            "after": {"strategy": strategy_for(p, calibrated), "regret": round(regret(p, calibrated), 3)},
            "held_out": lodo,
        })
    return {
        "budget_suite": budget,
        "thresholds": {k: getattr(calibrated, k) for k in CALIBRATED},
        "provisional": {k: getattr(PROVISIONAL, k) for k in CALIBRATED},
        "tap_notes": tap_notes, "depth_mean_accuracy": {str(k): round(v, 4) for k, v in sorted(depth_means.items())},
        "evidence": evidence, "rows": rows, "held_out": held_out,
        "joint_grid": {
            "thresholds": {k: getattr(grid, k) for k in ("similarity", "large_per_class", "large_total")},
            "mean_regret_all_points": round(grid_mean, 3),
            "suite_regret": {p["dataset"]: round(regret(p, grid), 3) for p in points if p["dataset"] == p["group"]},
            "held_out_regret": {g: v[g] for g, v in grid_lodo.items()},
        },
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def markdown(result: dict) -> str:
    t, p = result["thresholds"], result["provisional"]
    lines = ["| threshold | provisional | calibrated |", "|---|---|---|"]
    lines += [f"| `{k}` | {p[k]} | {t[k]} |" for k in t]
    lines += ["", "| data point | per class (total) | similarity | best | before: strategy | regret | after: strategy | regret "
              "| held out: strategy | regret |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sim = f"{r['similarity']:.3f}" if r["similarity"] is not None else "n/a"
        lines.append(f"| {r['dataset']} | {r['train_per_class_median']:.0f} ({r['train_images']}) | {sim} | {r['best']} | "
                     f"{r['before']['strategy']} | {r['before']['regret']:.2f} | {r['after']['strategy']} | "
                     f"{r['after']['regret']:.2f} | {r['held_out']['strategy']} | {r['held_out']['regret']:.2f} |")
    suite = [r for r in result["rows"] if r["suite"]]
    lines.append("")
    for label, key in (("before", "before"), ("after", "after"), ("held out", "held_out")):
        vals = [r[key]["regret"] for r in suite]
        lines.append(f"{label}: suite mean regret {_mean(vals):.2f} points, max {max(vals):.2f}")
    ev = result["evidence"]
    lines += ["", f"similarity (rule 3): the layer probe beat the linear probe on {', '.join(ev['similarity']['different'])}; "
                  f"the cut misplaces {ev['similarity']['misplaced']} of {ev['similarity']['points']} points",
              f"size (rule 3): a fine-tune beat both probes on {', '.join(ev['size']['large'])}; the per-class cut "
              f"misplaces {ev['size']['misplaced_by_per_class']} of {ev['size']['points']} points"]
    budget = ev.get("budget") or {}
    if budget.get("points"):
        lines.append(f"budget (rule 4): capped fine-tunes beat both probes at schedule shares {budget['won'] or 'none'} "
                     f"and lost at {budget['lost'] or 'none'}; the cut misplaces {budget['misplaced']} of "
                     f"{budget['points']} points")
    if result.get("budget_suite"):
        lines += ["", "budget suite (rule 4 alone; size and similarity as above). R15/R16 are retired, so the rule table "
                  "itself no longer changes strategy under a cap and the columns agree; `min_schedule_fraction` now "
                  "marks where the forecast credits a capped fine-tune no gain:", "",
                  "| dataset | share of schedule | best | before: strategy | regret | after: strategy | regret "
                  "| held out: strategy | regret |", "|---|---|---|---|---|---|---|---|---|"]
        brows = result["budget_suite"]["rows"]
        for r in brows:
            lines.append(f"| {r['dataset']} | {r['share']:.2f} | {r['best']} | {r['before']['strategy']} | "
                         f"{r['before']['regret']:.2f} | {r['after']['strategy']} | {r['after']['regret']:.2f} | "
                         f"{r['held_out']['strategy']} | {r['held_out']['regret']:.2f} |")
        lines.append("")
        for label in ("before", "after", "held_out"):
            vals = [r[label]["regret"] for r in brows]
            lines.append(f"budget suite, {label.replace('_', ' ')}: mean regret {_mean(vals):.2f} points, max {max(vals):.2f}")
    g = result["joint_grid"]
    gs = list(g["suite_regret"].values())
    gh = list(g["held_out_regret"].values())
    lines += ["", f"rejected alternative, a joint least-regret grid: {g['thresholds']}, suite mean regret {_mean(gs):.2f}, "
                  f"held out {_mean(gh):.2f} (max {max(gh):.2f})"]
    lines += ["", "taps (rule 1): " + "; ".join(result["tap_notes"])]
    if result["depth_mean_accuracy"]:
        lines.append("depth (rule 2), mean validation accuracy by frozen stages: "
                     + ", ".join(f"{k}: {v:.3f}" for k, v in result["depth_mean_accuracy"].items()))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="docs/suite_gpu_before.json", help="a suite run under the provisional thresholds")
    ap.add_argument("--sweeps", default="docs/sweeps_gpu.json")
    ap.add_argument("--out", default="docs/calibration")
    ap.add_argument("--no-size-subsets", action="store_true",
                    help="use the sweeps for taps and depth only (when they were measured under another recipe)")
    ap.add_argument("--budget-suite", default=None,
                    help="a suite run under an epoch cap: sets min_schedule_fraction (rule 4) alone")
    args = ap.parse_args()
    result = calibrate(json.loads(Path(args.suite).read_text()), json.loads(Path(args.sweeps).read_text()),
                       size_subsets=not args.no_size_subsets,
                       budget_suite=json.loads(Path(args.budget_suite).read_text()) if args.budget_suite else None)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
