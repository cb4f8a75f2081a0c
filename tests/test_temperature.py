"""Calibrated probabilities: temperature scaling fitted on validation, folded into the head, reported honestly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_splits

from advisor.backbones import create_backbone
from advisor.backbones.classifier import TransferClassifier, load_classifier
from advisor.core.stats import expected_calibration_error, reliability
from advisor.decide.models import RunPlan
from advisor.execute.evaluate import evaluate_run
from advisor.execute.runner import run_plan
from strategies.results import RunResult, classification_metrics
from strategies.temperature import MIN_IMAGES, MIN_SMALL_FIT, PRIOR_SIGMA, calibrate, calibrate_run, fit_temperature


def _sampled(n: int, temperature: float, *, classes: int = 6, seed: int = 0):
    """Logits ``z * temperature`` with labels drawn from softmax(z): the true temperature is ``temperature``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 2.5
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * temperature, y


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_that_generated_the_labels(true_t):
    logits, y = _sampled(6000, true_t)
    assert fit_temperature(logits, y) == pytest.approx(true_t, rel=0.06)


def test_the_temperature_is_the_most_probable_one_under_its_prior():
    logits, y = _sampled(800, 2.0, seed=3)
    t = fit_temperature(logits, y)

    def posterior(s):  # summed log-loss plus the log-normal prior's penalty
        return float(torch.nn.functional.cross_entropy(logits.double() / s, y, reduction="sum")) + \
            math.log(s) ** 2 / (2 * PRIOR_SIGMA**2)
    assert posterior(t) <= min(posterior(t * 0.99), posterior(t * 1.01))
    # Every prediction right: the log-loss alone falls as T shrinks, without end. The prior keeps a few
    # images from sending T to the range's end; many images are allowed further.
    few, many = (torch.eye(3)[torch.arange(n) % 3] * 3 for n in (30, 3000))
    t_few, t_many = fit_temperature(few, torch.arange(30) % 3), fit_temperature(many, torch.arange(3000) % 3)
    assert 0.1 < t_few < 1 and t_many < t_few


def test_expected_calibration_error_by_hand():
    # Two images at confidence 0.9 (one right), two at ~0.6 (both right): |0.5-0.9|/2 + |1-0.6|/2.
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 0])
    assert expected_calibration_error(p.log(), y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4, abs=1e-6)
    assert reliability(p.log(), y) == [(0.6, 1.0, 2), (0.9, 0.5, 2)]
    assert expected_calibration_error(torch.eye(4) * 50, torch.arange(4)) == pytest.approx(0.0, abs=1e-9)


def test_an_overconfident_head_is_calibrated_and_the_figures_are_cross_fitted():
    logits, y = _sampled(600, 3.0, seed=1)
    c = calibrate(logits, y)
    assert c.applied and c.temperature == pytest.approx(3.0, rel=0.15)
    assert c.ece_after < c.ece_before / 2 and c.nll_after < c.nll_before
    # Cross-fitted, not in-sample: the in-sample fit would score at least as well as the held-out folds.
    in_sample = float(torch.nn.functional.cross_entropy(logits.double() / c.temperature, y))
    assert in_sample <= c.nll_after
    assert sum(n for _, _, n in c.reliability_before) == sum(n for _, _, n in c.reliability_after) == 600


def test_too_few_images_or_one_class_leave_the_model_as_trained():
    logits, y = _sampled(MIN_IMAGES - 1, 3.0)
    c = calibrate(logits, y)
    assert not c.applied and c.temperature == 1.0 and f"calibration needs {MIN_IMAGES}" in c.reason
    c = calibrate(torch.randn(40, 3), torch.zeros(40, dtype=torch.long))
    assert not c.applied and "one class" in c.reason


def test_a_temperature_that_does_not_help_on_held_out_folds_is_not_kept():
    # Labels unrelated to the logits: no temperature generalises from some folds to another better than
    # flattening everything, and a model that already says "no idea" gains nothing.
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 4, (200,), generator=g)
    c = calibrate(torch.zeros(200, 4), y)
    assert not c.applied and c.temperature == 1.0 and "did not lower" in c.reason


