"""Linear and layer probes on synthetic features: the optimiser, the l2 choice, the tap sweep."""

from __future__ import annotations

import math

import pytest
import torch

from advisor.core.errors import AdvisorError
from advisor.decide.rules.thresholds import sweep_candidates
from advisor.measure.logistic import (
    DEFAULT_L2_GRID,
    MIN_STD,
    class_weights_from,
    cross_validate,
    cv_select_l2,
    fit_logistic,
    fit_standardizer,
    fold_count,
    stratified_folds,
)
from strategies.probe import ProbeFit, SweepRow, fit_probe, layer_probe_sweep, predict_logits


@pytest.fixture(autouse=True)
def _one_thread():
    """These problems are tiny: threads add nothing, and on a busy machine OpenMP threads spin-wait
    for descheduled peers at every small op (measured: this file 6 s -> 40 s at load 3 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n_per_class: list[int], *, dim: int = 5, sep: float = 6.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs, unit variance, class c centred at ``sep`` along axis c."""
    g = _gen(seed)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    centres = torch.zeros(len(n_per_class), dim)
    centres[range(len(n_per_class)), range(len(n_per_class))] = sep
    return centres[y] + torch.randn(len(y), dim, generator=g), y


def objective(x, y, W, b, l2, weights=None):
    """The stated objective, written out independently of the module (float64)."""
    x, W, b = x.double(), W.double(), b.double()
    nll = -torch.log_softmax(x @ W.T + b, dim=1).gather(1, y[:, None]).squeeze(1)
    w = torch.ones(len(y), dtype=torch.float64) if weights is None else weights.double()[y]
    return (w * nll).sum() / w.sum() + 0.5 * l2 * (W * W).sum()


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def recall(logits: torch.Tensor, y: torch.Tensor, cls: int) -> float:
    return float((logits.argmax(1)[y == cls] == cls).float().mean())


# --------------------------------------------------------------------------- fit_logistic


def test_fit_logistic_separable_blobs():
    x, y = blobs([50, 50, 50])
    xs = fit_standardizer(x).apply(x)
    W, b = fit_logistic(xs, y, num_classes=3, l2=1e-3)
    assert W.shape == (3, 5) and b.shape == (3,) and W.device.type == "cpu"
    assert accuracy(xs @ W.T + b, y) > 0.95
    zero = objective(xs, y, torch.zeros(3, 5), torch.zeros(3), 1e-3)
    assert objective(xs, y, W, b, 1e-3) < 0.1 * zero  # log(3) at the zero start

    # From an explicit (bad) start too: the loss goes down from the init.
    W0, b0 = torch.randn(3, 5, generator=_gen(1)) * 3, torch.randn(3, generator=_gen(2))
    W1, b1 = fit_logistic(xs, y, num_classes=3, l2=1e-3, init=(W0, b0), max_iter=5)
    assert objective(xs, y, W1, b1, 1e-3) < objective(xs, y, W0, b0, 1e-3)


def test_larger_l2_gives_smaller_weights():
    x, y = blobs([40, 40, 40], sep=2.0)
    xs = fit_standardizer(x).apply(x)
    norms = [float(fit_logistic(xs, y, num_classes=3, l2=l2)[0].norm()) for l2 in (1e-3, 1e-1, 1.0, 10.0)]
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


def test_class_weights_raise_minority_recall():
    # Overlapping classes, 10:1 imbalance: unweighted, the boundary sits deep in the minority class.
    x, y = blobs([300, 30], dim=2, sep=1.0, seed=3)
    xs = fit_standardizer(x).apply(x)
    W, b = fit_logistic(xs, y, num_classes=2, l2=1e-2)
    cw = class_weights_from(y, 2)
    Ww, bw = fit_logistic(xs, y, num_classes=2, l2=1e-2, class_weights=cw)
    plain, weighted = recall(xs @ W.T + b, y, 1), recall(xs @ Ww.T + bw, y, 1)
    assert plain < 0.5 and weighted > plain + 0.3, (plain, weighted)


