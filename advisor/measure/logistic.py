"""Multinomial logistic regression on feature matrices, and the stratified folds it is cross-validated on.

The numeric core shared by the profiler (the flip check) and the probe strategies:

* ``fit_logistic``: mean (optionally class-weighted) cross-entropy + ``l2 / 2 * ||W||^2`` (bias
  unpenalised), full-batch L-BFGS.
* ``cv_select_l2``: stratified k-fold choice of ``l2`` on the training split, features
  standardised inside each fold, warm-started along the regularisation path.
* ``stratified_folds``: the one fold assignment every cross-validation here uses.

Solves run in float32: measured against float64 on 3,500 x 1,280 and 60 x 10 problems, both
reach the same loss to 6 digits and gradient norms ~1e-5, and float32 is twice as fast. CPU
results are bit-for-bit reproducible. Outputs are float32 on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from advisor.core.errors import AdvisorError

# Log-spaced, denser between 1e-3 and 1e-1 where probes on pretrained features usually land
# (for mean cross-entropy, l2 ~ 1 / (C * N) in scikit-learn's terms, i.e. C = 1 at N ~ 300..3000).
# 10 is the "nothing learnable" anchor: the weights are ~0 and the bias predicts the prior.
DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0, 10.0)
MIN_STD = 1e-6  # constant features get this std, so standardising them gives 0, not NaN
_DTYPE = torch.float32


class Standardizer(NamedTuple):
    """Affine map fitted on training rows: ``(x - mean) / std``, one mean per column, one scale per block."""

    mean: Tensor  # [D]
    std: Tensor  # [D], clamped >= MIN_STD; equal within a block of columns (a tap's features)

    def apply(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)


def fit_standardizer(x: Tensor, *, blocks: Sequence[int] | None = None, per_column: bool = False) -> Standardizer:
    """Each column's mean, and one scale per block of columns: the block's RMS (population) deviation.

    One scale per block, not per column: on a handful of rows a column that barely moves is blown up
    to unit variance and the probe leans on it: re-measured on the track record, a shared scale lifts the
    linear probe by 10 points on average at 2 images per class, 5 at 5, nothing on full sets
    (docs/forecast_error.md).
    A shared scale keeps the backbone's geometry: the L2 penalty is isotropic in its feature space.
    ``blocks``: the widths of consecutive column blocks, one per tap of a concatenation (default: one
    block), so a tap with larger activations does not set the scale of another. ``per_column``: each
    column's own deviation instead (the recipe before 2026-12-07).
    """
    _check_matrix(x, "x")
    widths = [x.shape[1]] if blocks is None else [int(w) for w in blocks]
    if sum(widths) != x.shape[1] or any(w < 1 for w in widths):
        raise AdvisorError(f"blocks must be positive widths adding up to the {x.shape[1]} columns, got {list(widths)}")
    mean = x.mean(dim=0)
    var = x.var(dim=0, correction=0)
    if per_column:
        return Standardizer(mean, var.sqrt().clamp_min(MIN_STD))
    std = torch.cat([part.mean().sqrt().expand(part.shape[0]) for part in var.split(widths)])
    return Standardizer(mean, std.clamp_min(MIN_STD))


# --------------------------------------------------------------------------- validation


def _check_matrix(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise AdvisorError(f"{name} must be a 2-D tensor [N, D], got {got}")
    if x.shape[0] == 0:
        raise AdvisorError(f"{name} must have at least one row, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise AdvisorError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_labels(y: Tensor, n: int, num_classes: int) -> None:
    if num_classes < 2:
        raise AdvisorError(f"num_classes must be at least 2, got {num_classes}")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise AdvisorError(f"labels must be a 1-D integer tensor, got {got}")
    if y.shape[0] != n:
        raise AdvisorError(f"labels must have one entry per feature row ({n}), got {y.shape[0]}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise AdvisorError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")


def _check_class_weights(w: Tensor | None, num_classes: int, y: Tensor) -> None:
    if w is None:
        return
    if not isinstance(w, Tensor) or tuple(w.shape) != (num_classes,):
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise AdvisorError(f"class_weights must have shape ({num_classes},), got {got}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise AdvisorError(f"class_weights must be finite, non-negative and not all zero, got {w.tolist()}")
    if float(w.cpu()[torch.unique(y.long().cpu())].sum()) <= 0:
        raise AdvisorError(f"class_weights must be positive for at least one class present in the labels, got {w.tolist()}")


def _check_grid(grid: Sequence[float]) -> list[float]:
    values = sorted({float(v) for v in grid})
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise AdvisorError(f"the l2 grid must be a non-empty list of finite values >= 0, got {list(grid)}")
    return values


# --------------------------------------------------------------------------- logistic regression


def class_weights_from(y: Tensor, num_classes: int) -> Tensor:
    """Inverse class frequency, scaled to mean 1 over the classes present; absent classes get 0."""
    counts = torch.bincount(y.long().cpu(), minlength=num_classes)[:num_classes].double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = 1.0 / counts[present]
    w[present] /= w[present].mean()
    return w.float()


def _objective(x: Tensor, y: Tensor, W: Tensor, b: Tensor, l2: float, cw: Tensor | None) -> Tensor:
    # F.cross_entropy with weights divides by the summed sample weights, so the data term stays
    # on the same scale with or without class weights and one l2 grid serves both.
    return F.cross_entropy(x @ W.T + b, y, weight=cw) + 0.5 * l2 * (W * W).sum()


def fit_logistic(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    l2: float,
    class_weights: Tensor | None = None,
    max_iter: int = 100,
    device: str | torch.device = "cpu",
    init: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on already-standardised ``x``; returns ``(W [C, D], b [C])`` on CPU.

    Minimises mean (class-weighted if given) cross-entropy + ``l2 / 2 * ||W||^2`` with full-batch
    L-BFGS (strong Wolfe line search), starting from zeros or from ``init``.
    """
    _check_matrix(x, "x")
    _check_labels(y, x.shape[0], num_classes)
    _check_class_weights(class_weights, num_classes, y)
    if not math.isfinite(l2) or l2 < 0:
        raise AdvisorError(f"l2 must be a finite value >= 0, got {l2}")
    if max_iter < 1:
        raise AdvisorError(f"max_iter must be at least 1, got {max_iter}")
    dev = torch.device(device)
    W, b = _solve(
        x.to(dev, _DTYPE), y.to(dev, torch.long), num_classes=num_classes, l2=float(l2),
        cw=None if class_weights is None else class_weights.to(dev, _DTYPE), max_iter=max_iter, init=init,
    )
    return W.float().cpu(), b.float().cpu()