def test_calibrating_a_run_folds_the_temperature_into_the_head_and_keeps_every_prediction():
    backbone = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    model = TransferClassifier(backbone, ["pre_logits"], 6)
    feats = torch.randn(300, model.feature_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.head.weight.mul_(40)  # a wildly overconfident head
        raw = model.classify_features(feats)
    y = torch.multinomial(torch.softmax(raw / 40, 1), 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    classes = [f"c{i}" for i in range(6)]
    metrics = classification_metrics(raw, y, classes)
    result = RunResult(strategy="linear-probe", metrics=metrics, trainable_params=1, total_params=1, seconds=0, device="cpu",
                       confidence=[1.0] * 300, val_logits=raw, val_labels=y)
    cal = calibrate_run(result, model, classes)
    assert cal.applied and cal.temperature > 5
    with torch.no_grad():
        after = model.classify_features(feats)
    torch.testing.assert_close(after, raw / cal.temperature, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.argmax(1), raw.argmax(1))
    assert result.metrics.val_accuracy == metrics.val_accuracy and result.metrics.val_loss < metrics.val_loss
    assert max(result.confidence) < 1.0
    assert "val_logits" not in json.loads(result.model_dump_json())  # never written to result.json


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    root = write_splits(tmp_path_factory.mktemp("cal") / "cal", {"train": 10, "val": 10, "test": 5})
    plan = RunPlan(dataset=str(root), backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=["test"], input_size=32)
    return root, run_plan(plan, runs_dir=root.parent / "runs", num_workers=0)


def test_a_run_reports_its_calibration_everywhere_and_the_saved_model_carries_it(calibrated_run):
    root, out = calibrated_run
    c = out.result.calibration
    assert c is not None and c.n == 30 and c.applied
    rd = Path(out.run_dir)
    assert json.loads((rd / "metrics.json").read_text())["calibration"]["temperature"] == c.temperature
    assert "- probabilities: calibrated (temperature" in (rd / "report.md").read_text()
    html = (rd / "report.html").read_text()
    assert "<h2>Calibration</h2>" in html and "temperature-scaled" in html
    model, card = load_classifier(rd)
    assert card.metrics["temperature"] == c.temperature
    # The test split is scored by the calibrated model, with the figure before calibration beside it.
    t = out.result.test
    assert t.ece is not None and t.ece_uncalibrated is not None and t.loss_uncalibrated is not None
    again = evaluate_run(rd, root, split="test")
    assert again.ece == pytest.approx(t.ece, abs=1e-4) and again.ece_uncalibrated == pytest.approx(t.ece_uncalibrated, abs=1e-4)
    events = [json.loads(line) for line in (rd / "events.jsonl").read_text().splitlines()]
    assert [e["temperature"] for e in events if e["event"] == "calibration"] == [c.temperature]


def test_a_plan_can_leave_the_probabilities_as_trained(calibrated_run, tmp_path):
    root, out = calibrated_run
    plan = RunPlan(dataset=str(root), backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=["test"], input_size=32,
                   calibrate=False)
    raw = run_plan(plan, runs_dir=tmp_path / "runs", num_workers=0)
    assert raw.result.calibration is None and raw.result.test.ece_uncalibrated is None
    assert "temperature" not in load_classifier(raw.run_dir)[1].metrics
    assert raw.result.metrics.val_accuracy == out.result.metrics.val_accuracy
    c = out.result.calibration
    assert raw.result.metrics.val_loss == pytest.approx(c.nll_before, abs=1e-4)


def test_a_probe_with_too_few_validation_images_is_calibrated_on_its_out_of_fold_training_predictions():
    backbone = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    model = TransferClassifier(backbone, ["pre_logits"], 6)
    classes = [f"c{i}" for i in range(6)]
    val, y_val = _sampled(MIN_IMAGES - 5, 0.25, seed=2)  # too few to fit on, and an underconfident head
    oof, y_oof = _sampled(300, 0.25, seed=3)
    result = RunResult(strategy="linear-probe", metrics=classification_metrics(val, y_val, classes), trainable_params=1,
                       total_params=1, seconds=0, device="cpu", confidence=[0.5] * len(y_val), val_logits=val,
                       val_labels=y_val, oof_logits=oof, oof_labels=y_oof)
    weight = model.head.weight.detach().clone()
    cal = calibrate_run(result, model, classes)
    assert cal.applied and cal.source == "training out-of-fold" and cal.n == 300
    assert cal.temperature == pytest.approx(0.25, rel=0.15) and "15 images, too few to fit on" in cal.reason
    torch.testing.assert_close(model.head.weight.detach(), weight / cal.temperature)
    assert "out-of-fold predictions" in __import__("advisor.report", fromlist=["x"]).calibration_phrase(cal)
    # with enough validation images the validation split decides, whatever out-of-fold rows the result carries
    val, y_val = _sampled(200, 1.0, seed=4)
    result = result.model_copy(update={"val_logits": val, "val_labels": y_val})
    assert calibrate_run(result, TransferClassifier(backbone, ["pre_logits"], 6), classes).source == "validation"


def _finetune_result(n: int, seed: int, strategy: str = "full-finetune"):
    classes = [f"c{i}" for i in range(3)]
    z, y = _sampled(n, 0.3, classes=3, seed=seed)  # an underconfident head, as the recipe leaves a fine-tune
    return classes, RunResult(strategy=strategy, metrics=classification_metrics(z, y, classes), trainable_params=1,
                              total_params=1, seconds=0, device="cpu", confidence=[0.5] * n, val_logits=z, val_labels=y)


def test_a_full_finetune_with_a_small_validation_split_fits_its_temperature_there_without_the_check():
    from advisor.report import calibration_phrase

    backbone = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    classes, result = _finetune_result(12, seed=6)
    model = TransferClassifier(backbone, ["pre_logits"], 3)
    weight, z, y = model.head.weight.detach().clone(), result.val_logits, result.val_labels
    cal = calibrate_run(result, model, classes)
    assert cal.applied and cal.source == "validation" and cal.n == 12
    assert cal.temperature == pytest.approx(fit_temperature(z, y), rel=1e-4) and cal.temperature < 1
    assert "kept without a held-out check" in cal.reason and "kept without a held-out check" in calibration_phrase(cal)
    torch.testing.assert_close(model.head.weight.detach(), weight / cal.temperature)
    # the reported "after" figures are still the cross-fitted ones, whatever they say
    assert cal.nll_after == pytest.approx(calibrate(z, y, min_images=2).nll_after, abs=1e-5)
    # a partial fine-tune likewise; below MIN_SMALL_FIT, or a probe without out-of-fold rows, stays as trained
    classes, result = _finetune_result(12, seed=6, strategy="partial-finetune")
    assert calibrate_run(result, TransferClassifier(backbone, ["pre_logits"], 3), classes).applied
    for n, strategy in ((MIN_SMALL_FIT - 1, "full-finetune"), (12, "linear-probe")):
        classes, result = _finetune_result(n, seed=7, strategy=strategy)
        cal = calibrate_run(result, TransferClassifier(backbone, ["pre_logits"], 3), classes)
        assert not cal.applied and cal.temperature == 1.0, (n, strategy)


def test_a_probe_keeps_its_cvs_out_of_fold_logits_each_from_the_fold_probe_that_held_the_row_out():
    from advisor.measure.logistic import fit_logistic, fit_standardizer, stratified_folds
    from strategies.probe import fit_probe

    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(8)
    x = torch.randn(24, 5, generator=g) + torch.nn.functional.one_hot(y, 5).float() * 2
    fit = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3, keep_oof=True)
    plain = fit_probe({"pre_logits": x}, y, taps=["pre_logits"], num_classes=3)
    assert plain.oof_logits is None and (plain.l2, plain.cv_table) == (fit.l2, fit.cv_table)  # keeping them changes nothing
    assert fit.oof_logits.shape == (24, 3)
    held = stratified_folds(y, 5, seed=0) == 2
    std = fit_standardizer(x[~held])
    W, b = fit_logistic(std.apply(x[~held]), y[~held], num_classes=3, l2=fit.l2)
    torch.testing.assert_close(fit.oof_logits[held], std.apply(x[held]) @ W.T + b, rtol=1e-3, atol=1e-3)
    # the CV accuracy is the share of rows these logits get right
    assert float((fit.oof_logits.argmax(1) == y).float().mean()) == pytest.approx(fit.cv_accuracy)


def test_a_probe_run_on_a_small_folder_gets_calibrated_probabilities(tmp_path):
    from conftest import write_class_images

    root = write_class_images(tmp_path / "small", {"red": 9, "green": 9, "blue": 9}, size=36)  # 6 validation images
    plan = RunPlan(dataset=str(root), backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=["test"], input_size=32)
    out = run_plan(plan, runs_dir=tmp_path / "runs", num_workers=0)
    cal = out.result.calibration
    assert out.result.metrics.n_val < MIN_IMAGES and cal.source == "training out-of-fold" and cal.n == 21
    assert cal.nll_after <= cal.nll_before or not cal.applied


def test_a_full_finetune_run_on_a_small_folder_gets_its_temperature_from_its_few_validation_images(tmp_path):
    from conftest import write_class_images

    root = write_class_images(tmp_path / "small", {"red": 20, "green": 20}, size=36)  # 8 validation images
    plan = RunPlan(dataset=str(root), backbone="test/tiny-cnn", strategy="full-finetune", rule_ids=["test"],
                   input_size=32, epochs=2)
    out = run_plan(plan, runs_dir=tmp_path / "runs", num_workers=0)
    cal = out.result.calibration
    assert out.result.metrics.n_val == 8 and cal.source == "validation" and cal.n == 8
    assert cal.applied and "kept without a held-out check" in cal.reason
    card = json.loads((Path(out.run_dir) / "model.json").read_text())
    assert card["metrics"]["temperature"] == pytest.approx(cal.temperature, rel=1e-5)
    assert "kept without a held-out check" in (Path(out.run_dir) / "report.md").read_text()
