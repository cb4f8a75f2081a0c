"""What more images would buy: the probe's measured learning curve, extrapolated, and the forecaster at larger sizes.

The profile measures the probe's cross-validated accuracy on nested subsamples of the profiling
sample (``advisor.measure.curve``). Here a saturating power law, ``error(n) = e_inf + b * n^-c``
(``e_inf, b >= 0``, ``c`` in [0.1, 1.5]), is fitted to those points by weighted least squares
(weights: each point's binomial variance), and a parametric bootstrap over the points (each
accuracy redrawn from its binomial spread, the law refitted) gives the interval of what the curve
adds from today's images per class to ``k`` times as many. A probe's forecast at ``k`` times the
images and the fine-tunes' come from the forecaster itself at the larger size (its gain model
depends on images per class: the k-shot records), fed the probe's extrapolated CV; none falls
below today's forecast for the same strategy. Imports advisor.core, advisor.measure and advisor.decide.forecast.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from advisor.measure.models import CurvePoint

EXPONENTS = [0.1 + 0.05 * i for i in range(29)]  # c in [0.1, 1.5]
BOOTSTRAP = 200
FACTORS = (2, 4)


def _fit_for(c: float, n: Sequence[float], err: Sequence[float], w: Sequence[float]) -> tuple[float, float, float]:
    """(e_inf, b, weighted squared error) of the law with exponent ``c``, both coefficients >= 0."""
    x = [v ** -c for v in n]
    sw = sum(w)
    mx, my = sum(wi * xi for wi, xi in zip(w, x)) / sw, sum(wi * yi for wi, yi in zip(w, err)) / sw
    sxx = sum(wi * (xi - mx) ** 2 for wi, xi in zip(w, x))
    b = max(0.0, sum(wi * (xi - mx) * (yi - my) for wi, xi, yi in zip(w, x, err)) / sxx) if sxx > 0 else 0.0
    e_inf = my - b * mx
    if e_inf < 0:  # the asymptote cannot be below zero error: refit b through the origin
        e_inf = 0.0
        b = max(0.0, sum(wi * xi * yi for wi, xi, yi in zip(w, x, err)) / max(sum(wi * xi * xi for wi, xi in zip(w, x)), 1e-12))
    sse = sum(wi * (yi - (e_inf + b * xi)) ** 2 for wi, xi, yi in zip(w, x, err))
    return e_inf, b, sse


def fit_power_law(points: Sequence[CurvePoint]) -> tuple[float, float, float] | None:
    """(e_inf, b, c) of the best saturating power law through the points; None with fewer than 2 points."""
    pts = [p for p in points if p.per_class > 0 and p.images > 0]
    if len(pts) < 2:
        return None
    n = [p.per_class for p in pts]
    err = [1.0 - p.accuracy for p in pts]
    w = [p.images / max(e * (1 - e), 0.25 / p.images) for p, e in zip(pts, err)]  # 1 / binomial variance
    best = min(((c, *_fit_for(c, n, err, w)) for c in EXPONENTS), key=lambda r: r[3])
    c, e_inf, b, _ = best
    return e_inf, b, c


def accuracy_at(law: tuple[float, float, float], per_class: float) -> float:
    e_inf, b, c = law
    return max(0.0, min(1.0, 1.0 - (e_inf + b * max(per_class, 1e-6) ** -c)))


def curve_gain(points: Sequence[CurvePoint], today: float, factor: float, *, seed: int = 0,
               rounds: int = BOOTSTRAP) -> tuple[float, float, float] | None:
    """(gain, low, high): accuracy the probe's curve adds from ``today`` images per class to ``factor`` times as many,
    with an 80 % bootstrap interval; None when the curve has fewer than 2 points."""
    law = fit_power_law(points)
    if law is None:
        return None
    gain = accuracy_at(law, today * factor) - accuracy_at(law, today)
    rng = random.Random(seed)
    draws = []
    for _ in range(rounds):
        redrawn = []
        for p in points:
            sd = math.sqrt(max(p.accuracy * (1 - p.accuracy), 0.25 / p.images) / p.images)
            redrawn.append(p.model_copy(update={"accuracy": min(1.0, max(0.0, rng.gauss(p.accuracy, sd)))}))
        boot = fit_power_law(redrawn)
        if boot is not None:
            draws.append(accuracy_at(boot, today * factor) - accuracy_at(boot, today))
    draws.sort()
    lo, hi = (draws[int(0.1 * len(draws))], draws[int(0.9 * len(draws)) - 1]) if draws else (gain, gain)
    return gain, min(lo, gain), max(hi, gain)


def forecast_at(profile, base: dict, run_forecast: Callable[..., object], factor: float, *, epochs: int | None,
                per_class: float | None = None, train_images: int | None = None, today: dict | None = None):
    """Each strategy's (forecast, 80 % low, high) with ``factor`` times today's training images per class, and the
    probe curve's gain (gain, low, high); None when the curve has too few points.

    ``base``: the keyword arguments today's forecast was made with; ``run_forecast``: the forecaster;
    ``epochs``: the fine-tunes' epochs at the larger size. ``per_class`` / ``train_images`` default to
    today's times ``factor``. ``today``: strategy -> today's forecast; more images of the same kind
    do not lower a strategy's expected accuracy (a learning curve rises in expectation), so no
    forecast falls below today's: where the forecaster's size terms say otherwise, they are read
    outside what the record measured, not as a loss.
    """
    now = float(profile.train_per_class_median)
    gain = curve_gain(profile.probe_curve, now, factor)
    if gain is None:
        return None
    g, g_lo, g_hi = gain
    train = train_images if train_images is not None else int(profile.train_images * factor)
    fc = run_forecast(**{**base, "probe_cv": {t: min(1.0, v + g) for t, v in base["probe_cv"].items()},
                         "per_class": per_class if per_class is not None else now * factor, "train_images": train,
                         "epochs": epochs, "cv_images": (base.get("cv_images") or 0) * factor or None})
    spread_lo, spread_hi = g - g_lo, g_hi - g  # the curve's own uncertainty widens every strategy's interval
    floor = today or {}
    out = {}
    for f in fc.strategies:
        acc = max(f.accuracy, floor.get(f.strategy, 0.0))
        out[f.strategy] = (acc, max(0.0, min(acc, f.low) - spread_lo), min(1.0, max(acc, f.high) + spread_hi))
    return out, (round(g, 4), round(g_lo, 4), round(g_hi, 4))


def more_data(rec, base: dict, run_forecast: Callable[..., object], *, schedule: Callable[[int], int],
              epochs_cap: int | None, large_per_class: float, large_total: float):
    """Each strategy's forecast at today's size and at 2x and 4x the training images per class; what crosses the size
    boundary. ``base``: the keyword arguments today's forecast was made with; ``run_forecast``: the forecaster."""
    from advisor.decide.models import MoreData, MoreDataRow

    p = rec.profile
    today = float(p.train_per_class_median)
    rows = [MoreDataRow(factor=1, per_class=today, strategies={f.strategy: (f.accuracy, f.low, f.high)
                                                               for f in rec.forecast.strategies})]
    notes = []
    for k in FACTORS:
        train = int(p.train_images * k)
        epochs = schedule(train) if epochs_cap is None else min(schedule(train), epochs_cap)
        at = forecast_at(p, base, run_forecast, k, epochs=epochs,
                         today={f.strategy: f.accuracy for f in rec.forecast.strategies})
        if at is None:
            notes.append("the probe's learning curve has too few points (the profiling sample is too small)")
            break
        strategies, probe_gain = at
        rows.append(MoreDataRow(factor=k, per_class=today * k, strategies=strategies, probe_gain=probe_gain))
    needed = max(large_per_class, math.ceil(large_total / max(p.num_classes, 1)))
    boundary = (f"already large (from {large_per_class:.0f} per class and {large_total:.0f} in total)"
                if rec.size_class == "large" else
                f"about {needed:.0f} training images per class (today {today:.0f}) would make it large: "
                f"the table would then say {'partial-finetune' if rec.similarity_class == 'similar' else 'full-finetune'}")
    return MoreData(rows=rows, boundary=boundary, boundary_per_class=None if rec.size_class == "large" else needed,
                    curve=list(p.probe_curve), notes=notes)