def test_fit_logistic_is_deterministic():
    x, y = blobs([30, 30, 30], sep=1.0, dim=20, seed=4)
    xs = fit_standardizer(x).apply(x)
    a = fit_logistic(xs, y, num_classes=3, l2=1e-3)
    b = fit_logistic(xs, y, num_classes=3, l2=1e-3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("weighted", [False, True])
def test_solution_is_a_stationary_point_of_the_stated_objective(weighted):
    # Overlapping (not separable), so the optimum is finite even at small l2.
    x, y = blobs([30, 15], dim=4, sep=1.0, seed=5)
    xs = fit_standardizer(x).apply(x)
    l2 = 0.01
    cw = torch.tensor([1.0, 3.0]) if weighted else None
    W, b = fit_logistic(xs, y, num_classes=2, l2=l2, class_weights=cw)
    W, b = W.double().requires_grad_(True), b.double().requires_grad_(True)
    objective(xs, y, W, b, l2, cw).backward()
    grad = torch.cat([W.grad.flatten(), b.grad]).norm()
    W0, b0 = torch.zeros(2, 4, dtype=torch.float64, requires_grad=True), torch.zeros(2, dtype=torch.float64, requires_grad=True)
    objective(xs, y, W0, b0, l2, cw).backward()
    grad0 = torch.cat([W0.grad.flatten(), b0.grad]).norm()
    assert grad < 1e-4 * grad0, (float(grad), float(grad0))


def test_class_weights_from():
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights_from(y, 4)  # class 3 absent
    assert w[3] == 0
    assert torch.allclose(w[:3].mean(), torch.tensor(1.0))
    assert torch.allclose(w[:3] * torch.tensor([6.0, 3.0, 1.0]), torch.full((3,), float(w[0] * 6)))


# --------------------------------------------------------------------------- cv_select_l2


def noise_task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels independent of 40 features, 30 % minority: only the prior is learnable."""
    g = _gen(seed)
    return torch.randn(120, 40, generator=g), (torch.rand(120, generator=g) < 0.3).long()


def nuisance_task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean but needs weak regularisation: a shared nuisance swamps all 30 features.

    The label lives in differences between features (the small-variance directions); a strong
    ridge penalty pulls the weights towards the class-mean direction, which the nuisance ruins.
    """
    g = _gen(seed)
    y = torch.arange(120) % 2
    x = torch.randn(120, 1, generator=g) * 20 + 0.3 * torch.randn(120, 30, generator=g)
    x[:, :10] += 0.6 * (2 * y[:, None] - 1)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cv_picks_large_l2_for_noise_and_small_for_a_clean_task(seed):
    best, table = cv_select_l2(*noise_task(seed), num_classes=2, seed=seed)
    assert best in DEFAULT_L2_GRID and best >= 1.0
    assert [l2 for l2, _ in table] == sorted(DEFAULT_L2_GRID)

    best, table = cv_select_l2(*nuisance_task(seed), num_classes=2, seed=seed)
    acc = dict(table)
    assert best in DEFAULT_L2_GRID and best <= 1e-2
    assert acc[best] >= 0.95 and acc[max(DEFAULT_L2_GRID)] < 0.75


def test_cv_ties_go_to_the_larger_l2():
    x, y = blobs([20, 20], dim=3, sep=10.0)  # every l2 classifies perfectly
    best, table = cv_select_l2(x, y, num_classes=2, grid=[1e-3, 1e-2, 1e-1])
    assert all(a == 1.0 for _, a in table) and best == 1e-1


def test_cv_is_deterministic_for_a_seed():
    x, y = blobs([25, 25, 25], dim=10, sep=1.0, seed=6)
    assert cv_select_l2(x, y, num_classes=3, seed=3) == cv_select_l2(x, y, num_classes=3, seed=3)
    assert torch.equal(stratified_folds(y, 5, seed=3), stratified_folds(y, 5, seed=3))
    assert not torch.equal(stratified_folds(y, 5, seed=3), stratified_folds(y, 5, seed=4))


def test_stratified_folds_balance_every_class():
    y = torch.tensor([0] * 23 + [1] * 12 + [2] * 5)
    folds = stratified_folds(y, 5, seed=0)
    for c in range(3):
        per_fold = torch.bincount(folds[y == c], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1
    sizes = torch.bincount(folds, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 1


def test_a_rare_class_keeps_five_folds_and_a_single_image_counts_as_a_miss():
    # One class of 2 used to make the whole set 2-fold; it is dealt into 2 of the 5 folds instead.
    x, y = blobs([20, 20, 2], dim=4, sep=4.0)
    best, table = cv_select_l2(x, y, num_classes=3)
    assert best in DEFAULT_L2_GRID and len(table) == len(DEFAULT_L2_GRID)
    fit = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3)
    assert fit.folds == 5 and any("1 class(es) with fewer than 5 images held out in fewer folds" in n for n in fit.notes)

    # A class with a single image used to stop cross-validation (l2 unselected, no CV accuracy): it now trains the
    # other folds' probes, and the one probe that holds it out has never seen its class, so it is a miss there.
    x, y = blobs([20, 20, 1], dim=4, sep=4.0)
    cv = cross_validate(x, y, num_classes=3, grid=DEFAULT_L2_GRID, folds=5, seed=0, class_weights=None,
                        device="cpu", max_iter=100)
    assert cv.folds == 5 and len(cv.table) == len(DEFAULT_L2_GRID) and "single image count as a miss" in cv.note
    assert float(cv.held_out[-1]) == 0.0 and dict(cv.table)[cv.l2] == pytest.approx(40 / 41)  # the rest: separable
    fit = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3)
    assert fit.folds == 5 and fit.cv_accuracy == pytest.approx(40 / 41)
    assert accuracy(predict_logits(fit, {"pre_logits": x}), y) > 0.9  # trained on it: the final probe knows it
    # scored with class weights (R8), the miss costs its class's share of the balanced accuracy
    weighted = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3, class_weights=class_weights_from(y, 3))
    assert weighted.cv_accuracy == pytest.approx(2 / 3)

    # Fewer folds only when even the largest class has fewer images; none when no class has two.
    x, y = blobs([4, 4], dim=4, sep=4.0)
    assert fold_count(y, 5) == (4, "4 CV folds instead of 5: the largest class has 4 images")
    x, y = blobs([1, 1, 1], dim=4, sep=4.0)
    middle = sorted(DEFAULT_L2_GRID)[len(DEFAULT_L2_GRID) // 2]
    assert cv_select_l2(x, y, num_classes=3) == (middle, [])
    fit = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3)
    assert fit.l2 == middle and fit.folds == 0 and math.isnan(fit.cv_accuracy)
    assert any("the largest has 1" in n for n in fit.notes)


