"""Label-aware transferability evidence for frozen features: LogME and k-NN accuracy per tap.

* ``logme``: the LogME score (You et al., ICML 2021). For every class, a one-vs-rest 0/1 target
  is regressed on the features with Bayesian linear regression (prior ``m ~ N(0, I/alpha)``,
  noise ``N(0, 1/beta)``); the log evidence ``log p(y | F, alpha, beta)`` is maximised over
  ``alpha`` and ``beta`` with the paper's MacKay fixed-point updates, divided by N, and
  averaged over classes. Higher means the features explain the labels better with a linear
  model. Checked against the reference implementation (thuml/LogME) in the tests.
* ``knn_accuracy``: stratified k-fold k-NN accuracy with cosine similarity on centred features.
* ``per_tap_evidence``: both, for each named feature tap.

Everything runs in float64 on the device the features live on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel

from advisor.measure.logistic import stratified_folds

# The reference adds this to the alpha/beta denominators so a perfect fit (N < D) keeps
# alpha and beta finite. That is the same as maximising evidence - (alpha + beta) * EPS / 2,
# which the reference reports; we keep both so the scores agree with it.
_EPS = 1e-5


class TapEvidence(BaseModel):
    """Transferability evidence for the features of one tap (layer)."""

    tap: str
    dim: int
    logme: float
    knn_accuracy: float


def _check(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be [N] with N={features.shape[0]}, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if features.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative class indices")


def _logme_per_class(
    features: torch.Tensor, targets: torch.Tensor, *, max_iter: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximised log evidence / N, alpha and beta for each column of ``targets`` [N, C]."""
    f = features.detach().to(torch.float64)
    y = targets.to(device=f.device, dtype=torch.float64)
    n, d = f.shape
    # Thin SVD: k = min(N, D) singular values. For N < D this is the paper's N x N route; the
    # D - k directions with zero singular value only add (D - k) * log(alpha) to log|A| below.
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    k = s.numel()
    sigma = (s * s).unsqueeze(1)  # [k, 1] eigenvalues of F^T F
    x = u.T @ y  # [k, C] targets in the singular basis
    x2 = x * x
    # Part of y outside span(F), computed directly: ||y||^2 - ||x||^2 cancels badly.
    res_out = ((y - u @ x) ** 2).sum(0)

    c = y.shape[1]
    alpha = torch.ones(c, dtype=torch.float64, device=f.device)
    beta = torch.ones_like(alpha)
    m2 = torch.zeros_like(alpha)
    r2 = torch.zeros_like(alpha)
    active = torch.ones(c, dtype=torch.bool, device=f.device)
    for _ in range(max_iter):
        lam = alpha / beta
        gamma = (sigma / (sigma + lam)).sum(0)  # effective number of parameters
        new_m2 = (sigma * x2 / (sigma + lam) ** 2).sum(0)  # ||m||^2, m the posterior mean
        new_r2 = ((lam / (sigma + lam)) ** 2 * x2).sum(0) + res_out  # ||F m - y||^2
        new_alpha = gamma / (new_m2 + _EPS)
        new_beta = (n - gamma) / (new_r2 + _EPS)
        # Classes stop independently, as in the reference, so one slow class cannot move the others.
        m2 = torch.where(active, new_m2, m2)
        r2 = torch.where(active, new_r2, r2)
        alpha = torch.where(active, new_alpha, alpha)
        beta = torch.where(active, new_beta, beta)
        active = active & ((new_alpha / new_beta - lam).abs() / lam >= tol)
        if not bool(active.any()):
            break
    # As in the reference, m2/r2 belong to the last lambda before the final alpha/beta update;
    # the evidence is stationary there, so the lag is second order.
    log_det = torch.log(alpha + beta * sigma).sum(0) + (d - k) * torch.log(alpha)
    evidence = (
        d / 2.0 * torch.log(alpha)
        + n / 2.0 * torch.log(beta)
        - 0.5 * log_det
        - beta / 2.0 * (r2 + _EPS)
        - alpha / 2.0 * (m2 + _EPS)
        - n / 2.0 * math.log(2 * math.pi)
    )
    return evidence / n, alpha, beta


