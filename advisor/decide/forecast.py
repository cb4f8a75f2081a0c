"""What each strategy should score and cost, before anything is trained.

* **Probes** are measured, not guessed: the cross-validated accuracy of a logistic probe on the
  profiling sample's cached features (``pre_logits`` for the linear probe; the best single tap
  for the layer probe), corrected by how far validation accuracy fell from that CV accuracy in
  the track record, regressed on the detail the run's input size loses against the profile's
  (octaves, from the images' own size: 64 px costs photos, not 28-px digits) and on how much
  the run's extra images per class over a CV fold's should lift it along a learning curve
  (fold^-1/2 - run^-1/2: 1 to 2 images per class lifts far more than 40 to 50). A 224-px CV on
  a sample says little about a 64-px run on the whole split without both.
  Few-shot sets: a probe fitted on every training image and scored on the sample's validation
  images stands in for the CV (advisor/decide/probe_gap.py, where both shifts live).
* **Fine-tunes** are the better probe's forecast plus a gain learned from the track record
  (``advisor/reference/track_record.json``: every strategy at several sizes, k-shot subsamples
  included): the gain each recorded run measured, regressed on log images per class,
  similarity, input size and the share of its schedule the epoch cap kept (ridge).
* Both intervals (80 %) take the wider of the binomial spread of the validation split and the
  10th-90th percentiles of the models' leave-one-dataset-out residuals.
* **Where it stands:** settings outside what the record measured (input size, images per class,
  schedule share) are named ("extrapolating", with the nearest recorded setting). A dataset's
  own earlier runs on this machine are shown as "your earlier runs", and they and a reference
  of the same name are never evidence for its own forecast.
* **Time** is a few timed training steps on this device (at the run's own batch where a step is
  short) times the plan's schedule, corrected by
  what finished runs on this machine took against their forecast; probes cost one extraction
  pass (a few timed inference passes; nothing for features already cached) and a solve. The
  measuring lives in advisor/decide/timing.py.

``benchmarks/forecast_error.py`` measures the forecast against what the suite achieved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from advisor.data.decoded import store_off_reason
from advisor.decide.probe_gap import (PROBE_TAP, PROBES, _probe_rows, _xp, cv_gaps, cv_size_ratio, fit_probe_gap,
                                      learning_curve_term, probe_gap_spread, quantile, resolution_lost, ridge)
from advisor.decide.recipe import curve_images
from advisor.decide.records import (RECORD_INPUT_SIZE, group_of, load_track_record, local_datasets,
                                     local_outcomes, shipped_track_record)
from advisor.decide.timing import finite_number

FINETUNES = ("partial-finetune", "full-finetune")
Z80 = 1.2816  # two-sided 80 % normal quantile


class StrategyForecast(BaseModel):
    strategy: str
    accuracy: float
    low: float  # 80 % interval
    high: float
    method: str
    cv: float | None = None  # probes: the measured CV accuracy the forecast starts from
    seconds: float | None = None  # expected wall time of the whole run on this device
    seconds_per_epoch: float | None = None
    epochs: int | None = None
    time_source: str | None = None  # where the time figure comes from, in words
    # fine-tunes: the standard error of the gain over the probe alone (the probe's own error is shared
    # by both forecasts, so it cancels when the two are compared)
    gain_sd: float | None = None

    @property
    def sd(self) -> float:
        """The forecast's standard error, read off its 80 % interval."""
        return max(1e-4, (self.high - self.low) / (2 * Z80))


class Forecast(BaseModel):
    """Every strategy's expected accuracy (80 % interval) and wall time; which records it learned from."""

    strategies: list[StrategyForecast]
    records: list[str]  # the reference datasets the models were fitted on (one name per dataset)
    notes: list[str] = []
    # settings outside the track record, each with the nearest recorded one; empty: inside it
    extrapolating: list[str] = Field(default_factory=list)
    # this dataset's own earlier outcomes (strategy -> accuracy): shown, never counted as references
    earlier_runs: dict[str, float] = Field(default_factory=dict)
    input_size: int | None = None
    schedule_share: float | None = None


