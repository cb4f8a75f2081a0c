"""The probe's learning curve, measured: cross-validated accuracy on nested subsamples of the profiling sample.

Fractions 1/8, 1/4, 1/2 and all of the sample's training images (each class subsampled alike,
the smaller sets inside the larger ones, seeded) are cross-validated with the same probe (the
L2 the full sample's CV chose). The points are what ``advisor.decide.curves`` fits a saturating
power law to. Imports advisor.measure.logistic and the measure models only.
"""

from __future__ import annotations

import torch

from advisor.measure.logistic import masked_logits, stratified_folds
from advisor.measure.models import CurvePoint

FRACTIONS = (0.125, 0.25, 0.5, 1.0)
FOLDS = 5


def nested_subsample(y: torch.Tensor, fraction: float, *, seed: int = 0) -> torch.Tensor:
    """Row indices of ``fraction`` of every class (at least 2 each); a smaller fraction's rows are inside a larger's."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for c in y.unique().tolist():
        mine = (y == c).nonzero().flatten()
        order = mine[torch.randperm(len(mine), generator=g)]
        rows.append(order[: max(2, round(fraction * len(mine)))])
    return torch.cat(rows).sort().values


def probe_curve(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, l2: float, seed: int = 0,
                full_accuracy: float | None = None) -> list[CurvePoint]:
    """One point per fraction with enough images to cross-validate: training images per class in a fold, accuracy.

    ``full_accuracy``: the whole sample's CV accuracy at ``l2`` when the caller already has it (the profile's
    own L2 selection ran that very cross-validation), so the largest point costs no fit. The other points'
    folds (each fraction's own stratified folds) are one batched solve.
    """
    points, pending = {}, []
    for fraction in FRACTIONS:
        rows = nested_subsample(y, fraction, seed=seed)
        ys = y[rows]
        per_class = torch.bincount(ys, minlength=num_classes).float()
        # The typical class must fill every fold; a rarer one is dealt into fewer (advisor.measure.logistic.fold_count).
        if float(per_class[per_class > 0].median()) < FOLDS or len(ys.unique()) < 2:
            continue
        point = dict(per_class=round(float(per_class.median()) * (FOLDS - 1) / FOLDS, 2), images=len(rows))
        if fraction == 1.0 and full_accuracy is not None:
            points[fraction] = CurvePoint(accuracy=round(full_accuracy, 4), **point)
        else:
            pending.append((fraction, rows, stratified_folds(ys, FOLDS, seed=seed), point))
    if pending:
        # Probe (fraction, fold) trains on the fraction's rows outside that fold; every fraction's rows are scored
        # by the probe of their own fold, as cross_validate would (unweighted accuracy, pooled over folds).
        # The subsamples are nested: the largest pending one holds every row any probe reads.
        union = pending[-1][1]
        where = torch.full((len(y),), -1, dtype=torch.long)
        where[union] = torch.arange(len(union))
        masks = []
        for _, rows, fold, _ in pending:
            for f in range(FOLDS):
                m = torch.zeros(len(union), dtype=torch.bool)
                m[where[rows[fold != f]]] = True
                masks.append(m)
        logits = masked_logits(x[union].float(), y[union], torch.stack(masks), num_classes=num_classes, l2=l2,
                               max_iter=100)
        for i, (fraction, rows, fold, point) in enumerate(pending):
            probe = i * FOLDS + fold  # the probe that held each of the fraction's rows out
            hits = logits[where[rows], probe].argmax(dim=1) == y[rows]
            points[fraction] = CurvePoint(accuracy=round(float(hits.float().mean()), 4), **point)
    return [points[f] for f in FRACTIONS if f in points]
