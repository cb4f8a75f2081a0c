"""Linear classifiers on frozen, cached, pooled features: the linear probe and the layer probe.

Tensor math on ``[N, D]`` feature matrices (rows = training images), on top of the logistic
regression in ``advisor/measure/logistic.py``:

* ``fit_probe`` / ``layer_probe_sweep``: one probe on a set of taps, or the best of several
  candidate taps (each alone, plus concatenations of the deepest ones), the simpler candidate
  kept unless a richer one wins by more than its standard error.
* ``predict_logits``: a fitted probe applied to features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel
from torch import Tensor

from advisor.backbones import PRE_LOGITS
from advisor.core.errors import AdvisorError
from advisor.decide.rules.thresholds import sweep_candidates
from advisor.measure.logistic import (
    DEFAULT_L2_GRID,
    CVResult,
    Standardizer,
    cross_validate,
    fit_logistic,
    fit_standardizer,
)


@dataclass
class ProbeFit:
    """A fitted probe: which taps, its standardiser and weights, and how ``l2`` was chosen."""

    taps: list[str]
    l2: float
    W: Tensor  # [C, D] float32, CPU
    b: Tensor  # [C]
    standardizer: Standardizer
    cv_accuracy: float  # at the chosen l2, class-weighted if the fit was; NaN when CV was skipped
    cv_table: list[tuple[float, float]]
    folds: int = 0  # CV folds actually used; 0 = skipped
    notes: list[str] = field(default_factory=list)
    # [N, C] each training row's logits from the CV probe that held it out, at l2 (fit with keep_oof=True)
    oof_logits: Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.W.shape[1])


class SweepRow(BaseModel):
    """One layer-probe candidate: its taps, feature width and CV result (accuracy NaN when CV was skipped)."""

    taps: list[str]
    dim: int
    cv_accuracy: float
    l2: float


def _concat(features: dict[str, Tensor], taps: Sequence[str], *, rows: int | None = None) -> Tensor:
    if not taps:
        raise AdvisorError("taps must name at least one feature tap, got none")
    if len(set(taps)) != len(taps):
        raise AdvisorError(f"taps must not repeat, got {list(taps)}")
    missing = [t for t in taps if t not in features]
    if missing:
        raise AdvisorError(f"taps {missing} are not among the features {sorted(features)}")
    parts = []
    for t in taps:
        f = features[t]
        if not isinstance(f, Tensor) or f.dim() != 2:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise AdvisorError(f"features['{t}'] must be a pooled 2-D tensor [N, D], got {got}")
        parts.append(f)
    n = {p.shape[0] for p in parts}
    if len(n) != 1:
        raise AdvisorError(f"taps {list(taps)} must have the same number of rows, got {[p.shape[0] for p in parts]}")
    if rows is not None and parts[0].shape[0] != rows:
        raise AdvisorError(f"features must have one row per training label ({rows}), got {parts[0].shape[0]}")
    return torch.cat([p.float() for p in parts], dim=1)


def _blocks(features: dict[str, Tensor], taps: Sequence[str]) -> list[int]:
    """Each tap's width in a concatenation: the standardiser scales each tap's features on its own."""
    return [features[t].shape[1] for t in taps]


def _refit(
    x: Tensor, y: Tensor, taps: Sequence[str], cv: CVResult, *, num_classes: int,
    class_weights: Tensor | None, device: str | torch.device, max_iter: int, blocks: Sequence[int],
) -> ProbeFit:
    std = fit_standardizer(x, blocks=blocks)
    W, b = fit_logistic(std.apply(x), y, num_classes=num_classes, l2=cv.l2, class_weights=class_weights,
                        max_iter=max_iter, device=device)
    acc = dict(cv.table).get(cv.l2, math.nan)
    std_cpu = Standardizer(std.mean.float().cpu(), std.std.float().cpu())
    return ProbeFit(list(taps), cv.l2, W, b, std_cpu, acc, cv.table, cv.folds, [cv.note] if cv.note else [],
                    cv.held_out_logits)


def fit_probe(
    features: dict[str, Tensor],
    y_train: Tensor,
    *,
    taps: Sequence[str],
    num_classes: int,
    class_weights: Tensor | None = None,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 100,
    keep_oof: bool = False,
) -> ProbeFit:
    """Concatenate ``features[t]`` for ``t`` in ``taps``, CV-select ``l2``, refit on all training rows.
    ``keep_oof``: keep the CV's out-of-fold logits at that ``l2`` (``ProbeFit.oof_logits``)."""
    x = _concat(features, taps, rows=y_train.shape[0] if isinstance(y_train, Tensor) else None)
    blocks = _blocks(features, taps)
    cv = cross_validate(x, y_train, num_classes=num_classes, grid=grid, folds=folds, seed=seed,
             class_weights=class_weights, device=device, max_iter=max_iter, blocks=blocks, keep_logits=keep_oof)
    return _refit(x, y_train, taps, cv, num_classes=num_classes, class_weights=class_weights,
                  device=device, max_iter=max_iter, blocks=blocks)