def _size_term(input_size: float | None) -> float:
    return math.log2((input_size or RECORD_INPUT_SIZE) / 128)


def _x(per_class: float, similarity: float | None, input_size: float | None = None, share: float | None = None) -> list[float]:
    """Gain-model features: intercept, log10 images per class, similarity, log2(input size / 128), schedule share."""
    return [1.0, math.log10(max(per_class, 1.0)), 0.5 if similarity is None else similarity, _size_term(input_size),
            1.0 if share is None else share]


def _xr(r: dict) -> list[float]:
    return _x(r["train_per_class_median"], r.get("similarity"), r.get("input_size"), r.get("schedule_share"))


def _best_probe(acc: dict) -> float:
    return max(acc.get(s, 0.0) for s in PROBES)


def fit_gain(records: Sequence[dict], strategy: str) -> list[float] | None:
    """Ridge coefficients of (fine-tune accuracy - best probe accuracy) on ``_x``; None without records."""
    rows = [r for r in records if strategy in r["accuracy"] and all(s in r["accuracy"] for s in PROBES)]
    if len({group_of(r) for r in rows}) < 3:
        return None
    return ridge([_xr(r) for r in rows], [r["accuracy"][strategy] - _best_probe(r["accuracy"]) for r in rows])


def predict_gain(coef: Sequence[float], per_class: float, similarity: float | None, input_size: float | None = None,
                 share: float | None = None) -> float:
    return sum(c * v for c, v in zip(coef, _x(per_class, similarity, input_size, share), strict=True))


def gain_residuals(records: Sequence[dict], strategy: str) -> list[float]:
    """Leave-one-dataset-out residuals (achieved - predicted gain) of :func:`fit_gain` (a dataset's subsamples leave together)."""
    out = []
    for g in sorted({group_of(r) for r in records}):
        rest = [q for q in records if group_of(q) != g]
        coef = fit_gain(rest, strategy)
        if coef is None:
            continue
        for r in records:
            if group_of(r) == g and strategy in r["accuracy"] and all(s in r["accuracy"] for s in PROBES):
                achieved = r["accuracy"][strategy] - _best_probe(r["accuracy"])
                out.append(achieved - sum(c * v for c, v in zip(coef, _xr(r), strict=True)))
    return out


def _record_size(record: dict) -> int:
    return int(record.get("input_size") or RECORD_INPUT_SIZE)


def coverage(records: Sequence[dict], *, per_class: float, input_size: int | None, share: float | None) -> list[str]:
    """Where the asked-for setting lies outside the record, each with the nearest recorded setting."""
    out: list[str] = []
    if not records:
        return ["no track record: nothing to learn the fine-tune gain from"]
    sizes = sorted({_record_size(r) for r in records})
    size = input_size or RECORD_INPUT_SIZE
    if size not in sizes:
        nearest = min(sizes, key=lambda s: abs(math.log2(s / size)))
        out.append(f"input size {size} px: the record has {', '.join(map(str, sizes))} px; nearest {nearest} px")
    pcs = [r["train_per_class_median"] for r in records]
    lo, hi = min(pcs), max(pcs)
    if per_class < lo / 1.5 or per_class > hi * 1.5:
        out.append(f"{per_class:g} training images per class: the record spans {lo:g}-{hi:g}; nearest {lo if per_class < lo else hi:g}")
    elif size in sizes:
        # Each range may be covered on its own and not together: at 224 px the record's runs stop at a few dozen
        # images per class, so a larger set's gain there is read off the smaller sizes' runs.
        here = [r["train_per_class_median"] for r in records if _record_size(r) == size]
        lo_here, hi_here = min(here), max(here)
        if per_class < lo_here / 1.5 or per_class > hi_here * 1.5:
            out.append(f"{per_class:g} training images per class at {size} px: the record's runs at {size} px span "
                       f"{lo_here:g}-{hi_here:g}; nearest {lo_here if per_class < lo_here else hi_here:g} (other sizes "
                       "cover it)")
    shares = [r.get("schedule_share") or 1.0 for r in records]
    if share is not None and share < min(shares) - 0.02:
        out.append(f"the epoch cap keeps {share:.0%} of the schedule: the record's fine-tunes kept at least {min(shares):.0%}")
    return out