def _lbfgs_options(max_iter: int) -> dict:
    # tolerance_grad bounds the largest gradient entry: 1e-6 is far below anything that moves a
    # prediction, and stops well-conditioned (large-l2) solves after a handful of iterations.
    return dict(lr=1.0, max_iter=max_iter, history_size=10, tolerance_grad=1e-6, tolerance_change=1e-12,
                line_search_fn="strong_wolfe")


def _solve(
    x: Tensor, y: Tensor, *, num_classes: int, l2: float, cw: Tensor | None, max_iter: int,
    init: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """L-BFGS on inputs already on their device in ``_DTYPE``; results stay there (only ``init`` is checked)."""
    c, d = num_classes, x.shape[1]
    if init is None:
        W = torch.zeros(c, d, dtype=x.dtype, device=x.device)
        b = torch.zeros(c, dtype=x.dtype, device=x.device)
    else:
        W0, b0 = init
        if tuple(W0.shape) != (c, d) or tuple(b0.shape) != (c,):
            raise AdvisorError(
                f"init must be (W [{c}, {d}], b [{c}]), got ({list(W0.shape)}, {list(b0.shape)})"
            )
        W, b = W0.to(x.device, x.dtype).clone(), b0.to(x.device, x.dtype).clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], **_lbfgs_options(max_iter))

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        loss = _objective(x, y, W, b, l2, cw)
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def _fold_logits(x: Tensor, W: Tensor, b: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """Logits ``[N, k, C]`` of k probes, probe f applied to ``x`` standardised with fold f's statistics.

    ``((x - m) / s) @ W.T + b == x @ (W / s).T + (b - (W / s) @ m)``: the raw features are read
    once for all folds instead of materialising k standardised copies.
    """
    k, c, d = W.shape
    V = W / scales[:, None, :]
    bias = b - (V * means[:, None, :]).sum(dim=2)
    return (x @ V.reshape(k * c, d).T).view(-1, k, c) + bias


def _solve_folds(
    x: Tensor, y: Tensor, train: Tensor, means: Tensor, scales: Tensor, *, num_classes: int, l2: float,
    cw: Tensor | None, max_iter: int, init: tuple[Tensor, Tensor] | None,
) -> tuple[Tensor, Tensor]:
    """All k CV folds as one L-BFGS problem; returns ``W [k, C, D]``, ``b [k, C]``.

    The objective is the sum of the k fold objectives, which share no parameters, so its optimum
    is each fold's own optimum; one batched matrix product per step replaces k thin ones.
    """
    k, d = train.shape[0], x.shape[1]
    sw = (torch.ones_like(y, dtype=x.dtype) if cw is None else cw[y])[None, :] * train  # [k, N]
    # Normalised per fold like F.cross_entropy(weight=...): sum of weights, not of rows.
    sw = (sw / sw.sum(dim=1, keepdim=True)).T.contiguous()  # [N, k]
    if init is None:
        W = torch.zeros(k, num_classes, d, dtype=x.dtype, device=x.device)
        b = torch.zeros(k, num_classes, dtype=x.dtype, device=x.device)
    else:
        W, b = init[0].clone(), init[1].clone()
    W.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], **_lbfgs_options(max_iter))
    target = y[:, None, None].expand(-1, k, 1)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        logp = torch.log_softmax(_fold_logits(x, W, b, means, scales), dim=2)
        loss = -(logp.gather(2, target).squeeze(2) * sw).sum() + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


