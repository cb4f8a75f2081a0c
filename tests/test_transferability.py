"""LogME against the reference implementation and a direct evidence formula; k-NN; per-tap rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from advisor.measure.transferability import _EPS, TapEvidence, _logme_per_class, knn_accuracy, logme, per_tap_evidence

REFERENCE = json.loads((Path(__file__).parent / "assets" / "logme_reference.json").read_text())


def _blobs(n_per: int, d: int, classes: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(classes, d, generator=g, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), d, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("name", sorted(REFERENCE["cases"]))
def test_logme_matches_thuml_reference(name):
    case = REFERENCE["cases"][name]
    x = torch.tensor(case["features"], dtype=torch.float64)
    y = torch.tensor(case["labels"])
    assert x.shape == (case["N"], case["D"])
    got = logme(x, y)
    assert math.isclose(got, case["logme_icml"], rel_tol=1e-9), (got, case["logme_icml"])
    # float32 input is upcast inside; it still agrees well within 1e-4.
    assert math.isclose(logme(x.float(), y), case["logme_icml"], rel_tol=1e-4)


def _direct_log_evidence(f, y, alpha, beta):
    """log N(y | 0, I/beta + F F^T / alpha) - (alpha + beta) * eps / 2, straight from the definition."""
    n = f.shape[0]
    cov = torch.eye(n, dtype=torch.float64) / beta + f @ f.T / alpha
    chol = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(chol, y.unsqueeze(1), upper=False).squeeze(1)
    logdet = 2 * torch.log(torch.diagonal(chol)).sum()
    return float(-0.5 * (n * math.log(2 * math.pi) + logdet + z @ z) - (alpha + beta) * _EPS / 2)


@pytest.mark.parametrize("n,d", [(50, 12), (30, 80)])
def test_converged_evidence_equals_direct_formula_and_is_a_maximum(n, d):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (f[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).double()
    ev, alpha, beta = _logme_per_class(f, y.unsqueeze(1), max_iter=2000, tol=1e-12)
    a, b = float(alpha[0]), float(beta[0])
    best = _direct_log_evidence(f, y, a, b)
    assert math.isclose(float(ev[0]) * n, best, rel_tol=1e-8)
    for da, db in [(1.1, 1), (0.9, 1), (1, 1.1), (1, 0.9), (1.1, 1.1), (0.9, 0.9)]:
        assert _direct_log_evidence(f, y, a * da, b * db) < best
    # The paper's short schedule stops near, never above, the maximum.
    ev_default, _, _ = _logme_per_class(f, y.unsqueeze(1), max_iter=11, tol=0.01)
    assert float(ev_default[0]) <= float(ev[0]) + 1e-12


def test_logme_prefers_informative_features_and_ignores_row_order():
    x, y = _blobs(30, 16, 3, sep=2.0, seed=0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert logme(x, y) > logme(noise, y) + 0.1
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    assert math.isclose(logme(x[perm], y[perm]), logme(x, y), rel_tol=1e-9)


def test_logme_finite_when_n_below_d_and_validates_input():
    x = torch.randn(20, 300, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 4
    assert math.isfinite(logme(x, y))
    # An absent class (num_classes larger than the labels) is skipped, not scored.
    assert logme(x, y, num_classes=6) == logme(x, y)
    with pytest.raises(ValueError):
        logme(x, y, num_classes=3)
    with pytest.raises(ValueError):
        logme(x, y.float())
    with pytest.raises(ValueError):
        logme(x[0], y)


def test_knn_accuracy_separable_noise_and_deterministic():
    x, y = _blobs(40, 10, 4, sep=10.0, seed=0)
    assert knn_accuracy(x, y) > 0.99
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    acc = knn_accuracy(noise, y)
    assert 0.05 < acc < 0.5  # chance is 0.25 for 4 classes
    assert knn_accuracy(noise, y, seed=3) == knn_accuracy(noise, y, seed=3)
    with pytest.raises(ValueError):
        knn_accuracy(x, y, folds=1)


def test_per_tap_evidence_one_row_per_tap():
    x, y = _blobs(20, 8, 3, sep=4.0, seed=0)
    feats = {"stem": x[:, :3].float(), "head": x.float(), "pooled": x.reshape(60, 8, 1, 1), "unused": x}
    rows = per_tap_evidence(feats, y, taps=["head", "stem", "pooled"], k=3, folds=4)
    assert [r.tap for r in rows] == ["head", "stem", "pooled"]
    assert [r.dim for r in rows] == [8, 3, 8]
    assert all(isinstance(r, TapEvidence) and 0 <= r.knn_accuracy <= 1 and math.isfinite(r.logme) for r in rows)
    with pytest.raises(KeyError):
        per_tap_evidence(feats, y, taps=["missing"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    case = REFERENCE["cases"]["c_signal_N90_D20_C3"]
    x = torch.tensor(case["features"], dtype=torch.float64)
    y = torch.tensor(case["labels"])
    assert math.isclose(logme(x.cuda(), y.cuda()), case["logme_icml"], rel_tol=1e-6)
    assert knn_accuracy(x.cuda(), y.cuda()) == knn_accuracy(x, y)