def split_own_records(records: Sequence[dict], dataset: str | None) -> tuple[list[dict], dict[str, float], list[str]]:
    """(references without this dataset, its own earlier outcomes, names of same-named references left out).

    A dataset is never its own evidence: this machine's runs on the same folder are its earlier
    runs (shown, not counted), and a shipped reference of the same folder name is left out too
    (it may be the same data).
    """
    if not dataset:
        return list(records), {}, []
    name = Path(dataset).name
    mine = [r for r in records if r.get("path") == dataset]
    same_name = [r for r in records if r not in mine and group_of(r) == name]
    earlier: dict[str, float] = {}
    for r in mine:
        earlier.update({s: round(float(a), 4) for s, a in r["accuracy"].items()})
    left_out = sorted({r["dataset"] for r in same_name})
    return [r for r in records if r not in mine and r not in same_name], earlier, left_out


class CalibrationReport(BaseModel):
    """``advisor calibrate``: how the forecasts did on this machine's runs, and the gain model before/after its records."""

    local_runs: int
    skipped_lines: list[int] = []  # lines of the local record that failed validation (numbers, 1-based)
    mean_abs_error_points: float | None  # recorded forecast vs achieved, over the local runs
    interval_coverage: float | None  # share of local runs whose 80 % interval held the achieved value
    gain_error_shipped: dict[str, float]  # strategy -> mean |held-out residual| (points), shipped records only
    gain_error_with_local: dict[str, float]  # the same with this machine's records added
    cv_gap_shipped: float | None = None  # median validation-minus-CV gap of the probes (points), shipped records
    cv_gap_with_local: float | None = None  # the same with this machine's probe runs added
    records: list[str]


def calibrate_forecaster(path: Path | None = None) -> CalibrationReport:
    """Score the recorded forecasts and refit the forecaster (fine-tune gains, probe CV gap) on shipped + local records."""
    skipped: list[int] = []
    outcomes = [o for o in local_outcomes(path, skipped=skipped) if finite_number(o.get("forecast"))
                and finite_number(o.get("forecast_low")) and finite_number(o.get("forecast_high"))]
    shipped = shipped_track_record()
    combined = shipped + local_datasets(outcomes)
    errors = [abs(o["forecast"] - o["achieved"]) for o in outcomes]
    covered = [o["forecast_low"] <= o["achieved"] <= o["forecast_high"] for o in outcomes]

    def gain_error(records: list[dict]) -> dict[str, float]:
        out = {}
        for s in FINETUNES:
            res = gain_residuals(records, s)
            if res:
                out[s] = round(100 * sum(abs(r) for r in res) / len(res), 2)
        return out

    return CalibrationReport(
        local_runs=len(outcomes), skipped_lines=skipped, mean_abs_error_points=round(100 * sum(errors) / len(errors), 2) if errors else None,
        interval_coverage=round(sum(covered) / len(covered), 3) if covered else None,
        gain_error_shipped=gain_error(shipped), gain_error_with_local=gain_error(combined),
        cv_gap_shipped=_median_points(cv_gaps(shipped)), cv_gap_with_local=_median_points(cv_gaps(combined)),
        records=list(dict.fromkeys(r["dataset"] for r in combined)))


def _median_points(values: Sequence[float]) -> float | None:
    return round(100 * quantile(values, 0.5), 2) if values else None


