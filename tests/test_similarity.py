"""Similarity signals against closed-form cases and brute-force references."""

from __future__ import annotations

import json
import math
import typing

import pytest
import torch
from safetensors.torch import save_file

from advisor.backbones import PRE_LOGITS, create_backbone
from advisor.core.stats import frechet_distance_features, mmd2_unbiased
from advisor.data.scan import scan_dataset
from advisor.measure.features import GREY, ExtractionSummary, FeatureSet, bn_names, extract_features
from advisor.measure.models import DepthShift, Interval, SimilarityReport
from advisor.measure.similarity import (
    DEFAULT_SCALES,
    MIN_RUNNING_VAR,
    REFERENCE_DIR,
    REFERENCE_FORMAT,
    SMALL_SHIFT,
    Reference,
    _pattern,
    bn_shift_weighted,
    bootstrap_weights,
    frechet_with_null,
    greyscale_share,
    kid_weighted,
    load_reference,
    measure_similarity,
    reference_path,
)

ALLOWED_PATTERNS = set(typing.get_args(SimilarityReport.model_fields["shift_pattern"].annotation))


# The textbook Fréchet distance on explicit moments: the reference the fast feature form is checked against.


def mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and unbiased covariance of the rows of ``x``."""
    x = x.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / max(x.shape[0] - 1, 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||mu1-mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), the Fréchet (2-Wasserstein) distance of Gaussians.

    The symmetric form keeps the matrix under the square root PSD, so eigh is exact where
    scipy's sqrtm of the non-symmetric C1 C2 needs an imaginary-part clean-up.
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    s1 = _sqrt_psd(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_psd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def _summary(n: int, name: str = "synthetic") -> ExtractionSummary:
    return ExtractionSummary(
        backbone=name, weights_digest="0" * 16, transform_digest="0" * 16, taps=[], tap_channels={},
        images=n, from_cache=0, computed=n, failed=[], device="cpu", seconds=0.0, images_per_s=None,
        cache_dir=None,
    )


def _feature_set(features: dict[str, torch.Tensor]) -> FeatureSet:
    n = next(iter(features.values())).shape[0]
    return FeatureSet(paths=[f"img{i}.png" for i in range(n)], index=list(range(n)), features=features,
                      summary=_summary(n))


@pytest.fixture
def tiny():
    return create_backbone("test/tiny-cnn", pretrained=False, seed=0)


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_identical_gaussians_is_zero():
    mu = torch.randn(8, generator=_gen(0), dtype=torch.float64)
    cov = _random_psd(8, 1)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-8


def test_frechet_same_covariance_is_squared_mean_distance():
    mu1 = torch.randn(8, generator=_gen(0), dtype=torch.float64)
    mu2 = torch.randn(8, generator=_gen(1), dtype=torch.float64)
    cov = _random_psd(8, 2)
    expected = float((mu1 - mu2).pow(2).sum())
    assert expected > 1.0
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_diagonal_covariances_closed_form():
    mu1 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    mu2 = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    a = torch.tensor([1.0, 4.0, 0.25, 9.0], dtype=torch.float64)
    b = torch.tensor([4.0, 1.0, 1.0, 9.0], dtype=torch.float64)
    expected = float((mu1 - mu2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum())
    # 1 + 0 + 4 + 0.25 = 5.25, plus 1 + 1 + 0.25 + 0 = 2.25
    assert expected == pytest.approx(7.5)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-9)


def test_frechet_is_symmetric():
    mu1, mu2 = torch.randn(6, generator=_gen(3)), torch.randn(6, generator=_gen(4))
    c1, c2 = _random_psd(6, 5), _random_psd(6, 6)
    d12, d21 = frechet_distance(mu1, c1, mu2, c2), frechet_distance(mu2, c2, mu1, c1)
    assert d12 > 0.1
    assert d12 == pytest.approx(d21, rel=1e-9, abs=1e-9)


def test_frechet_matches_brute_force_eig_of_product():
    d = 10
    mu1 = torch.randn(d, generator=_gen(7), dtype=torch.float64)
    mu2 = torch.randn(d, generator=_gen(8), dtype=torch.float64)
    c1, c2 = _random_psd(d, 9), _random_psd(d, 10)
    # tr sqrt(C1 C2) = sum of the square roots of the eigenvalues of C1 C2 (real, >= 0 for PSD C1, C2).
    eig = torch.linalg.eigvals(c1 @ c2)
    cross = eig.real.clamp_min(0).sqrt().sum()
    expected = float((mu1 - mu2).pow(2).sum() + torch.trace(c1) + torch.trace(c2) - 2 * cross)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_frechet_of_features_equals_frechet_of_their_moments():
    x = torch.randn(60, 5, generator=_gen(11))
    y = torch.randn(80, 5, generator=_gen(12)) * 1.5 + 0.3
    mu, cov = mean_cov(x)
    # mean_cov is the sample mean and the unbiased covariance
    torch.testing.assert_close(mu, x.double().mean(0))
    torch.testing.assert_close(cov, torch.cov(x.double().T))
    expected = frechet_distance(*mean_cov(x), *mean_cov(y))
    assert expected > 0.1
    assert frechet_distance_features(x, y) == pytest.approx(expected, rel=1e-9)
    # also when there are fewer rows than dimensions (singular covariances)
    xs, ys = torch.randn(6, 20, generator=_gen(13)), torch.randn(9, 20, generator=_gen(14)) + 0.2
    # (the eigh route takes square roots of round-off-sized eigenvalues there: ~1e-8 relative noise)
    assert frechet_distance_features(xs, ys) == pytest.approx(frechet_distance(*mean_cov(xs), *mean_cov(ys)), rel=1e-6)


def test_frechet_null_removes_small_sample_bias():
    d, n, m = 16, 150, 1000
    ref = torch.randn(m, d, generator=_gen(20), dtype=torch.float64)
    x = torch.randn(n, d, generator=_gen(21), dtype=torch.float64)
    raw, null, null_sd = frechet_with_null(x, ref)
    assert raw > 0.5  # the bias is real: the same distribution is far from 0 at n=150, d=16
    assert null > 0.5
    assert abs(raw - null) < 3 * null_sd + 0.1


def test_frechet_null_holds_with_a_small_reference():
    # m = 2n: the dataset must be compared with the same m - n reference rows as the null split,
    # otherwise (e.g. against all m rows) its bias is smaller than the null's and the excess goes negative
    d, n, m = 16, 150, 300
    excess = []
    for seed in range(4):
        ref = torch.randn(m, d, generator=_gen(100 + seed), dtype=torch.float64)
        x = torch.randn(n, d, generator=_gen(200 + seed), dtype=torch.float64)
        raw, null, _ = frechet_with_null(x, ref, seed=seed)
        assert raw > 0.5
        excess.append(raw - null)
    assert abs(sum(excess) / len(excess)) < 0.12


def test_frechet_null_excess_recovers_mean_shift():
    d, n, m = 16, 150, 1000
    ref = torch.randn(m, d, generator=_gen(20), dtype=torch.float64)
    delta = torch.ones(d, dtype=torch.float64)
    x = torch.randn(n, d, generator=_gen(22), dtype=torch.float64) + delta
    raw, null, _ = frechet_with_null(x, ref)
    target = float(delta.pow(2).sum())  # 16
    assert raw - null == pytest.approx(target, rel=0.15)
    assert raw > target  # the raw value also carries the bias


# --------------------------------------------------------------------------- KID


def test_mmd_same_distribution_is_small_and_shift_is_large():
    x = torch.randn(200, 16, generator=_gen(30))
    y = torch.randn(200, 16, generator=_gen(31))
    z = torch.randn(200, 16, generator=_gen(32)) + 1.0
    same, shifted = mmd2_unbiased(x, y), mmd2_unbiased(x, z)
    assert shifted > 0.5
    assert abs(same) < 0.05 * shifted
    ones = torch.ones(1, 200, dtype=torch.float64)
    assert abs(float(kid_weighted(x, y, ones)[0])) < 0.05 * float(kid_weighted(x, z, ones)[0])


def test_kid_weighted_with_unit_weights_is_mmd2_unbiased():
    x = torch.randn(40, 8, generator=_gen(33))
    y = torch.randn(50, 8, generator=_gen(34)) + 0.5
    ones = torch.ones(1, 40, dtype=torch.float64)
    out = kid_weighted(x, y, ones)
    assert out.shape == (1,)
    assert float(out[0]) == pytest.approx(mmd2_unbiased(x, y), rel=1e-10, abs=1e-12)


def test_mmd2_unbiased_matches_explicit_sums():
    x = torch.randn(7, 3, generator=_gen(35), dtype=torch.float64)
    y = torch.randn(5, 3, generator=_gen(36), dtype=torch.float64)

    def k(a, b):
        return (float(a @ b) / 3 + 1.0) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    with pytest.raises(ValueError):
        mmd2_unbiased(x[:1], y)


def test_kid_weighted_matches_brute_force_over_resampled_images():
    n, m, d = 12, 9, 4
    x = torch.randn(n, d, generator=_gen(37), dtype=torch.float64)
    y = torch.randn(m, d, generator=_gen(38), dtype=torch.float64) + 0.3
    w = bootstrap_weights(n, 3, seed=5)
    got = kid_weighted(x, y, w)
    assert got.shape == (3,)

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    for r in range(3):
        idx = [i for i in range(n) for _ in range(int(w[r, i]))]  # the resampled image list
        assert len(idx) == n
        assert len(set(idx)) < n  # a real resample repeats images
        num, cnt = 0.0, 0
        for a in range(n):
            for b in range(n):
                if idx[a] != idx[b]:  # same original image: left out, even at different positions
                    num += k(x[idx[a]], x[idx[b]])
                    cnt += 1
        term_x = num / cnt
        term_y = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        cross = sum(k(x[idx[a]], y[j]) for a in range(n) for j in range(m)) / (n * m)
        assert float(got[r]) == pytest.approx(term_x + term_y - 2 * cross, rel=1e-10, abs=1e-12)


def test_bootstrap_weights_rows_sum_to_n_and_are_deterministic():
    w = bootstrap_weights(25, 50, seed=3)
    assert w.shape == (50, 25) and w.dtype == torch.float64
    assert torch.equal(w.sum(1), torch.full((50,), 25.0, dtype=torch.float64))
    assert torch.equal(w, w.round()) and bool((w >= 0).all())
    assert torch.equal(w, bootstrap_weights(25, 50, seed=3))
    assert not torch.equal(w, bootstrap_weights(25, 50, seed=4))
    assert bool((w != 1).any())  # not the identity resample


# --------------------------------------------------------------------------- bootstrap intervals


def test_greyscale_share_interval_covers_the_true_share():
    n, p, datasets = 100, 0.3, 200
    hits = 0
    for seed in range(datasets):
        g = torch.bernoulli(torch.full((n, 1), p), generator=_gen(1000 + seed))
        share = greyscale_share(_feature_set({GREY: g}))
        assert share.value == pytest.approx(float(g.mean()))
        assert share.low <= share.value <= share.high
        hits += share.low <= p <= share.high
    assert 0.88 * datasets <= hits <= 0.99 * datasets


def test_greyscale_share_interval_is_the_percentile_bootstrap_of_the_share():
    # all or none grey: every resample gives the same share
    for v in (0.0, 1.0):
        share = greyscale_share(_feature_set({GREY: torch.full((40, 1), v)}))
        assert (share.value, share.low, share.high) == (v, v, v)
    g = torch.zeros(100, 1)
    g[:30] = 1.0
    share = greyscale_share(_feature_set({GREY: g}), rounds=400, seed=3)
    w = bootstrap_weights(100, 400, seed=3)
    draws = (w @ g[:, 0].double()) / 100
    lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert (share.low, share.high) == pytest.approx((lo, hi), abs=1e-12)
    # ~ 0.3 +- 1.96 * sqrt(0.3 * 0.7 / 100)
    assert share.low == pytest.approx(0.21, abs=0.03) and share.high == pytest.approx(0.39, abs=0.03)


def test_greyscale_share_missing_or_empty_is_none():
    assert greyscale_share(_feature_set({PRE_LOGITS: torch.zeros(3, 2)})) is None
    fs = _feature_set({PRE_LOGITS: torch.zeros(3, 2)})
    fs.features[GREY] = torch.zeros(0, 1)
    assert greyscale_share(fs) is None


# --------------------------------------------------------------------------- BatchNorm shift


def _set_running(tiny, values: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer in tiny.bn_layers():
        rm, rv = values[layer.name]
        bn = tiny.model.get_submodule(layer.name)
        bn.running_mean.copy_(rm)
        bn.running_var.copy_(rv)


def test_bn_shift_exact_values_per_stage(tiny):
    layers = tiny.bn_layers()
    assert [(l.stage, l.depth) for l in layers] == [("stage1", 1), ("stage2", 2), ("stage3", 3)]
    n = 6
    running, feats = {}, {}
    for layer in layers:
        c = layer.channels
        if layer.stage == "stage1":
            # every image has mean 1 and within-image var 1 against N(0, 1): ((1-0)^2 + (1-1)^2) / 1 = 1
            running[layer.name] = (torch.zeros(c), torch.ones(c))
            means, vars_ = torch.ones(n, c), torch.ones(n, c)
        elif layer.stage == "stage2":
            # images equal to the running statistics (mean 0.5, var 2): 0
            running[layer.name] = (torch.full((c,), 0.5), torch.full((c,), 2.0))
            means, vars_ = torch.full((n, c), 0.5), torch.full((n, c), 2.0)
        else:
            # image means alternate 0 and 2 (between-image var 1), within var 1: total var 2, mean 1;
            # against N(0, 4): (1 + (sqrt 2 - 2)^2) / 4
            running[layer.name] = (torch.zeros(c), torch.full((c,), 4.0))
            means = torch.tensor([0.0, 2.0] * (n // 2)).unsqueeze(1).expand(n, c).clone()
            vars_ = torch.ones(n, c)
        feats[f"bn:{layer.name}:mean"], feats[f"bn:{layer.name}:var"] = means, vars_
    _set_running(tiny, running)
    assert set(feats) == set(bn_names(tiny))
    per_stage, counts = bn_shift_weighted(_feature_set(feats), tiny, torch.ones(1, n, dtype=torch.float64))
    assert set(per_stage) == {"stage1", "stage2", "stage3"}
    # (float32 inside is allowed: tolerances are at float32 precision)
    assert float(per_stage["stage1"][0]) == pytest.approx(1.0, rel=1e-6)
    assert float(per_stage["stage2"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(per_stage["stage3"][0]) == pytest.approx((1 + (math.sqrt(2) - 2) ** 2) / 4, rel=1e-6)
    assert counts == {"stage1": (1, 16, 0), "stage2": (1, 32, 0), "stage3": (1, 64, 0)}


def test_bn_shift_weighted_row_equals_the_resampled_images(tiny):
    n = 10
    gen = _gen(40)
    running, feats = {}, {}
    for layer in tiny.bn_layers():
        c = layer.channels
        running[layer.name] = (torch.randn(c, generator=gen), torch.rand(c, generator=gen) + 0.5)
        feats[f"bn:{layer.name}:mean"] = torch.randn(n, c, generator=gen)
        feats[f"bn:{layer.name}:var"] = torch.rand(n, c, generator=gen) + 0.1
    _set_running(tiny, running)
    w = bootstrap_weights(n, 2, seed=1)
    got, _ = bn_shift_weighted(_feature_set(feats), tiny, w)
    for r in range(2):
        idx = torch.tensor([i for i in range(n) for _ in range(int(w[r, i]))])
        resampled = _feature_set({k: v[idx] for k, v in feats.items()})
        expect, _ = bn_shift_weighted(resampled, tiny, torch.ones(1, n, dtype=torch.float64))
        for stage in got:
            assert float(got[stage][r]) == pytest.approx(float(expect[stage][0]), rel=1e-5)
        # and the per-channel formula, written out for stage1
        layer = tiny.bn_layers()[0]
        m, v = feats[f"bn:{layer.name}:mean"][idx].double(), feats[f"bn:{layer.name}:var"][idx].double()
        mu = m.mean(0)
        var = v.mean(0) + (m * m).mean(0) - mu * mu  # law of total variance
        rm, rv = (t.double() for t in running[layer.name])
        ref = (((mu - rm) ** 2 + (var.sqrt() - rv.sqrt()) ** 2) / rv).mean()
        assert float(got["stage1"][r]) == pytest.approx(float(ref), rel=1e-5)


def test_bn_shift_skips_dead_channels(tiny):
    n = 4
    running, feats = {}, {}
    for layer in tiny.bn_layers():
        c = layer.channels
        rv = torch.ones(c)
        means = torch.ones(n, c)
        if layer.stage == "stage2":
            rv[3] = 0.0  # dead channel
            rv[5] = MIN_RUNNING_VAR / 10  # as good as dead
            means[:, 3] = 100.0  # would dominate (or be inf) if it were used
            means[:, 5] = 100.0
        running[layer.name] = (torch.zeros(c), rv)
        feats[f"bn:{layer.name}:mean"], feats[f"bn:{layer.name}:var"] = means, torch.ones(n, c)
    _set_running(tiny, running)
    per_stage, counts = bn_shift_weighted(_feature_set(feats), tiny, torch.ones(1, n, dtype=torch.float64))
    for stage, v in per_stage.items():
        assert torch.isfinite(v).all(), stage
        assert float(v[0]) == pytest.approx(1.0, rel=1e-6), stage
    assert counts["stage2"] == (1, 32, 2)
    assert counts["stage1"] == (1, 16, 0) and counts["stage3"] == (1, 64, 0)


def _two_bn_backbone():
    """One stage holding two BatchNorm layers (as real backbones' stages do)."""
    from torch import nn

    from advisor.backbones import Backbone, TapInfo, TransformConfig

    model = nn.Sequential()
    model.add_module("stages", nn.Sequential(nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
    )))
    model.add_module("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model.add_module("fc", nn.Linear(4, 2))
    return Backbone("test/two-bn", model.eval(),
                    taps=[TapInfo(name="stage1", channels=4, stride=1, module="stages.0"),
                          TapInfo(name=PRE_LOGITS, channels=4, module="fc")],
                    transform_config=TransformConfig(input_size=8, interpolation="bilinear"),
                    weights_digest="random-seed0", weights_source="random init")


def test_bn_shift_a_fully_dead_layer_does_not_poison_its_stage():
    bb = _two_bn_backbone()
    live, dead = bb.bn_layers()
    assert live.stage == dead.stage == "stage1"
    n = 4
    bb.model.get_submodule(live.name).running_var.fill_(1.0)
    bb.model.get_submodule(live.name).running_mean.fill_(0.0)
    bb.model.get_submodule(dead.name).running_var.fill_(0.0)  # every channel dead
    feats = {f"bn:{layer.name}:{m}": torch.ones(n, 4) for layer in (live, dead) for m in ("mean", "var")}
    per_stage, counts = bn_shift_weighted(_feature_set(feats), bb, torch.ones(1, n, dtype=torch.float64))
    assert counts["stage1"] == (2, 8, 4)
    # the dead layer carries no information: the stage is what the live layer shows, (1 - 0)^2 / 1 = 1
    assert torch.isfinite(per_stage["stage1"]).all()
    assert float(per_stage["stage1"][0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- shift pattern


def _depths(values: list[float], excess: list[float | None] | None = None) -> list[DepthShift]:
    names = ["stem"] + [f"stage{i}" for i in range(1, len(values) - 1)] + ["head"]
    excess = excess or [None] * len(values)
    return [
        DepthShift(stage=s, depth=i, layers=1, channels=8, skipped_channels=0,
                   shift=Interval(value=v, low=v, high=v), excess=e)
        for i, (s, v, e) in enumerate(zip(names, values, excess))
    ]


def test_pattern_names_where_the_shift_is():
    assert _pattern(_depths([1.0, 0.8, 0.6, 0.1, 0.05, 0.05, 0.05]))[0] == "input-level"
    assert _pattern(_depths([0.05, 0.05, 0.1, 0.3, 0.8, 1.0, 1.2]))[0] == "semantic"
    assert _pattern(_depths([0.01, 0.02, 0.01, 0.03, 0.02, 0.01, 0.04]))[0] == "small"
    assert _pattern(_depths([0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]))[0] == "mixed"
    assert _pattern(_depths([0.5]))[0] == "unknown"
    # the order of the list does not matter: depths are sorted
    assert _pattern(list(reversed(_depths([1.0, 0.8, 0.6, 0.1, 0.05, 0.05, 0.05]))))[0] == "input-level"


def test_pattern_uses_excess_over_the_reference_when_present():
    raw = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    # raw shifts are flat, but after removing what ImageNet itself shows only the deep end remains
    assert _pattern(_depths(raw))[0] == "mixed"
    assert _pattern(_depths(raw, [0.0, 0.0, 0.0, 0.4, 0.5, 0.6]))[0] == "semantic"
    # negative excess counts as 0
    kind, why = _pattern(_depths(raw, [-1.0, -1.0, -1.0, 0.01, 0.02, 0.01]))
    assert kind == "small" and str(SMALL_SHIFT) in why


# --------------------------------------------------------------------------- measure_similarity


@pytest.fixture
def tiny_features(tiny_dataset, tiny):
    scan = scan_dataset(tiny_dataset)
    fs = extract_features(scan.samples, tiny, taps=[PRE_LOGITS], bn_moments=True, num_workers=0, device="cpu")
    assert fs.features[PRE_LOGITS].shape[0] == 12
    return fs


def _reference(features: torch.Tensor, tiny) -> Reference:
    return Reference(backbone=tiny.name, weights_digest=tiny.weights_digest, features=features, bn_baseline={},
                     confidence=None, scales=dict(DEFAULT_SCALES), provenance={"source": "test"})


def _signal(report, name):
    return next(s for s in report.signals if s.name == name)


def test_measure_similarity_without_reference(tiny_features, tiny):
    report = measure_similarity(tiny_features, tiny, reference=None, reference_missing="no reference here",
                                rounds=50, seed=0)
    assert report.sample_size == 12 and report.bootstrap_rounds == 50 and report.backbone == tiny.name
    for name in ("kid", "frechet"):
        s = _signal(report, name)
        assert s.available is False and s.unavailable_reason == "no reference here" and s.in_score is False
    bn = _signal(report, "bn_shift")
    assert bn.available and bn.in_score
    assert bn.raw.low <= bn.raw.value <= bn.raw.high
    assert bn.raw.value > 0
    # only bn_shift is in the score, so the score is its similarity 1 / (1 + d / scale)
    assert bn.scale == DEFAULT_SCALES["bn_shift"]
    assert bn.similarity.value == pytest.approx(1 / (1 + bn.raw.value / bn.scale))
    assert report.score.value == pytest.approx(bn.similarity.value)
    assert 0.0 <= report.score.low <= report.score.value <= report.score.high <= 1.0
    assert [d.stage for d in report.bn_by_depth] == ["stage1", "stage2", "stage3"]
    assert all(d.excess is None and d.shift.low <= d.shift.value <= d.shift.high for d in report.bn_by_depth)
    # the per-stage points average to the bn_shift raw value (stages weigh equally)
    assert bn.raw.value == pytest.approx(sum(d.shift.value for d in report.bn_by_depth) / 3)
    # and each is bn_shift_weighted over the images themselves (unit weights, not a resample)
    direct, counts = bn_shift_weighted(tiny_features, tiny, torch.ones(1, 12, dtype=torch.float64))
    for d in report.bn_by_depth:
        assert d.shift.value == pytest.approx(float(direct[d.stage][0]), rel=1e-6)
        assert (d.layers, d.channels, d.skipped_channels) == counts[d.stage]
    assert report.shift_pattern in ALLOWED_PATTERNS - {"unknown"}
    assert report.shift_pattern_reason
    assert report.reference is None
    # tiny-cnn's linear head makes the confidence signal available (reported, not scored)
    conf = _signal(report, "imagenet_confidence")
    assert conf.in_score is False and 0.1 <= conf.raw.value <= 1.0
    # deterministic for a seed
    again = measure_similarity(tiny_features, tiny, reference=None, reference_missing="no reference here",
                               rounds=50, seed=0)
    assert again.model_dump() == report.model_dump()


def test_measure_similarity_kid_tells_a_matching_reference_from_a_shifted_one(tiny_features, tiny):
    x = tiny_features.features[PRE_LOGITS]
    gen = _gen(50)
    idx = torch.randint(0, x.shape[0], (200,), generator=gen)
    same = x[idx] + 0.01 * x.std() * torch.randn(200, x.shape[1], generator=gen)
    shifted = same + 0.5  # features are ~0.01 in size: a shift the cubic kernel cannot miss
    near = measure_similarity(tiny_features, tiny, reference=_reference(same, tiny), rounds=50)
    far = measure_similarity(tiny_features, tiny, reference=_reference(shifted, tiny), rounds=50)
    kid_near, kid_far = _signal(near, "kid"), _signal(far, "kid")
    assert kid_near.available and kid_near.in_score
    assert kid_near.similarity.value > 0.9
    assert kid_far.raw.value > 10 * max(abs(kid_near.raw.value), 1e-6)
    assert kid_near.similarity.value > kid_far.similarity.value + 0.3
    for s in (kid_near, kid_far):
        assert s.raw.low <= s.raw.value <= s.raw.high
        assert s.similarity.value == pytest.approx(1 / (1 + max(s.raw.value, 0) / DEFAULT_SCALES["kid"]))
    # the point estimate is the KID of the images themselves, the interval that of resamples
    assert kid_near.raw.value == pytest.approx(mmd2_unbiased(x, same), rel=1e-6, abs=1e-9)
    assert kid_far.raw.value == pytest.approx(mmd2_unbiased(x, shifted), rel=1e-6)
    fr = _signal(near, "frechet")
    assert fr.available and fr.in_score is False and fr.null is not None
    assert _signal(far, "frechet").raw.value > fr.raw.value
    # the score is the mean of the in-score similarities: kid and bn_shift
    for rep in (near, far):
        sims = [s.similarity.value for s in rep.signals if s.in_score and s.available]
        assert len(sims) == 2
        assert rep.score.value == pytest.approx(sum(sims) / 2)
        assert rep.shift_pattern in ALLOWED_PATTERNS
        assert json.loads(rep.reference) == {"source": "test"}
    assert near.score.value > far.score.value


def test_measure_similarity_needs_four_images(tiny_features, tiny):
    few = FeatureSet(paths=tiny_features.paths[:3], index=[0, 1, 2],
                     features={k: v[:3] for k, v in tiny_features.features.items()}, summary=tiny_features.summary)
    with pytest.raises(ValueError, match="at least 4"):
        measure_similarity(few, tiny)


# --------------------------------------------------------------------------- reference files


def test_no_reference_for_tiny_cnn(tiny):
    assert not reference_path(tiny.name).exists()
    ref, why = load_reference(tiny)
    assert ref is None
    assert "scripts/build_reference.py" in why and tiny.name in why


def test_reference_for_other_weights_is_refused(tiny, tmp_path):
    path = tmp_path / "ref.safetensors"
    other = "f" * 16
    assert other != tiny.weights_digest
    info = {"bn_baseline": {"stage1": 0.1}, "confidence": 0.5, "scales": {"kid": 0.2}, "provenance": {"source": "x"}}
    meta = {"format": REFERENCE_FORMAT, "backbone": tiny.name, "info": json.dumps(info)}
    save_file({"pre_logits": torch.randn(8, 64).half()}, str(path), metadata={**meta, "weights_digest": other})
    ref, why = load_reference(tiny, path=path)
    assert ref is None
    assert other in why and tiny.weights_digest in why and "scripts/build_reference.py" in why

    # the same file for the right weights loads, with its scales over the defaults
    save_file({"pre_logits": torch.randn(8, 64).half()}, str(path),
              metadata={**meta, "weights_digest": tiny.weights_digest})
    ref, why = load_reference(tiny, path=path)
    assert why is None and ref.size == 8 and ref.features.dtype == torch.float32
    assert ref.scales == {"kid": 0.2, "bn_shift": DEFAULT_SCALES["bn_shift"]}
    assert ref.bn_baseline == {"stage1": 0.1} and ref.confidence == 0.5

    # a file without the format marker is refused too
    save_file({"pre_logits": torch.randn(8, 64).half()}, str(path), metadata={"weights_digest": tiny.weights_digest})
    ref, why = load_reference(tiny, path=path)
    assert ref is None and "not an advisor reference file" in why


def test_shipped_reference_loads_for_the_default_backbone():
    path = REFERENCE_DIR / "efficientnet_lite0.safetensors"
    assert path.exists() and reference_path("efficientnet_lite0") == path
    bb = create_backbone("efficientnet_lite0")
    ref, why = load_reference(bb)
    assert why is None and ref is not None
    assert ref.features.shape == (1000, 1280)
    assert torch.isfinite(ref.features).all()
    assert ref.weights_digest == bb.weights_digest
    assert set(ref.scales) >= {"kid", "bn_shift"} and all(v > 0 for v in ref.scales.values())
    stages = {layer.stage for layer in bb.bn_layers()}
    assert set(ref.bn_baseline) == stages
    assert ref.confidence is not None and 0 < ref.confidence <= 1