# --------------------------------------------------------------------------- probes


def tapped_features(seed: int, n_per_class: int = 40) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """'stage4' carries the labels (3 classes); 'stage5' and 'pre_logits' are noise."""
    x, y = blobs([n_per_class] * 3, dim=16, sep=3.0, seed=seed)
    g = _gen(seed + 100)
    n = len(y)
    return {"stage4": x, "stage5": torch.randn(n, 12, generator=g), "pre_logits": torch.randn(n, 20, generator=g)}, y


def test_layer_probe_sweep_finds_the_informative_earlier_tap():
    feats, y = tapped_features(0)
    taps = ["stage4", "stage5", "pre_logits"]
    fit, rows = layer_probe_sweep(feats, y, taps=taps, num_classes=3)
    assert [r.taps for r in rows] == [["stage4"], ["stage5"], ["pre_logits"], ["stage5", "pre_logits"], taps]
    assert [r.dim for r in rows] == [16, 12, 20, 32, 48]
    assert all(isinstance(r, SweepRow) for r in rows)
    by_taps = {tuple(r.taps): r for r in rows}
    assert "stage4" in fit.taps
    assert fit.cv_accuracy == max(r.cv_accuracy for r in rows)
    assert fit.cv_accuracy > 0.9 and fit.cv_accuracy > by_taps[("pre_logits",)].cv_accuracy + 0.4
    assert fit.W.shape == (3, sum(feats[t].shape[1] for t in fit.taps))
    # Fresh rows from the same distribution: the chosen probe generalises.
    test_feats, y_test = tapped_features(1)
    assert accuracy(predict_logits(fit, test_feats), y_test) > 0.9


def test_sweep_ties_go_to_fewer_dims():
    x, y = blobs([20, 20], dim=3, sep=10.0)
    wide = torch.cat([x, torch.zeros(len(y), 5)], dim=1)  # same information, more dims
    fit, rows = layer_probe_sweep({"a": wide, "b": x}, y, taps=["a", "b"], num_classes=2)
    assert all(r.cv_accuracy == 1.0 for r in rows) and fit.taps == ["b"]


def test_sweep_candidates():
    assert sweep_candidates(["p"]) == [["p"]]
    assert sweep_candidates(["a", "p"]) == [["a"], ["p"], ["a", "p"]]
    assert sweep_candidates(["a", "b", "c", "p"], concat_top=3) == [["a"], ["b"], ["c"], ["p"], ["b", "c", "p"]]
    assert sweep_candidates(["a", "b", "c", "p"])[-2:] == [["c", "p"], ["b", "c", "p"]]