def layer_probe_sweep(
    features: dict[str, Tensor],
    y_train: Tensor,
    *,
    taps: Sequence[str],
    num_classes: int,
    concat_top: int = 2,
    class_weights: Tensor | None = None,
    folds: int = 5,
    seed: int = 0,
    device: str | torch.device = "cpu",
    grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 100,
    keep_oof: bool = False,
) -> tuple[ProbeFit, list[SweepRow]]:
    """CV every candidate of ``sweep_candidates``; refit the simplest within one standard error of the best
    (``keep_oof``: with its out-of-fold logits, as :func:`fit_probe`).

    All candidates share the same folds (same seed and labels), so their scores are comparable
    and their per-image out-of-fold hits are paired (see :func:`_one_standard_error`).
    """
    if concat_top < 1:
        raise AdvisorError(f"concat_top must be at least 1, got {concat_top}")
    if not taps:
        raise AdvisorError("taps must name at least one feature tap, got none")
    rows: list[SweepRow] = []
    results: list[tuple[list[str], Tensor, CVResult, float]] = []
    for cand in sweep_candidates(taps, concat_top=concat_top):
        x = _concat(features, cand, rows=y_train.shape[0] if isinstance(y_train, Tensor) else None)
        cv = cross_validate(x, y_train, num_classes=num_classes, grid=grid, folds=folds, seed=seed,
                 class_weights=class_weights, device=device, max_iter=max_iter, blocks=_blocks(features, cand),
                 keep_logits=keep_oof)
        acc = dict(cv.table).get(cv.l2, math.nan)
        rows.append(SweepRow(taps=cand, dim=x.shape[1], cv_accuracy=acc, l2=cv.l2))
        results.append((cand, x, cv, acc))
    cand, x, cv, note = _one_standard_error(results)
    fit = _refit(x, y_train, cand, cv, num_classes=num_classes, class_weights=class_weights,
                 device=device, max_iter=max_iter, blocks=_blocks(features, cand))
    if note:
        fit.notes.append(note)
    return fit, rows


def _simplicity(cand: list[str], dim: int) -> tuple:
    # The top-layer probe is the default every other candidate must beat; then fewer features.
    return (cand != [PRE_LOGITS], dim, len(cand))


def _one_standard_error(results: list[tuple[list[str], Tensor, CVResult, float]]) -> tuple[list[str], Tensor, CVResult, str | None]:
    """The simplest candidate whose CV accuracy is within one standard error of the best one's.

    Picking the top of many candidates by CV on a small training split overfits the selection
    (a held-out ultrasound set: the best of 6 tap combinations lost 4.6 points to the plain
    top-layer probe). The standard error is that of the paired per-image difference between the
    best and the candidate, from the same folds; NaN scores (CV skipped) rank last.
    """
    def score(r):
        return -math.inf if math.isnan(r[3]) else r[3]

    order = sorted(results, key=lambda r: _simplicity(r[0], r[1].shape[1]))
    best = max(order, key=lambda r: (score(r), -order.index(r)))
    if best[2].held_out is None:
        return (*best[:3], None)
    n = best[2].held_out.numel()
    for cand in order:
        if cand is best:
            return (*best[:3], None)
        if cand[2].held_out is None:
            continue
        diff = best[2].held_out - cand[2].held_out
        se = float(diff.std(correction=1)) / math.sqrt(n) if n > 1 else 0.0
        if score(best) - score(cand) <= se:
            return (*cand[:3], (f"one-standard-error rule: kept {'+'.join(cand[0])} (CV {score(cand):.4f}) over "
                               f"{'+'.join(best[0])} (CV {score(best):.4f}): the gain is within one standard error ({se:.4f})"))
    return (*best[:3], None)


def predict_logits(fit: ProbeFit, features: dict[str, Tensor]) -> Tensor:
    """Logits ``[N, C]`` (float32, CPU) of the probe on ``features`` (the same taps, any rows)."""
    x = _concat(features, fit.taps).cpu()
    if x.shape[1] != fit.dim:
        raise AdvisorError(f"taps {fit.taps} must have {fit.dim} columns in total as at fit time, got {x.shape[1]}")
    return fit.standardizer.apply(x) @ fit.W.T + fit.b

