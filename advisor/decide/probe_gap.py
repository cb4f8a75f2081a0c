"""How a probe's profiling-sample CV maps to what the run's probe scores on the validation split.

The CV runs on the sample's training images only, before anything is trained; its shift to the run's
validation accuracy is learned from the track record (ridge; leave one dataset out for the
intervals) on the detail the run's input size loses against the profile's (:func:`resolution_lost`)
and on how much the run's extra images per class over a CV fold's lift it along a learning curve
(:func:`learning_curve_term`).

Nothing here reads a validation label. A holdout probe scored on the sample's validation images
(few-shot sets) forecast closer, but those images are part of the split each run reports on, so the
choice it informed was made on the reported images, and its error figures were flattered by them;
it was removed (docs/forecast_error.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from advisor.decide.records import RECORD_INPUT_SIZE, group_of

PROBES = ("linear-probe", "layer-probe")
PROBE_TAP = "pre_logits"
RIDGE = 1.0


def ridge(X: list[list[float]], y: list[float]) -> list[float]:
    """Ridge coefficients (the first column, the intercept, is not shrunk)."""
    Xt = torch.tensor(X, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    penalty = RIDGE * torch.eye(Xt.shape[1], dtype=torch.float64)
    penalty[0, 0] = 0.0
    return torch.linalg.solve(Xt.T @ Xt + penalty, Xt.T @ yt).tolist()


def _probe_sample_cv(sample_cv: dict[str, float], strategy: str) -> float | None:
    if strategy == "linear-probe":
        return sample_cv.get(PROBE_TAP)
    return max(sample_cv.values()) if sample_cv else None


PROFILE_INPUT_SIZE = 224  # the size a profile's probe CV is measured at, where a record does not say


def resolution_lost(image_side: float | None, input_size: float | None, profile_size: float | None = None) -> float:
    """Octaves of detail the run's input size discards that the profile's probe CV saw.

    A network sees an image at min(its own size, the input size): a 64-px run loses nothing on
    28-px digits that a 224-px profile saw, and about 1.8 octaves on 256-px photos.
    ``image_side``: the images' median shorter side (None: larger than either size).
    """
    side = image_side if image_side and image_side > 0 else math.inf
    return math.log2(min(side, profile_size or PROFILE_INPUT_SIZE) / min(side, input_size or RECORD_INPUT_SIZE))


def _fold_and_run_per_class(per_class: float, train_images: int | None, cv_images: int | None) -> tuple[float, float]:
    """(images per class a fold of the profile's CV trained on, images per class the run trains on).

    The CV runs on a sample (``cv_images``) in min(5, images per class in the sample) folds: with
    2 images per class each fold trains on 1, the run on 2; on a 300-image sample of 3,000 the
    run sees ten times what a fold did. Unknown sizes: the CV is taken to have seen the whole
    training split.
    """
    pc = max(per_class, 1.0)
    classes = max(1.0, train_images / pc) if train_images else None
    sample_pc = min(pc, cv_images / classes) if cv_images and classes else pc
    folds = max(2, min(5, int(sample_pc)))
    return max(sample_pc * (folds - 1) / folds, 0.5), pc


def cv_size_ratio(per_class: float, train_images: int | None, cv_images: int | None) -> float:
    """Octaves more training images per class the run fits on than each fold of the profile's CV did."""
    fold, run = _fold_and_run_per_class(per_class, train_images, cv_images)
    return math.log2(run / fold)


LEARNING_CURVE_EXPONENT = 0.5  # error ~ n^-1/2: the textbook rate, fixed before it was measured here


def learning_curve_term(per_class: float, train_images: int | None, cv_images: int | None) -> float:
    """How much the extra images should lift a probe above its CV: fold^-1/2 - run^-1/2 (images per class).

    A learning curve flattens: one more image per class lifts a 1-shot probe far more than a
    40-shot one, so the lift is linear in n^-1/2, not in log n. On the track record this term
    replaced the octave ratio (:func:`cv_size_ratio`): the 2-per-class cells had been under-forecast
    by 6-12 points and the 5-per-class ones over-forecast by 2-5 (docs/forecast_error.md).
    """
    fold, run = _fold_and_run_per_class(per_class, train_images, cv_images)
    return fold ** -LEARNING_CURVE_EXPONENT - run ** -LEARNING_CURVE_EXPONENT


def _xp(lost: float, curve: float) -> list[float]:
    """Probe-gap features: intercept, resolution lost, learning-curve term (see the functions above)."""
    return [1.0, lost, curve]


def _xpr(r: dict) -> list[float]:
    return _xp(resolution_lost(r.get("image_side"), r.get("input_size"), r.get("profile_size")),
               learning_curve_term(r["train_per_class_median"], r.get("train_images"), r.get("cv_images")))


def _probe_rows(records: Sequence[dict]) -> list[tuple[dict, str, float]]:
    """(record, probe, validation accuracy - sample CV) for every record that measured both."""
    out = []
    for r in records:
        for s in PROBES:
            cv = _probe_sample_cv(r.get("sample_cv") or {}, s)
            if cv is not None and s in r["accuracy"]:
                out.append((r, s, r["accuracy"][s] - cv))
    return out


def _fit_gap(rows: list[tuple[dict, str, float]], features) -> list[float] | None:
    """Ridge coefficients of the gaps on ``features(record)``; None with fewer than 3 reference sets."""
    if len({group_of(r) for r, _, _ in rows}) < 3:
        return None
    return ridge([features(r) for r, _, _ in rows], [g for _, _, g in rows])


def _gap_residuals(records: Sequence[dict], rows_of, features) -> list[tuple[dict, float]]:
    """Leave-one-dataset-out residuals (measured gap - predicted) of a gap model, each with its record (a dataset's
    subsamples leave together)."""
    out = []
    for g in sorted({group_of(r) for r in records}):
        coef = _fit_gap(rows_of([q for q in records if group_of(q) != g]), features)
        if coef is None:
            continue
        for r, _, gap in rows_of([q for q in records if group_of(q) == g]):
            out.append((r, gap - sum(c * v for c, v in zip(coef, features(r), strict=True))))
    return out


# A probe CV's error depends on how many images it had: at 2 per class a fold trains on 1 and is scored on a
# handful. The residuals of references within one octave of the dataset's images per class (2 -> 1-4,
# 20 -> 10-40), where there are at least MIN_NEAR of them, may widen the interval the pooled residuals give,
# never narrow it (taken alone they narrowed it on the 64 px full sets, whose near neighbours ran at other
# sizes: coverage 89 -> 68 %, docs/forecast_error.md). Both constants fixed before measuring.
NEAR_OCTAVES = 1.0
MIN_NEAR = 12


def fit_probe_gap(records: Sequence[dict]) -> list[float] | None:
    """Ridge coefficients of (probe validation accuracy - its profiling-sample CV) on the resolution the run's
    input size loses against the profile's and the learning-curve lift of the run's images per class over a CV fold's."""
    return _fit_gap(_probe_rows(records), _xpr)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile, linear between order statistics (0.0 for no values)."""
    v = sorted(values)
    if not v:
        return 0.0
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def probe_gap_spread(records: Sequence[dict], per_class: float | None = None, *, q: float = 0.1) -> tuple[float, float]:
    """(low, high) residual quantiles (q, 1 - q) of the probe-gap model: every reference's, widened by those of the
    references within :data:`NEAR_OCTAVES` of ``per_class`` images per class where there are :data:`MIN_NEAR`."""
    pairs = _gap_residuals(records, _probe_rows, _xpr)
    if len(pairs) < 4:
        return 0.0, 0.0
    every = [e for _, e in pairs]
    lo, hi = quantile(every, q), quantile(every, 1 - q)
    if per_class is not None:
        near = [e for r, e in pairs
                if abs(math.log2(max(float(r["train_per_class_median"]), 1.0) / max(per_class, 1.0))) <= NEAR_OCTAVES]
        if len(near) >= MIN_NEAR:
            lo, hi = min(lo, quantile(near, q)), max(hi, quantile(near, 1 - q))
    return lo, hi


def cv_gaps(records: Sequence[dict]) -> list[float]:
    """Validation accuracy minus training-split CV accuracy, per (reference dataset, probe) that measured both."""
    return [r["accuracy"][s] - r["probe_cv"][s] for r in records for s in PROBES
            if s in (r.get("probe_cv") or {}) and s in r["accuracy"]]