# --------------------------------------------------------------------------- cross-validation


def stratified_folds(y: Tensor, folds: int, *, seed: int = 0) -> Tensor:
    """Fold id in ``[0, folds)`` for every row: each class is shuffled and dealt round-robin.

    Dealing class after class continues the round-robin where the previous class stopped, so
    fold sizes differ by at most one overall as well as per class.
    """
    g = torch.Generator().manual_seed(seed)
    y_cpu = y.long().cpu()
    order = []
    for cls in torch.unique(y_cpu).tolist():
        idx = torch.nonzero(y_cpu == cls).flatten()
        order.append(idx[torch.randperm(idx.numel(), generator=g)])
    fold_of = torch.empty(y_cpu.numel(), dtype=torch.long)
    fold_of[torch.cat(order)] = torch.arange(y_cpu.numel()) % folds
    return fold_of.to(y.device)


def fold_count(y: Tensor, folds: int) -> tuple[int, str | None]:
    """Stratified folds that labels ``y`` allow (0: none), and a note when some class cannot be in every fold.

    ``folds``, fewer only when even the largest class has fewer images. A class with fewer images than folds is
    dealt into fewer folds (``stratified_folds`` continues its round-robin; scikit-learn's StratifiedKFold does
    the same): one rare class no longer makes the whole set 2-fold or stops cross-validation. A class with a
    single image is held out only by the probe that never saw its class, so it counts as a miss, as in
    scikit-learn: on seeded 1-shot classes of the shared sets that predicted held-out accuracy better than
    leaving it unscored (benchmarks/tiny_class.py, chosen leave-one-dataset-out); the note says so.
    """
    counts = torch.bincount(y.long().cpu())
    counts = counts[counts > 0]
    largest = int(counts.max()) if len(counts) else 0
    if largest < 2:
        return 0, f"cross-validation needs a class with at least 2 images, the largest has {largest}"
    k = min(folds, largest)
    notes = [] if k == folds else [f"{k} CV folds instead of {folds}: the largest class has {largest} images"]
    fewer, single = int((counts < k).sum()), int((counts == 1).sum())
    if fewer:
        notes.append(f"{fewer} class(es) with fewer than {k} images held out in fewer folds"
                     + (f"; {single} with a single image count as a miss (the probe that holds it out has never "
                        "seen its class)" if single else ""))
    return k, "; ".join(notes) or None


