"""What each strategy should score and cost, before anything is trained.

* **Probes** are measured, not guessed: the cross-validated accuracy of a logistic probe on the
  profiling sample's cached features (``pre_logits`` for the linear probe; the best single tap
  for the layer probe), shifted by the median gap between validation accuracy and that CV
  accuracy over the track record (a CV that also chose its own regularisation is optimistic:
  the record measured by how much). The 80 % interval combines the binomial spread of an
  accuracy measured on as many images as the validation split holds with the 10th-90th
  percentile of the record's gaps around their median.
* **Fine-tunes** are the better probe's measured accuracy plus a gain predicted from the
  shipped track record (``advisor/reference/track_record.json``): the gain each reference
  dataset measured, regressed on log images per class and similarity (ridge, 3 coefficients).
  The interval adds the 10th-90th percentile of the regression's leave-one-dataset-out residuals.
* **Time** is a few timed forward/backward steps on this device times the plan's schedule;
  probes cost one extraction pass (nothing when the features are cached) and a solve.

``benchmarks/forecast_error.py`` measures the forecast against what the suite achieved.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from pydantic import BaseModel

FINETUNES = ("partial-finetune", "full-finetune")
PROBES = ("linear-probe", "layer-probe")
Z80 = 1.2816  # two-sided 80 % normal quantile
RIDGE = 1.0


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


class Forecast(BaseModel):
    """Every strategy's expected accuracy (80 % interval) and wall time; which records it learned from."""

    strategies: list[StrategyForecast]
    records: list[str]  # the reference datasets the fine-tune gain was fitted on
    notes: list[str] = []


LOCAL_RECORD = "track_record.jsonl"  # in the cache folder: every run's forecast against what it achieved


def shipped_track_record() -> list[dict]:
    try:
        return json.loads(resources.files("advisor").joinpath("reference/track_record.json").read_text())["datasets"]
    except (FileNotFoundError, OSError, KeyError, json.JSONDecodeError):
        return []


def local_record_path() -> Path:
    from advisor.features import default_cache_dir

    return default_cache_dir() / LOCAL_RECORD


def local_outcomes(path: Path | None = None) -> list[dict]:
    """The runs recorded on this machine (one JSON line each); a damaged line is skipped, not fatal."""
    path = local_record_path() if path is None else path
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def local_datasets(outcomes: Sequence[dict]) -> list[dict]:
    """Local runs grouped per dataset into track-record entries (the latest accuracy of each strategy)."""
    by: dict[str, dict] = {}
    for o in outcomes:
        entry = by.setdefault(o["dataset"], {"dataset": f"{Path(o['dataset']).name} (local)", "accuracy": {},
                                             "train_per_class_median": o["train_per_class_median"],
                                             "similarity": o.get("similarity")})
        entry["accuracy"][o["strategy"]] = o["achieved"]
        if o.get("cv") is not None:
            entry.setdefault("probe_cv", {})[o["strategy"]] = o["cv"]
    return list(by.values())


def load_track_record(*, local: bool = True) -> list[dict]:
    """The shipped track record, plus this machine's runs (marked '(local)') when ``local``."""
    return shipped_track_record() + (local_datasets(local_outcomes()) if local else [])


