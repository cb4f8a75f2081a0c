"""What more images would buy (the probe's learning curve) and which labels look wrong, on data with a known answer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import advisor
from advisor.decide.curves import accuracy_at, curve_gain, fit_power_law
from advisor.measure.labels import find_label_issues, label_report, out_of_fold_probabilities
from advisor.measure.models import CurvePoint


def _curve(n: float) -> float:
    return 1 - (0.05 + 0.6 * n ** -0.5)


def test_the_power_law_recovers_a_saturating_curve():
    points = [CurvePoint(per_class=n, accuracy=_curve(n), images=4000) for n in (4, 8, 16, 32)]
    law = fit_power_law(points)
    for n in (64, 128, 512):
        assert accuracy_at(law, n) == pytest.approx(_curve(n), abs=0.01), n
    gain, lo, hi = curve_gain(points, 32, 4)
    truth = _curve(128) - _curve(32)
    assert gain == pytest.approx(truth, abs=0.01) and lo <= truth <= hi


def test_the_interval_widens_with_fewer_images_and_one_point_says_nothing():
    few = [CurvePoint(per_class=n, accuracy=round(_curve(n), 3), images=40) for n in (4, 8, 16)]
    many = [p.model_copy(update={"images": 4000}) for p in few]
    (_, lo_f, hi_f), (_, lo_m, hi_m) = curve_gain(few, 16, 4), curve_gain(many, 16, 4)
    assert hi_f - lo_f > hi_m - lo_m > 0
    assert curve_gain(few[:1], 16, 2) is None


def _clusters(n_per_class: int = 40, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 32, generator=g) * 4
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), 32, generator=g), y


def test_planted_label_flips_are_found_first():
    x, y = _clusters()
    g = torch.Generator().manual_seed(1)
    flipped = torch.randperm(len(y), generator=g)[:6]
    noisy = y.clone()
    noisy[flipped] = (y[flipped] + 1) % 3
    found = find_label_issues(out_of_fold_probabilities(x, noisy, num_classes=3), noisy)
    top = {i for i, *_ in found[: len(flipped)]}
    assert len(top & set(flipped.tolist())) >= 5  # precision >= 5/6 in the top k
    for i, suggested, p_given, p_suggested in found:
        if i in set(flipped.tolist()):
            assert suggested == int(y[i]) and p_suggested > p_given


def test_a_clean_set_has_few_issues_and_duplicates_with_other_labels_are_listed():
    x, y = _clusters(seed=3)
    paths = [f"img{i}.png" for i in range(len(y))]
    rep = label_report(x, y, paths, ["train"] * len(y), ["a", "b", "c"], duplicates=[("img0.png", "train", "a", "b")])
    probe = [i for i in rep.issues if i.reason == "probe"]
    assert rep.checked == len(y) and len(probe) <= 2
    assert any(i.reason == "duplicate" and i.path == "img0.png" and i.suggested == "b" for i in rep.issues)


def test_a_weak_checking_probe_says_its_list_is_mostly_hard_images_not_wrong_labels():
    from advisor.measure.labels import RELIABLE_ACCURACY
    from advisor.report.html import _label_section

    x, y = _clusters(seed=3)
    paths = [f"img{i}.png" for i in range(len(y))]
    strong = label_report(x, y, paths, ["train"] * len(y), ["a", "b", "c"])
    assert strong.probe_accuracy >= RELIABLE_ACCURACY and strong.caution() is None
    # overlapping classes: the probe is right on about half, and every image it gets wrong is "flagged"
    g = torch.Generator().manual_seed(5)
    blurred = x * 0.05 + torch.randn(x.shape, generator=g)
    weak = label_report(blurred, y, paths, ["train"] * len(y), ["a", "b", "c"])
    assert weak.probe_accuracy < RELIABLE_ACCURACY and len(weak.issues) > 5
    assert f"right on {weak.probe_accuracy:.0%}" in weak.caution() and "hard images" in weak.caution()
    html = "".join(_label_section(type("P", (), {"labels": weak})()))
    assert "hard images" in html and "hard images" not in "".join(_label_section(type("P", (), {"labels": strong})()))


def test_recommend_shows_more_data_and_a_run_writes_label_issues(tmp_path):
    from conftest import write_class_images

    data = write_class_images(tmp_path / "d", {"red": 20, "blue": 20}, size=36)
    rec = advisor.recommend(data, backbone="test/tiny-cnn", input_size=32, cache_dir=tmp_path / "cache")
    assert [r.factor for r in rec.more_data.rows] == [1, 2, 4]
    for row in rec.more_data.rows:
        for acc, lo, hi in row.strategies.values():
            assert 0 <= lo <= acc <= hi <= 1 and not math.isnan(acc)
    assert "per class" in rec.more_data.boundary and rec.more_data.boundary_per_class >= 20
    assert rec.profile.labels is not None and rec.profile.labels.checked > 0
    out = advisor.run(data, backbone="test/tiny-cnn", input_size=32, runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    csv = (Path(out.run_dir) / "label_issues.csv").read_text().splitlines()
    assert csv[0].startswith("path,split,given,suggested") and len(csv) == 1 + len(rec.profile.labels.issues)


def test_backbones_rank_by_forecast_and_a_budget_picks_the_best_pair_that_fits():
    from advisor.decide.backbones import BackboneOption, rank_options

    def opt(name, probe, ft, ft_secs):
        return BackboneOption(backbone=name, knn_accuracy=None, logme=None, best_strategy="full-finetune" if ft > probe
                              else "linear-probe", best_accuracy=max(probe, ft),
                              strategies={"linear-probe": (probe, probe - .1, probe + .1, 5.0),
                                          "full-finetune": (ft, ft - .1, ft + .1, ft_secs)})

    options = [opt("small", 0.80, 0.85, 100.0), opt("big", 0.82, 0.90, 400.0)]
    ranking, chosen = rank_options([o.model_copy() for o in options])
    assert [o.backbone for o in ranking.options] == ["big", "small"] and chosen == 0 and ranking.chosen == "small"
    ranking, chosen = rank_options([o.model_copy() for o in options], budget_seconds=200)
    assert ranking.chosen == "small" and "within the budget: small" in ranking.sentence
    ranking, chosen = rank_options([o.model_copy() for o in options], budget_seconds=1000)
    assert ranking.chosen == "big" and chosen == 1


def test_kendall_tau_of_the_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("backbone_rank", Path(__file__).parents[1] / "benchmarks" / "backbone_rank.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.kendall_tau(["a", "b", "c"], ["a", "b", "c"]) == 1
    assert mod.kendall_tau(["a", "b", "c"], ["c", "b", "a"]) == -1
    assert mod.kendall_tau(["a", "b", "c"], ["a", "c", "b"]) == pytest.approx(1 / 3)


def test_more_images_never_forecast_below_today():
    """The forecaster's size terms may dip outside its record; the answer keeps every strategy at least at today's."""
    from types import SimpleNamespace

    from advisor.decide.curves import forecast_at

    points = [CurvePoint(per_class=n, accuracy=round(_curve(n), 4), images=int(n * 10)) for n in (5, 10, 20, 40)]
    profile = SimpleNamespace(train_per_class_median=40, train_images=400, probe_curve=points)

    def run_forecast(**kw):  # a forecaster whose calibration falls with size, whatever the probe CV
        acc = kw["probe_cv"]["pre_logits"] - 0.02 * math.log2(kw["per_class"] / 40)
        return SimpleNamespace(strategies=[SimpleNamespace(strategy=s, accuracy=acc, low=acc - 0.05, high=acc + 0.05)
                                           for s in ("linear-probe", "full-finetune")])

    today = {"linear-probe": 0.80, "full-finetune": 0.83}
    strategies, (gain, low, high) = forecast_at(profile, {"probe_cv": {"pre_logits": 0.80}}, run_forecast, 4,
                                                epochs=8, today=today)
    assert 0 <= low <= gain <= high
    for s, (acc, lo, hi) in strategies.items():
        assert acc >= today[s] and lo <= acc <= hi
    assert strategies["full-finetune"][0] == today["full-finetune"]  # the dip was floored, not passed on
    unfloored, _ = forecast_at(profile, {"probe_cv": {"pre_logits": 0.80}}, run_forecast, 4, epochs=8)
    assert unfloored["full-finetune"][0] < today["full-finetune"]