def logme(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    max_iter: int = 11,
    tol: float = 0.01,
) -> float:
    """LogME score of ``features`` [N, D] for integer ``labels`` [N] (higher = more transferable).

    Mean over the classes present of the maximised one-vs-rest log evidence divided by N.
    ``max_iter``/``tol`` default to the paper's schedule (alpha = beta = 1, stop when
    alpha/beta moves < 1 %, at most 11 updates), which the reference implementation uses;
    tighten them to converge fully. Absent classes (with ``num_classes``) are skipped: an
    all-zero target says nothing about the features.
    """
    _check(features, labels)
    labels = labels.to(device=features.device, dtype=torch.long)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if int(labels.max()) >= c:
        raise ValueError(f"label {int(labels.max())} out of range for num_classes={c}")
    targets = torch.nn.functional.one_hot(labels, c)
    present = targets.sum(0) > 0
    evidence, _, _ = _logme_per_class(features, targets[:, present], max_iter=max_iter, tol=tol)
    return float(evidence.mean())


def knn_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    k: int = 5,
    folds: int = 5,
    seed: int = 0,
    chunk: int = 4096,
) -> float:
    """Stratified ``folds``-fold k-NN accuracy (cosine similarity, majority vote), in [0, 1].

    Features are centred on their mean (label-free) and L2-normalised. Ties in the vote go to
    the class with the larger summed similarity. Deterministic for a given ``seed``.
    """
    _check(features, labels)
    if k < 1:
        raise ValueError("k must be >= 1")
    n = features.shape[0]
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be in [2, N={n}], got {folds}")
    f = features.detach().to(torch.float64)
    f = torch.nn.functional.normalize(f - f.mean(0, keepdim=True), dim=1)
    labels = labels.to(device=f.device, dtype=torch.long)
    c = int(labels.max()) + 1
    fold = stratified_folds(labels, folds, seed=seed)
    correct = 0
    for i in range(folds):
        test = torch.nonzero(fold == i).squeeze(1)
        train = torch.nonzero(fold != i).squeeze(1)
        if test.numel() == 0:
            continue
        kk = min(k, train.numel())
        train_f, train_y = f[train], labels[train]
        for start in range(0, test.numel(), chunk):  # bounds the [test, train] similarity matrix
            rows = test[start : start + chunk]
            sim, nn = (f[rows] @ train_f.T).topk(kk, dim=1)
            votes = torch.zeros(rows.numel(), c, dtype=torch.float64, device=f.device)
            votes.scatter_add_(1, train_y[nn], torch.ones_like(sim))
            # Summed similarity / (k + 1) lies in (-1, 1) and never overturns a count difference.
            tie = torch.zeros_like(votes).scatter_add_(1, train_y[nn], sim) / (kk + 1)
            correct += int(((votes + tie).argmax(1) == labels[rows]).sum())
    return correct / n


def per_tap_evidence(
    features: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    *,
    taps: Sequence[str],
    k: int = 5,
    folds: int = 5,
    seed: int = 0,
) -> list[TapEvidence]:
    """LogME and k-NN accuracy for each tap in ``taps`` (in that order)."""
    missing = [t for t in taps if t not in features]
    if missing:
        raise KeyError(f"no features for taps: {', '.join(missing)}")
    n = int(labels.shape[0])
    if n < 2:
        return []  # nothing to cross-validate on
    folds = min(folds, n)  # a handful of images (a k-shot set): fewer folds, not an error
    rows = []
    for tap in taps:
        f = features[tap]
        if f.ndim > 2:  # e.g. pooled maps left as [N, C, 1, 1]
            f = f.flatten(1)
        rows.append(
            TapEvidence(
                tap=tap,
                dim=int(f.shape[1]),
                logme=logme(f, labels),
                knn_accuracy=knn_accuracy(f, labels, k=k, folds=folds, seed=seed),
            )
        )
    return rows