def test_predict_logits_reproduces_the_fit():
    feats, y = tapped_features(2)
    fit = fit_probe(feats, y, taps=["stage5", "stage4"], num_classes=3)
    assert isinstance(fit, ProbeFit) and fit.taps == ["stage5", "stage4"] and fit.dim == 28
    assert fit.l2 in DEFAULT_L2_GRID and fit.cv_accuracy == dict(fit.cv_table)[fit.l2]
    x = torch.cat([feats["stage5"], feats["stage4"]], dim=1)
    manual = ((x - fit.standardizer.mean) / fit.standardizer.std) @ fit.W.T + fit.b
    logits = predict_logits(fit, feats)
    assert logits.shape == (len(y), 3)
    assert torch.allclose(logits, manual, atol=1e-5)
    assert accuracy(logits, y) > 0.95
    # Refit on all training rows reproduces the standalone solver at the chosen l2.
    W, b = fit_logistic(fit.standardizer.apply(x), y, num_classes=3, l2=fit.l2)
    assert torch.allclose(W, fit.W) and torch.allclose(b, fit.b)


def test_constant_features_standardise_without_nan():
    x, y = blobs([20, 20], dim=3, sep=4.0)
    x = torch.cat([x, torch.full((40, 1), 7.0), torch.zeros(40, 1)], dim=1)
    st = fit_standardizer(x)
    assert torch.all(st.std == st.std[0]) and float(st.std[0]) > MIN_STD  # one scale for the block
    z = st.apply(x)
    assert torch.isfinite(z).all() and torch.all(z[:, 3:] == 0)
    flat = fit_standardizer(torch.full((5, 2), 3.0))  # a block that never moves: the floor, no NaN
    assert float(flat.std.max()) == pytest.approx(MIN_STD) and torch.all(flat.apply(torch.full((5, 2), 3.0)) == 0)
    fit = fit_probe({"f": x}, y, taps=["f"], num_classes=2)
    logits = predict_logits(fit, {"f": x})
    assert torch.isfinite(fit.W).all() and torch.isfinite(logits).all() and accuracy(logits, y) > 0.95


def test_each_tap_of_a_concatenation_gets_its_own_scale_and_bad_blocks_are_refused():
    g = torch.Generator().manual_seed(0)
    small, large = torch.randn(30, 4, generator=g), 100 * torch.randn(30, 6, generator=g)
    st = fit_standardizer(torch.cat([small, large], dim=1), blocks=[4, 6])
    one = fit_standardizer(small)
    assert torch.allclose(st.std[:4], one.std) and torch.allclose(st.std[4:], fit_standardizer(large).std)
    assert float(st.std[4] / st.std[0]) > 50  # the large tap does not set the small one's scale
    with pytest.raises(AdvisorError, match="blocks must be positive widths adding up to the 10 columns"):
        fit_standardizer(torch.cat([small, large], dim=1), blocks=[4, 5])


def test_a_few_shot_probe_is_not_thrown_by_columns_that_happen_to_stand_still_on_its_training_rows():
    # 2 images per class: the class signal lives in 4 columns; 200 other columns vary as much as it on new
    # images, but happened to barely move on the 4 training rows. Scaled per column, those become as loud
    # as the signal and the probe fits them; one shared scale leaves them quiet.
    g = torch.Generator().manual_seed(0)
    signal = torch.tensor([[3.0, 3.0, 0.0, 0.0], [0.0, 0.0, 3.0, 3.0]])
    y_train, y_test = torch.tensor([0, 0, 1, 1]), torch.arange(2).repeat(100)
    x_train = torch.cat([signal[y_train] + 0.3 * torch.randn(4, 4, generator=g), 0.01 * torch.randn(4, 200, generator=g)], 1)
    x_test = torch.cat([signal[y_test] + 0.3 * torch.randn(200, 4, generator=g), 1.0 * torch.randn(200, 200, generator=g)], 1)
    fit = fit_probe({"f": x_train}, y_train, taps=["f"], num_classes=2)
    assert accuracy(predict_logits(fit, {"f": x_test}), y_test) > 0.9
    per_column = (x_train - x_train.mean(0)) / x_train.std(0, correction=0)
    W, b = fit_logistic(per_column, y_train, num_classes=2, l2=fit.l2)
    scaled = (x_test - x_train.mean(0)) / x_train.std(0, correction=0)
    assert accuracy(scaled @ W.T + b, y_test) < 0.75  # what the per-column scale did


