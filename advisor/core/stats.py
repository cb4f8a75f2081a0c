"""Distribution distances, in torch so they run on the GPU when there is one; the binomial interval of an accuracy;
the calibration error of predicted probabilities.

All functions take ``[n, d]`` feature matrices (or moments) and compute in float64: Fréchet
distances and MMD estimates lose their meaning to float32 round-off at d ~ 1000.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def frechet_distance_features(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between the sample Gaussians of the rows of ``x`` and ``y``.

    With A = Xc^T / sqrt(n-1) and B = Yc^T / sqrt(m-1), C1 C2 = A A^T B B^T has the same non-zero
    eigenvalues as (A^T B)(A^T B)^T, so tr sqrt(C1^1/2 C2 C1^1/2) is the nuclear norm of the
    n x m matrix A^T B: exact, and much cheaper than d x d eigendecompositions when n, m < d.
    """
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cross = torch.linalg.svdvals(xc @ yc.T).sum() / ((n - 1) * (m - 1)) ** 0.5
    tr = xc.pow(2).sum() / (n - 1) + yc.pow(2).sum() / (m - 1)
    return float((mx - my).pow(2).sum() + tr - 2 * cross)


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, *, degree: int = 3, coef0: float = 1.0) -> torch.Tensor:
    """k(x, y) = (x.y / d + coef0)^degree, the kernel of KID (Binkowski et al., 2018)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, *, kernel: Callable = polynomial_kernel) -> float:
    """Unbiased estimate of MMD^2 (KID with the default kernel); its expectation is 0 for equal distributions."""
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 rows on each side, got {n} and {m}")
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, *, rounds: int = 2000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval, resampling the pairs.

    ``a`` and ``b`` are per-item scores of two methods on the same items (e.g. 1/0 correct on
    each validation image): resampling pairs keeps their correlation, so two strategies that err
    on the same images are told apart far better than by two separate accuracy intervals.
    """
    a, b = a.double().flatten(), b.double().flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty score vectors of one length, got {a.numel()} and {b.numel()}")
    d = a - b
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d.numel(), (rounds, d.numel()), generator=g)
    means = d[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def wilson_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95 % by default) of an accuracy of ``correct`` out of ``n``; (0, 1) for n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017)
DIAGRAM_BINS = 10


def _confidence_bins(logits: torch.Tensor, y: torch.Tensor, bins: int) -> list[tuple[float, float, int]]:
    """Per non-empty equal-width bin of the top-1 probability: (mean confidence, accuracy, images)."""
    conf, pred = torch.softmax(logits.double(), 1).max(1)
    correct = (pred == y).double()
    which = torch.clamp((conf * bins).long(), max=bins - 1)
    return [(float(conf[m].mean()), float(correct[m].mean()), int(m.sum()))
            for m in (which == b for b in range(bins)) if m.any()]


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, *, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width bins of the top-1 probability, weighted by images."""
    if not len(y):
        return float("nan")
    return sum(n * abs(acc - conf) for conf, acc, n in _confidence_bins(logits, y, bins)) / len(y)


def reliability(logits: torch.Tensor, y: torch.Tensor, *, bins: int = DIAGRAM_BINS) -> list[tuple[float, float, int]]:
    """Per equal-width bin of the top-1 probability: (mean confidence, accuracy, images); empty bins left out."""
    return [(round(conf, 4), round(acc, 4), n) for conf, acc, n in _confidence_bins(logits, y, bins)]