class CVResult(NamedTuple):
    """What ``cross_validate`` measured: the chosen ``l2``, (l2, accuracy) per grid value, and why CV was skipped."""

    l2: float
    table: list[tuple[float, float]]
    folds: int  # 0 when CV was skipped
    note: str | None
    held_out: Tensor | None = None  # [N] weighted 1/0 out-of-fold hits at the chosen l2 (None: CV skipped)
    # [N, C] each row's logits from the fold probe that held it out, at the chosen l2 (cross_validate(keep_logits=True))
    held_out_logits: Tensor | None = None


def cross_validate(
    x: Tensor, y: Tensor, *, num_classes: int, grid: Sequence[float], folds: int, seed: int,
    class_weights: Tensor | None, device: str | torch.device, max_iter: int, standardize: bool = True,
    blocks: Sequence[int] | None = None, keep_logits: bool = False,
) -> CVResult:
    """Stratified ``folds``-fold cross-validation of ``fit_logistic`` over the ``l2`` grid (see ``cv_select_l2``).

    ``keep_logits``: also return every row's out-of-fold logits at the chosen ``l2`` (``held_out_logits``: what a
    probe that never saw the row says of it; strategies/temperature.py calibrates a small probe on them)."""
    _check_matrix(x, "x")
    _check_labels(y, x.shape[0], num_classes)
    _check_class_weights(class_weights, num_classes, y)
    values = _check_grid(grid)
    if folds < 2:
        raise AdvisorError(f"folds must be at least 2, got {folds}")
    if max_iter < 1:
        raise AdvisorError(f"max_iter must be at least 1, got {max_iter}")
    k, note = fold_count(y, folds)
    if k == 0:
        middle = values[len(values) // 2]
        return CVResult(middle, [], 0, f"{note}: l2 = {middle:g} (middle of the grid) used without selection")

    dev = torch.device(device)
    xd = x.to(dev, _DTYPE)
    # Fold standardisation is folded into the weights (see _fold_logits), which subtracts two
    # large terms when features sit far from 0; centring once first keeps float32 exact enough.
    # A constant shift changes no fold's standardised features.
    xd = xd - xd.mean(dim=0)
    yd = y.to(dev, torch.long)
    cw = None if class_weights is None else class_weights.to(dev, _DTYPE)
    fold_of = stratified_folds(y, k, seed=seed).to(dev)
    train = fold_of[None, :] != torch.arange(k, device=dev)[:, None]  # [k, N]
    # Scored with the same class weights as the loss: when they say the minority class matters,
    # the choice of l2 should not reward ignoring it. Without weights this is plain accuracy.
    sample_w = torch.ones_like(yd, dtype=_DTYPE) if cw is None else cw[yd]
    if standardize:
        stds = [fit_standardizer(xd[train[f]], blocks=blocks) for f in range(k)]
        means, scales = torch.stack([s.mean for s in stds]), torch.stack([s.std for s in stds])
    else:  # the caller's features are already on the scale the final fit uses
        means = torch.zeros(k, xd.shape[1], dtype=xd.dtype, device=dev)
        scales = torch.ones(k, xd.shape[1], dtype=xd.dtype, device=dev)
    # Out-of-fold hits per l2, pooled over folds: every row is held out once, and equal counts
    # give exactly equal scores, so ties between l2 values (and taps) are real ties.
    hits = torch.zeros(len(values), dtype=torch.float64, device=dev)
    held_out = (~train).T.double() * sample_w[:, None].double()  # [N, k]
    per_row = [None] * len(values)
    init, kept, kept_hits = None, None, None
    for i in reversed(range(len(values))):  # strong -> weak: each solve starts near its optimum
        W, b = _solve_folds(xd, yd, train, means, scales, num_classes=num_classes, l2=values[i], cw=cw,
                            max_iter=max_iter, init=init)
        init = (W, b)
        logits = _fold_logits(xd, W, b, means, scales)  # [N, k, C]
        correct = (logits.argmax(dim=2) == yd[:, None]).double()  # [N, k]
        hits[i] = (correct * held_out).sum()
        per_row[i] = (correct * held_out).sum(dim=1).cpu()
        # the same strict-improvement scan from the largest l2 as the choice below, so this is the chosen l2's
        if keep_logits and (kept_hits is None or hits[i] > kept_hits):
            kept_hits, kept = hits[i], logits[torch.arange(len(yd), device=dev), fold_of].float().cpu()
    scores = (hits / sample_w.double().sum()).cpu().tolist()
    table = [(l2, float(s)) for l2, s in zip(values, scores)]
    # Ties go to the larger l2 (the simpler model): scan from the largest, keep strict improvements.
    best_i = len(values) - 1
    for i in reversed(range(len(values) - 1)):
        if scores[i] > scores[best_i]:
            best_i = i
    return CVResult(values[best_i], table, k, note, per_row[best_i] / float(sample_w.mean()), kept)


def cv_select_l2(
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    grid: Sequence[float] = DEFAULT_L2_GRID,
    folds: int = 5,
    seed: int = 0,
    class_weights: Tensor | None = None,
    device: str | torch.device = "cpu",
    max_iter: int = 100,
    standardize: bool = True,
) -> tuple[float, list[tuple[float, float]]]:
    """Stratified k-fold choice of ``l2`` on raw training features (standardised inside each fold,
    unless ``standardize=False``: then the features are used as given).

    Returns ``(best l2, [(l2, CV accuracy), ...])`` in ascending ``l2``; ties go to the larger
    ``l2``. The accuracy is pooled over held-out rows (class-weighted when ``class_weights`` is
    given). Folds follow :func:`fold_count` (a rare class is held out in fewer folds); only when no class
    has two images is CV skipped and the middle grid value returned with an empty table (``fit_probe``
    records why).
    """
    res = cross_validate(x, y, num_classes=num_classes, grid=grid, folds=folds, seed=seed,
              class_weights=class_weights, device=device, max_iter=max_iter, standardize=standardize)
    return res.l2, res.table


def masked_logits(
    x: Tensor, y: Tensor, train: Tensor, *, num_classes: int, l2: float, class_weights: Tensor | None = None,
    max_iter: int = 100,
) -> Tensor:
    """Logits ``[N, P, C]`` of P probes at one ``l2``, probe p fitted on the rows where ``train[p]`` is true.

    All P are one batched L-BFGS problem (see ``_solve_folds``): out-of-fold predictions, or CV on
    nested subsamples, cost one solve instead of P. The features are standardised once, with the
    statistics of all N rows (no labels are read; the held-out rows' features are known to the
    caller anyway), so every probe sees the same features and its optimum lies in the span of the
    N rows (an L2-penalised linear model gains nothing from directions orthogonal to its data):
    with N < D the probes are solved exactly in that N-dimensional basis, D/N times fewer
    parameters for L-BFGS to carry. The caller reads each row's logits under the probes that did
    not see it.
    """
    _check_matrix(x, "x")
    _check_labels(y, x.shape[0], num_classes)
    _check_class_weights(class_weights, num_classes, y)
    if train.dim() != 2 or train.shape[1] != x.shape[0] or not bool(train.any(dim=1).all()):
        raise AdvisorError(f"train must be a [P, {x.shape[0]}] mask with rows in every probe, got {tuple(train.shape)}")
    # Standardised once with all N rows (a whole sample, not a handful), per column: the label check's
    # figures (docs/insight.md) were measured so.
    z = fit_standardizer(x.float(), per_column=True).apply(x.float()).to(_DTYPE)
    if z.shape[0] < z.shape[1]:
        # z = U S V^T: the rows' coordinates in the basis V are U S, and W = W_z V^T has the same penalty.
        u, sv, _ = torch.linalg.svd(z, full_matrices=False)
        keep = sv > sv[0] * 1e-6
        z = u[:, keep] * sv[keep]
    p, d = train.shape[0], z.shape[1]
    zeros, ones = torch.zeros(p, d, dtype=_DTYPE), torch.ones(p, d, dtype=_DTYPE)
    cw = None if class_weights is None else class_weights.to(_DTYPE)
    W, b = _solve_folds(z, y.long(), train.bool(), zeros, ones, num_classes=num_classes, l2=float(l2), cw=cw,
                        max_iter=max_iter, init=None)
    return _fold_logits(z, W, b, zeros, ones).detach()