def test_probe_is_deterministic():
    feats, y = tapped_features(3)
    a, rows_a = layer_probe_sweep(feats, y, taps=["stage4", "pre_logits"], num_classes=3, seed=7)
    b, rows_b = layer_probe_sweep(feats, y, taps=["stage4", "pre_logits"], num_classes=3, seed=7)
    assert rows_a == rows_b and torch.equal(a.W, b.W) and a.cv_table == b.cv_table


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda x, y: fit_logistic(x, y + 5, num_classes=3, l2=0.1), "labels must lie in [0, 2], got values in [5, 7]"),
        (lambda x, y: fit_logistic(x, y.float(), num_classes=3, l2=0.1), "labels must be a 1-D integer tensor"),
        (lambda x, y: fit_logistic(x, y, num_classes=3, l2=-1.0), "l2 must be a finite value >= 0, got -1.0"),
        (lambda x, y: fit_logistic(x[:5], y, num_classes=3, l2=0.1), "one entry per feature row (5), got 30"),
        (lambda x, y: fit_logistic(x, y, num_classes=3, l2=0.1, class_weights=torch.ones(2)), "shape (3,), got (2,)"),
        (lambda x, y: fit_logistic(x, y, num_classes=3, l2=0.1, init=(torch.zeros(3, 2), torch.zeros(3))), "init must be"),
        (lambda x, y: cv_select_l2(x, y, num_classes=3, folds=1), "folds must be at least 2, got 1"),
        (lambda x, y: cv_select_l2(x, y, num_classes=3, grid=[]), "non-empty list"),
        (lambda x, y: fit_probe({"a": x}, y, taps=["b"], num_classes=3), "taps ['b'] are not among the features ['a']"),
        (lambda x, y: fit_probe({"a": x}, y[:10], taps=["a"], num_classes=3), "one row per training label (10), got 30"),
        (lambda x, y: fit_probe({"a": x[:, 0]}, y, taps=["a"], num_classes=3), "must be a pooled 2-D tensor"),
    ],
)
def test_bad_input_raises_advisor_error(call, fragment):
    x, y = blobs([10, 10, 10])
    with pytest.raises(AdvisorError) as err:
        call(x, y)
    assert fragment in str(err.value)


def test_predict_logits_rejects_mismatched_width():
    feats, y = tapped_features(0, n_per_class=10)
    fit = fit_probe(feats, y, taps=["stage4"], num_classes=3, folds=2)
    with pytest.raises(AdvisorError, match="16 columns"):
        predict_logits(fit, {"stage4": feats["stage4"][:, :8]})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_choice():
    feats, y = tapped_features(0)
    cpu, _ = layer_probe_sweep(feats, y, taps=["stage4", "pre_logits"], num_classes=3)
    gpu, _ = layer_probe_sweep(feats, y, taps=["stage4", "pre_logits"], num_classes=3, device="cuda")
    assert gpu.taps == cpu.taps and gpu.W.device.type == "cpu"
    assert torch.allclose(predict_logits(gpu, feats).argmax(1), predict_logits(cpu, feats).argmax(1))


def test_masked_probes_solve_exactly_in_the_span_of_their_rows():
    """Fewer rows than features: the batched probes, solved in the rows' basis, equal full-width fits."""
    from advisor.measure.logistic import masked_logits

    g = torch.Generator().manual_seed(3)
    y = torch.arange(40) % 3
    x = torch.randn(40, 200, generator=g) + 0.8 * torch.nn.functional.one_hot(y, 200).float() * 3
    train = torch.stack([torch.arange(40) % 4 != f for f in range(4)])
    got = masked_logits(x, y, train, num_classes=3, l2=0.5, max_iter=500)
    assert got.shape == (40, 4, 3)
    z = fit_standardizer(x, per_column=True).apply(x)  # masked_logits scales per column (all rows)
    for p in range(4):
        W, b = fit_logistic(z[train[p]], y[train[p]], num_classes=3, l2=0.5, max_iter=500)
        assert torch.allclose(got[:, p], z @ W.T + b, atol=1e-2), p  # float32 L-BFGS tolerance, not the basis
    with pytest.raises(AdvisorError, match="mask"):
        masked_logits(x, y, torch.zeros(2, 40, dtype=torch.bool), num_classes=3, l2=0.5)