def record_outcome(rec, strategy: str, achieved: float, seconds: float, path: Path | None = None) -> dict | None:
    """Append a finished run's forecast and outcome to the local track record (needs a forecast)."""
    f = next((f for f in (rec.forecast.strategies if rec is not None and rec.forecast else []) if f.strategy == strategy), None)
    if f is None:
        return None
    p = rec.profile
    row = {"dataset": p.dataset, "strategy": strategy, "train_per_class_median": p.train_per_class_median,
           "similarity": p.similarity.score.value if p.similarity else None, "forecast": f.accuracy,
           "forecast_low": f.low, "forecast_high": f.high, "achieved": round(achieved, 4), "cv": f.cv,
           "forecast_seconds": f.seconds, "seconds": round(seconds, 2), "input_size": rec.plan.input_size,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = local_record_path() if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one line per run; appends from parallel runs do not interleave within a line
        fh.write(json.dumps(row) + "\n")
    return row


def cv_gaps(records: Sequence[dict]) -> list[float]:
    """Validation accuracy minus training-split CV accuracy, per (reference dataset, probe) that measured both."""
    return [r["accuracy"][s] - r["probe_cv"][s] for r in records for s in PROBES
            if s in (r.get("probe_cv") or {}) and s in r["accuracy"]]


def _x(per_class: float, similarity: float | None) -> list[float]:
    return [1.0, math.log10(max(per_class, 1.0)), 0.5 if similarity is None else similarity]


def _best_probe(acc: dict) -> float:
    return max(acc.get(s, 0.0) for s in PROBES)


def fit_gain(records: Sequence[dict], strategy: str) -> list[float] | None:
    """Ridge coefficients of (fine-tune accuracy - best probe accuracy) on ``_x``; None without records."""
    rows = [r for r in records if strategy in r["accuracy"] and all(s in r["accuracy"] for s in PROBES)]
    if len(rows) < 3:
        return None
    X = torch.tensor([_x(r["train_per_class_median"], r["similarity"]) for r in rows], dtype=torch.float64)
    y = torch.tensor([r["accuracy"][strategy] - _best_probe(r["accuracy"]) for r in rows], dtype=torch.float64)
    penalty = RIDGE * torch.eye(X.shape[1], dtype=torch.float64)
    penalty[0, 0] = 0.0  # the intercept is not shrunk
    return torch.linalg.solve(X.T @ X + penalty, X.T @ y).tolist()


def predict_gain(coef: Sequence[float], per_class: float, similarity: float | None) -> float:
    return sum(c * v for c, v in zip(coef, _x(per_class, similarity), strict=True))


def gain_residuals(records: Sequence[dict], strategy: str) -> list[float]:
    """Leave-one-dataset-out residuals (achieved - predicted gain) of :func:`fit_gain`."""
    out = []
    for r in records:
        rest = [q for q in records if q is not r]
        coef = fit_gain(rest, strategy)
        if coef is None or strategy not in r["accuracy"]:
            continue
        achieved = r["accuracy"][strategy] - _best_probe(r["accuracy"])
        out.append(achieved - predict_gain(coef, r["train_per_class_median"], r["similarity"]))
    return out


class CalibrationReport(BaseModel):
    """``advisor calibrate``: how the forecasts did on this machine's runs, and the gain model before/after its records."""

    local_runs: int
    mean_abs_error_points: float | None  # recorded forecast vs achieved, over the local runs
    interval_coverage: float | None  # share of local runs whose 80 % interval held the achieved value
    gain_error_shipped: dict[str, float]  # strategy -> mean |held-out residual| (points), shipped records only
    gain_error_with_local: dict[str, float]  # the same with this machine's records added
    cv_gap_shipped: float | None = None  # median validation-minus-CV gap of the probes (points), shipped records
    cv_gap_with_local: float | None = None  # the same with this machine's probe runs added
    records: list[str]


def calibrate_forecaster(path: Path | None = None) -> CalibrationReport:
    """Score the recorded forecasts and refit the forecaster (fine-tune gains, probe CV gap) on shipped + local records."""
    outcomes = local_outcomes(path)
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
        local_runs=len(outcomes), mean_abs_error_points=round(100 * sum(errors) / len(errors), 2) if errors else None,
        interval_coverage=round(sum(covered) / len(covered), 3) if covered else None,
        gain_error_shipped=gain_error(shipped), gain_error_with_local=gain_error(combined),
        cv_gap_shipped=_median_points(cv_gaps(shipped)), cv_gap_with_local=_median_points(cv_gaps(combined)),
        records=[r["dataset"] for r in combined])


def _median_points(values: Sequence[float]) -> float | None:
    return round(100 * _quantile(values, 0.5), 2) if values else None


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return 0.0
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def binomial_interval(p: float, n: int) -> tuple[float, float]:
    half = Z80 * math.sqrt(max(p * (1 - p), 1e-6) / max(n, 1))
    return max(0.0, p - half), min(1.0, p + half)


def finetune_step_seconds(backbone, *, input_size: int, batch_size: int, device: torch.device | str,
                          steps: int = 2, probe_batch: int = 8, frozen_stages: int = 0) -> float:
    """Seconds of one optimiser step at ``batch_size``: a few timed steps on a small batch, scaled linearly.

    ``frozen_stages`` (a partial fine-tune) freezes the stem and that many stages for the timing,
    so autograd skips their backward pass as the run will.
    """
    net = backbone.to(device).train()
    saved = {n: p.requires_grad for n, p in net.named_parameters()}
    if frozen_stages:
        for n, p in backbone.model.named_parameters():
            if backbone.stage_of(n.rsplit(".", 1)[0])[1] <= frozen_stages:
                p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad] or list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the timing must not change the weights
    x = torch.randn(probe_batch, 3, input_size, input_size, device=device).contiguous(memory_format=torch.channels_last)
    net = net.to(memory_format=torch.channels_last)
    times = []
    try:
        for i in range(steps + 1):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            net(x).float().mean().backward()
            opt.step()
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first step pays one-off allocation and kernel selection
                times.append(time.perf_counter() - t0)
    finally:
        opt.zero_grad(set_to_none=True)
        for n, p in net.named_parameters():
            p.requires_grad_(saved[n])
        net.eval()
    return min(times) * batch_size / probe_batch


def decode_seconds(paths: Sequence[str], transform) -> float:
    """Seconds to decode and transform one image, timed on ``paths``."""
    from advisor.data import load_image

    t0 = time.perf_counter()
    for p in paths:
        transform(load_image(p))
    return (time.perf_counter() - t0) / max(1, len(paths))