def binomial_interval(p: float, n: int) -> tuple[float, float]:
    half = Z80 * math.sqrt(max(p * (1 - p), 1e-6) / max(n, 1))
    return max(0.0, p - half), min(1.0, p + half)


def forecast(*, probe_cv: dict[str, float], val_images: int, train_images: int, per_class: float, test_images: int = 0,
             similarity: float | None, epochs: int | None, step_seconds: float | None, batch_size: int,
             decode_seconds_per_image: float | None = None, extract_images_per_second: float | None = None,
             partial_step_seconds: float | None = None, probe_solve_seconds: dict[str, float] | None = None,
             short_schedule: bool = False, records: Sequence[dict] | None = None, input_size: int | None = None,
             schedule_share: float | None = None, dataset: str | None = None, time_factor: float = 1.0,
             time_source: str | None = None, cv_images: int | None = None, cached_share: float = 0.0,
             overhead_seconds: float = 0.0, image_side: float | None = None,
             profile_size: int | None = None, probe_time_factor: float | None = None,
             probe_time_source: str | None = None) -> Forecast:
    """Every strategy's forecast from the measured probe CV accuracies (tap -> accuracy) and the track record.

    ``input_size`` and ``schedule_share`` (the share of the fine-tune schedule the epoch cap
    keeps) are the settings the run will use: both models condition on them. ``dataset`` (a
    path or name) removes that dataset's own records from the references and reports them as
    ``earlier_runs``. ``time_factor`` scales every time (finished runs' achieved/forecast ratio);
    ``probe_time_factor`` and ``probe_time_source``, when given, the probes' instead (their time
    rests on the extraction pass, not on the training steps).
    ``cached_share``: the share of the images whose features are cached already (no extraction).
    ``overhead_seconds``: what every run costs besides its strategy (scan, backbone, model and report
    files); added to every time, unscaled (it is measured from finished runs' own wall times).
    ``cv_images``: how many images the probe CV held out; a CV on a handful (a few-shot set) is
    noisy itself, and the probes' intervals are at least as wide as its binomial spread.
    ``image_side`` (the images' median shorter side) and ``profile_size`` (the size the profile's
    CV ran at): the probe CV's shift to the run's accuracy depends on the detail the run's input
    size loses (:func:`resolution_lost`) and on how many more images it trains on (:func:`cv_size_ratio`).
    The probes start from the CV alone: nothing the forecast reads has seen a validation label, so the
    choice it informs is not made on the images the run reports (docs/forecast_error.md).

    Time: one image's extraction costs ``1 / extract_images_per_second`` (timed by the caller;
    without it, a third of a training step per image plus its decoding); a probe adds its
    solve (``probe_solve_seconds``, strategy -> seconds); a fine-tune epoch is its optimiser steps
    (``partial_step_seconds`` for the partial fine-tune, timed with its frozen stages) plus the
    decoding of its images plus the learning curve's evaluation pass (``curve_images`` of the validation
    images); when that is a share, the run ends with one pass over the whole validation split. Every run
    ends with one pass over the ``test_images`` (the saved classifier scores the test split).

    ``short_schedule``: the fine-tunes are capped below the share of their schedule the record
    measured; no gain is credited then, and the interval keeps the predicted gain's room on the
    low side.
    """
    solve = probe_solve_seconds or {}
    records, earlier, same_name = split_own_records(load_track_record() if records is None else list(records), dataset)
    rows: list[StrategyForecast] = []
    notes: list[str] = []
    decode = decode_seconds_per_image or 0.0
    if not extract_images_per_second and step_seconds:
        extract_images_per_second = 1.0 / (step_seconds / (3 * batch_size) + decode)
    total_images = train_images + val_images
    # cached features cost nothing to extract again (``cached_share``: the share already in the cache)
    raw_extract = total_images * (1.0 - cached_share) / extract_images_per_second if extract_images_per_second else None
    probe_factor = time_factor if probe_time_factor is None else probe_time_factor
    probe_source = time_source if probe_time_source is None else probe_time_source
    # A fine-tune extracts its training images only (the head's warm-up probe, LP-FT); its validation
    # passes are counted below (curve_pass, final_pass). Charging every image over-counted the fine-tunes.
    extract = raw_extract * train_images / max(1, total_images) * time_factor if raw_extract is not None else None
    # the saved classifier's pass over the test split, at the end of every run
    test_pass = test_images / extract_images_per_second if extract_images_per_second else 0.0
    probe_extract = raw_extract * probe_factor + test_pass * probe_factor if raw_extract is not None else None
    gap_coef = fit_probe_gap(records)
    if gap_coef is not None:
        lost = resolution_lost(image_side, input_size, profile_size)
        ratio = cv_size_ratio(per_class, train_images, cv_images)
        curve = learning_curve_term(per_class, train_images, cv_images)
        shift = sum(c * v for c, v in zip(gap_coef, _xp(lost, curve), strict=True))
        spread = probe_gap_spread(records, per_class)
        detail = (f"{lost:.1f} octaves of detail lost at {input_size or RECORD_INPUT_SIZE} px" if abs(lost) >= 0.05
                  else f"no detail lost at {input_size or RECORD_INPUT_SIZE} px")
        how_shift = (f"{100 * shift:+.1f} points: validation vs sample CV on {len({group_of(r) for r, _, _ in _probe_rows(records)})} "
                     f"reference sets ({detail}; {2 ** ratio:.1f}x a CV fold's data)")
    else:  # an old record without profiling-sample CVs: the median validation-vs-run CV gap
        gaps = cv_gaps(records)
        shift = quantile(gaps, 0.5) if gaps else 0.0
        spread = (quantile(gaps, 0.1) - shift, quantile(gaps, 0.9) - shift) if len(gaps) >= 4 else (0.0, 0.0)
        how_shift = f"{100 * shift:+.1f} points: the median validation-vs-CV gap of {len(gaps)} reference probes" if gaps else ""
    linear = probe_cv.get(PROBE_TAP)
    layer_tap = max(probe_cv, key=probe_cv.get) if probe_cv else None
    for name, cv, how in (("linear-probe", linear, f"CV on {PROBE_TAP} (profiling sample)"),
                          ("layer-probe", probe_cv.get(layer_tap) if layer_tap else None, f"CV on {layer_tap}, the best tap")):
        if cv is None:
            continue
        acc = min(1.0, max(0.0, cv + shift))
        half = Z80 * math.sqrt(max(cv * (1 - cv), 1e-6) / cv_images) if cv_images else 0.0
        if name == "layer-probe" and layer_tap == PROBE_TAP:
            how = f"as the linear probe: {PROBE_TAP} is the best tap"  # the same CV and shift, said once
        elif how_shift:
            how += f" {cv:.3f}, {how_shift}"
        blo, bhi = binomial_interval(acc, val_images)
        # The record's residuals were measured on validation splits, so they already hold the
        # binomial noise: the wider of the two, not their sum.
        lo = max(0.0, acc - max(acc - blo, -spread[0], half))
        hi = min(1.0, acc + max(bhi - acc, spread[1], half))
        rows.append(StrategyForecast(strategy=name, accuracy=round(acc, 4), low=round(lo, 4), high=round(hi, 4),
                                     method=how, cv=round(cv, 4),
                                     seconds=round(probe_extract + solve.get(name, 0.0) * probe_factor + overhead_seconds, 1)
                                     if probe_extract is not None else None,
                                     time_source=probe_source if probe_extract is not None else None))
    best_probe = max((r.accuracy for r in rows), default=None)
    # Batches per epoch, the last partial one counted by its share: it costs about its images' worth
    # (40 images at batch 32 cost 1.25 steps, not 2: on a small set that was 1.6x over).
    steps = train_images / batch_size if train_images else 0.0
    # With the decoded-image store (advisor.data.decoded: every run of two epochs or more) each training image is
    # decoded once, in the first epoch, not every epoch: on 3024-px photos at 128 px a per-epoch charge forecast
    # 9.9 s an epoch where the run took 13.5 s for the first and ~5 s for each later one.
    once = epochs is not None and store_off_reason(epochs) is None
    decode_epoch, decode_once = (0.0, train_images * decode) if once else (train_images * decode, 0.0)
    # Each epoch evaluates the learning curve's share of the validation split; the end all of it, once, unless
    # the curve already read all of it (the last epoch's pass is then the result).
    curve = curve_images(val_images, train_images)
    curve_pass = curve / extract_images_per_second if extract_images_per_second else 0.0
    final_pass = val_images / extract_images_per_second * time_factor if extract_images_per_second and curve < val_images else 0.0
    for name in FINETUNES:
        coef = fit_gain(records, name)
        if best_probe is None or coef is None:
            continue
        gain = predict_gain(coef, per_class, similarity, input_size, schedule_share)
        res = gain_residuals(records, name)
        lost = 0.0
        if short_schedule:
            gain, lost = min(gain, 0.0), abs(gain)
        acc = min(1.0, max(0.0, best_probe + gain))
        blo, bhi = binomial_interval(acc, val_images)
        # The probe's error and the gain's error add (independent, in quadrature); both were measured
        # on validation splits, so the binomial spread is a floor rather than a third term.
        lo = max(0.0, acc - max(acc - blo, math.hypot(quantile(res, 0.1), spread[0], lost)))
        hi = min(1.0, acc + max(bhi - acc, math.hypot(quantile(res, 0.9), spread[1])))
        step = partial_step_seconds if name == "partial-finetune" and partial_step_seconds else step_seconds
        per_epoch = (steps * step + decode_epoch + curve_pass) * time_factor if step is not None else None
        rows.append(StrategyForecast(
            strategy=name, accuracy=round(acc, 4), low=round(lo, 4), high=round(hi, 4),
            method=(f"the better probe {best_probe:.3f}, no gain credited: the epoch cap is shorter than the "
                    "record's fine-tunes ran" if short_schedule else
                    f"the better probe {best_probe:.3f} {100 * gain:+.1f} points: gain learned on "
                    f"{len({group_of(r) for r in records})} reference sets"),
            seconds_per_epoch=round(per_epoch, 1) if per_epoch is not None else None, epochs=epochs,
            seconds=round(per_epoch * epochs + decode_once * time_factor + final_pass + test_pass * time_factor
                          + (extract or 0.0) + overhead_seconds, 1)
            if per_epoch is not None and epochs else None,
            time_source=time_source if per_epoch is not None else None,
            gain_sd=round(max(1e-4, (quantile(res, 0.9) - quantile(res, 0.1) + lost) / (2 * Z80)), 4) if res else None))
    if records:
        local = {group_of(r) for r in records if r["dataset"].endswith("(local)")}
        shipped = {group_of(r) for r in records if not r["dataset"].endswith("(local)")}
        notes.append(f"learned from {len(shipped)} shipped reference datasets" + (f" and {len(local)} run on this machine" if local else ""))
    if earlier:
        notes.append("your earlier runs of this dataset (not counted as references): "
                     + ", ".join(f"{s} {a:.3f}" for s, a in earlier.items()))
    if same_name:
        notes.append(f"the reference dataset of the same name ({', '.join(same_name)}) is left out: it may be this data")
    out_of_range = coverage(records, per_class=per_class, input_size=input_size, share=schedule_share)
    return Forecast(strategies=rows, records=sorted({group_of(r) for r in records}), notes=notes,
                    extrapolating=out_of_range, earlier_runs=earlier, input_size=input_size, schedule_share=schedule_share)