def forecast(*, probe_cv: dict[str, float], val_images: int, train_images: int, per_class: float,
             similarity: float | None, epochs: int | None, step_seconds: float | None, batch_size: int,
             decode_seconds_per_image: float | None = None, extract_images_per_second: float | None = None,
             partial_step_seconds: float | None = None, probe_solve_seconds: dict[str, float] | None = None,
             short_schedule: bool = False, records: Sequence[dict] | None = None) -> Forecast:
    """Every strategy's forecast from the measured probe CV accuracies (tap -> accuracy) and the track record.

    Time: a training step's forward is about a third of its forward + backward, so one image's
    extraction costs ``step_seconds / (3 * batch_size)`` plus its decoding; a probe adds its
    solve (``probe_solve_seconds``, strategy -> seconds); a fine-tune epoch is its optimiser steps
    (``partial_step_seconds`` for the partial fine-tune, timed with its frozen stages) plus the
    decoding of its images (decoded in-process on the CPU) plus one evaluation pass over the
    validation images.

    ``short_schedule``: the fine-tunes are capped below the share of their schedule the record
    measured; no gain is credited then (at 13-18 % of the schedule the fine-tunes measured lost to
    the probes), and the interval keeps the predicted gain's room on the low side.
    """
    solve = probe_solve_seconds or {}
    records = load_track_record() if records is None else list(records)
    rows: list[StrategyForecast] = []
    notes: list[str] = []
    decode = decode_seconds_per_image or 0.0
    if not extract_images_per_second and step_seconds:
        extract_images_per_second = 1.0 / (step_seconds / (3 * batch_size) + decode)
    total_images = train_images + val_images
    extract = total_images / extract_images_per_second if extract_images_per_second else None
    gaps = cv_gaps(records)
    shift = _quantile(gaps, 0.5) if gaps else 0.0
    spread = (_quantile(gaps, 0.1) - shift, _quantile(gaps, 0.9) - shift) if len(gaps) >= 4 else (0.0, 0.0)
    linear = probe_cv.get("pre_logits")
    layer_tap = max(probe_cv, key=probe_cv.get) if probe_cv else None
    for name, cv, how in (("linear-probe", linear, "5-fold CV of a logistic probe on pre_logits (profiling sample)"),
                          ("layer-probe", probe_cv.get(layer_tap) if layer_tap else None,
                           f"5-fold CV of a logistic probe on {layer_tap}, the best tap (profiling sample)")):
        if cv is None:
            continue
        acc = min(1.0, max(0.0, cv + shift))
        blo, bhi = binomial_interval(acc, val_images)
        # The record's gaps were themselves measured on validation splits, so they already hold
        # the binomial noise: the wider of the two, not their sum.
        lo = max(0.0, acc - max(acc - blo, -spread[0]))
        hi = min(1.0, acc + max(bhi - acc, spread[1]))
        if gaps:
            how += f", {100 * shift:+.1f} points: the median validation-vs-CV gap of {len(gaps)} reference probes"
        rows.append(StrategyForecast(strategy=name, accuracy=round(acc, 4), low=round(lo, 4), high=round(hi, 4),
                                     method=how, cv=round(cv, 4),
                                     seconds=round(extract + solve.get(name, 0.0), 1) if extract else None))
    best_probe = max((r.accuracy for r in rows), default=None)
    steps = math.ceil(train_images / batch_size) if train_images else 0
    for name in FINETUNES:
        coef = fit_gain(records, name)
        if best_probe is None or coef is None:
            continue
        gain = predict_gain(coef, per_class, similarity)
        res = gain_residuals(records, name)
        lost = 0.0
        if short_schedule:
            gain, lost = min(gain, 0.0), abs(gain)
        acc = min(1.0, max(0.0, best_probe + gain))
        blo, bhi = binomial_interval(acc, val_images)
        # The probe's error and the gain's error add (independent, in quadrature); both were measured
        # on validation splits, so the binomial spread is a floor rather than a third term.
        lo = max(0.0, acc - max(acc - blo, math.hypot(_quantile(res, 0.1), spread[0], lost)))
        hi = min(1.0, acc + max(bhi - acc, math.hypot(_quantile(res, 0.9), spread[1])))
        step = partial_step_seconds if name == "partial-finetune" and partial_step_seconds else step_seconds
        per_epoch = steps * step + train_images * decode \
            + (val_images / extract_images_per_second if extract_images_per_second else 0.0) \
            if step is not None else None
        rows.append(StrategyForecast(
            strategy=name, accuracy=round(acc, 4), low=round(lo, 4), high=round(hi, 4),
            method=(f"the better probe {best_probe:.3f}, no gain credited: the epoch cap is shorter than the "
                    "record's fine-tunes ran" if short_schedule else
                    f"the better probe {best_probe:.3f} + a gain of {100 * gain:+.1f} points predicted from "
                    f"{len(records)} reference datasets"),
            seconds_per_epoch=round(per_epoch, 1) if per_epoch is not None else None, epochs=epochs,
            seconds=round(per_epoch * epochs + (extract or 0.0), 1) if per_epoch is not None and epochs else None))
    if records:
        local = sum(1 for r in records if r["dataset"].endswith("(local)"))
        notes.append(f"fine-tune gains are learned from {len(records) - local} shipped reference datasets "
                     f"(advisor/reference/track_record.json) and {local} recorded on this machine")
    notes.append("probe accuracies are measured on the profiling sample, not the whole training split: on larger "
                 "datasets the probes trained on everything usually score somewhat higher")
    return Forecast(strategies=rows, records=[r["dataset"] for r in records], notes=notes)
