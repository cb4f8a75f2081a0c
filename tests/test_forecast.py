"""advisor/decide/forecast.py: the gain model, its held-out residuals, the intervals and the timed steps."""

from __future__ import annotations

import math

import pytest
import torch

from advisor.decide.forecast import binomial_interval, fit_gain, forecast, gain_residuals, predict_gain
from advisor.decide.timing import finetune_step_seconds


def _records(gain):
    out = []
    for i, (pc, sim) in enumerate([(20, 0.8), (50, 0.6), (100, 0.4), (200, 0.3), (400, 0.7), (800, 0.2)]):
        probe = 0.8
        out.append({"dataset": f"d{i}", "train_per_class_median": pc, "similarity": sim,
                    "accuracy": {"linear-probe": probe - 0.01, "layer-probe": probe,
                                 "partial-finetune": probe + gain(pc, sim), "full-finetune": probe + gain(pc, sim) + 0.01}})
    return out


def test_the_gain_model_recovers_a_linear_gain_and_its_held_out_residuals_are_small():
    def truth(pc, sim):  # more data and less similar data gain more from fine-tuning
        return 0.01 + 0.02 * math.log10(pc) - 0.03 * sim

    records = _records(truth)
    coef = fit_gain(records, "partial-finetune")
    for pc, sim in ((30, 0.5), (300, 0.3)):
        assert predict_gain(coef, pc, sim) == pytest.approx(truth(pc, sim), abs=0.01)  # ridge shrinks a little
    assert max(abs(r) for r in gain_residuals(records, "partial-finetune")) < 0.02
    assert fit_gain(records[:2], "partial-finetune") is None  # too few records to fit three coefficients


def test_forecast_covers_every_strategy_with_ordered_intervals_and_times():
    records = _records(lambda pc, sim: 0.05)
    fc = forecast(probe_cv={"pre_logits": 0.82, "stage5": 0.85}, val_images=200, train_images=800, per_class=80,
                  similarity=0.5, epochs=10, step_seconds=0.5, batch_size=32, extract_images_per_second=50.0,
                  records=records)
    by = {f.strategy: f for f in fc.strategies}
    assert set(by) == {"linear-probe", "layer-probe", "partial-finetune", "full-finetune"}
    assert by["linear-probe"].accuracy == 0.82 and by["layer-probe"].accuracy == 0.85  # measured, not modelled
    assert by["partial-finetune"].accuracy == pytest.approx(0.85 + 0.05, abs=0.005)
    assert all(f.low <= f.accuracy <= f.high for f in fc.strategies)
    # 25 steps of 0.5 s and 200 validation images at 50 img/s per epoch, 10 epochs (the last epoch's pass over
    # the whole split is the result), plus one extraction pass over the 800 training images (the head's warm-up
    # probe, LP-FT: the validation images are not extracted, the epochs' passes score them)
    assert by["full-finetune"].seconds_per_epoch == pytest.approx(25 * 0.5 + 4.0)
    assert by["full-finetune"].seconds == pytest.approx(10 * 16.5 + 800 / 50)
    # 10 training images against 864 validation images: the learning curve reads 256 of them per epoch
    few = {f.strategy: f for f in forecast(probe_cv={"pre_logits": 0.82}, val_images=864, train_images=10, per_class=2,
                                           similarity=0.5, epochs=10, step_seconds=0.5, batch_size=32,
                                           extract_images_per_second=50.0, records=records).strategies}
    assert few["full-finetune"].seconds_per_epoch == pytest.approx(10 / 32 * 0.5 + 256 / 50, abs=0.05)
    assert few["full-finetune"].seconds == pytest.approx(10 * (10 / 32 * 0.5 + 256 / 50) + 864 / 50 + 10 / 50, abs=0.05)
    assert fc.records == [r["dataset"] for r in records]
    # without a track record the fine-tunes are not guessed
    assert {f.strategy for f in forecast(probe_cv={"pre_logits": 0.8}, val_images=100, train_images=400, per_class=40,
                                         similarity=None, epochs=5, step_seconds=None, batch_size=32,
                                         extract_images_per_second=None, records=[]).strategies} == {"linear-probe", "layer-probe"}


def test_binomial_interval_is_80_percent_wide_and_clipped():
    lo, hi = binomial_interval(0.9, 100)
    assert hi - lo == pytest.approx(2 * 1.2816 * math.sqrt(0.9 * 0.1 / 100), abs=1e-9)
    assert binomial_interval(1.0, 50)[1] == 1.0


def test_timing_steps_leave_the_weights_and_batchnorm_statistics_unchanged():
    from advisor.backbones import create_backbone

    bb = create_backbone("test/tiny-cnn", seed=0)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    assert any("running_mean" in k for k in before)  # the backbone has BatchNorm statistics to move
    seconds = finetune_step_seconds(bb, input_size=32, batch_size=32, device="cpu")
    assert seconds > 0
    after = bb.state_dict()
    assert [k for k, v in before.items() if not torch.equal(v, after[k])] == []


def test_a_short_step_is_timed_at_the_runs_own_batch_and_a_long_one_scaled_from_a_small_batch(monkeypatch):
    from advisor.backbones import create_backbone
    from advisor.decide import timing

    timed = []

    def fake_step(net, opt, batch, input_size, device, steps):  # a fixed cost per step plus a cost per image
        timed.append(batch)
        return 0.1 + 0.01 * batch

    monkeypatch.setattr(timing, "_median_step", fake_step)
    bb = create_backbone("test/tiny-cnn", seed=0)
    # 8 images scaled to 32: 4 x 0.18 = 0.72 s, under the limit: the real batch is timed (0.42 s)
    assert finetune_step_seconds(bb, input_size=32, batch_size=32, device="cpu", full_batch_under=1.0) \
        == pytest.approx(0.42)
    assert timed == [8, 32]
    timed.clear()
    # over the limit: the scaled small batch stands, and the long real step is not paid for
    assert finetune_step_seconds(bb, input_size=32, batch_size=32, device="cpu", full_batch_under=0.5) \
        == pytest.approx(0.72)
    assert timed == [8]
    timed.clear()
    assert finetune_step_seconds(bb, input_size=32, batch_size=4, device="cpu") == pytest.approx(0.14)
    assert timed == [4]  # a batch smaller than the probe batch is timed as it is


def test_a_budget_picks_the_best_forecast_that_fits_and_says_what_more_time_buys():
    from test_rules import LARGE, SIMILAR, TAPS, make_profile

    from advisor.core.errors import AdvisorError
    from advisor.decide.advise import _fit_budget, parse_duration
    from advisor.decide.forecast import Forecast, StrategyForecast
    from advisor.decide.rules import recommend

    assert parse_duration("15m") == 900 and parse_duration("1.5h") == 5400 and parse_duration("90") == 90
    for bad in ("soon", "-5m", "0s", ""):
        with pytest.raises(AdvisorError, match="positive duration"):
            parse_duration(bad)

    def rec_with(seconds):
        rec = recommend(make_profile(LARGE, score=SIMILAR), taps=TAPS)  # R3: partial fine-tune
        rec.forecast = Forecast(records=[], strategies=[
            StrategyForecast(strategy=s, accuracy=a, low=a - 0.02, high=a + 0.02, method="test", seconds=t)
            for s, a, t in (("linear-probe", 0.80, 10), ("layer-probe", 0.84, 12),
                            ("partial-finetune", 0.90, seconds), ("full-finetune", 0.91, 2 * seconds))])
        return rec

    rec = rec_with(600)
    _fit_budget(rec, 120, taps=TAPS)
    assert rec.strategy == rec.plan.strategy == "layer-probe" and rec.plan.rule_ids[-1] == "budget"
    assert any("full-finetune is forecast +7.0 points but needs about 1200 s" in w for w in rec.warnings)
    rec = rec_with(60)
    _fit_budget(rec, 1000, taps=TAPS)
    assert rec.strategy == "full-finetune" and rec.plan.recipe is not None
    rec = rec_with(600)
    _fit_budget(rec, 5, taps=TAPS)  # nothing fits: the advice stays and says so
    assert rec.strategy == "partial-finetune" and any("nothing is forecast to fit" in w for w in rec.warnings)


def test_runs_append_forecast_and_outcome_to_the_local_record_and_calibrate_reads_it(tmp_path):
    from test_rules import LARGE, SIMILAR, TAPS, make_profile

    from advisor.decide.forecast import Forecast, StrategyForecast, calibrate_forecaster
    from advisor.decide.records import local_datasets, local_outcomes, record_outcome
    from advisor.decide.rules import recommend

    rec = recommend(make_profile(LARGE, score=SIMILAR), taps=TAPS)
    assert record_outcome(rec, "partial-finetune", 0.9, 10.0, path=tmp_path / "r.jsonl") is None  # no forecast: nothing
    rec.forecast = Forecast(records=[], strategies=[
        StrategyForecast(strategy=s, accuracy=0.8, low=0.75, high=0.85, method="test", seconds=5.0)
        for s in ("linear-probe", "layer-probe", "partial-finetune")])
    path = tmp_path / "r.jsonl"
    for strategy, achieved in (("linear-probe", 0.78), ("partial-finetune", 0.9)):
        record_outcome(rec, strategy, achieved, 12.0, path=path)
    path.open("a").write("not json\n")  # a damaged line is skipped
    outcomes = local_outcomes(path)
    assert [o["strategy"] for o in outcomes] == ["linear-probe", "partial-finetune"]
    (entry,) = local_datasets(outcomes)
    assert entry["dataset"].endswith("(local)") and entry["accuracy"] == {"linear-probe": 0.78, "partial-finetune": 0.9}
    # the probe-gap model's inputs travel with the run: the sizes, the images' median side, the profile's size
    p = rec.profile
    assert entry["train_images"] == p.train_images and entry["profile_size"] == p.input_size
    assert entry["image_side"] == min(p.sizes.median_width, p.sizes.median_height)
    assert entry.get("cv_images") == p.probe_cv_images
    report = calibrate_forecaster(path)
    assert report.local_runs == 2 and report.mean_abs_error_points == pytest.approx(6.0)
    assert report.interval_coverage == 0.5 and report.records[-1] == entry["dataset"]


def test_probe_forecasts_shift_by_the_records_median_cv_gap_and_widen_by_its_spread():
    records = _records(lambda pc, sim: 0.05)
    gaps = [-0.03, -0.02, -0.02, -0.01, 0.0, -0.04]
    for r, g in zip(records, gaps, strict=True):
        r["probe_cv"] = {s: r["accuracy"][s] - g for s in ("linear-probe", "layer-probe")}
    fc = forecast(probe_cv={"pre_logits": 0.82, "stage5": 0.85}, val_images=10_000, train_images=800, per_class=80,
                  similarity=0.5, epochs=None, step_seconds=None, batch_size=32, records=records)
    by = {f.strategy: f for f in fc.strategies}
    assert by["linear-probe"].cv == 0.82 and by["linear-probe"].accuracy == pytest.approx(0.82 - 0.02)
    # 10,000 validation images: the binomial spread (0.5 points) is below the records' 10th-90th
    # percentile gaps (-3.9 and -0.1 points around a median of -2), which set the interval
    assert by["linear-probe"].low == pytest.approx(0.80 - 0.019, abs=1e-4)
    assert by["linear-probe"].high == pytest.approx(0.80 + 0.019, abs=1e-4)
    assert by["partial-finetune"].accuracy == pytest.approx(0.83 + 0.05, abs=0.005)  # from the shifted best probe


def test_a_short_schedule_credits_no_fine_tune_gain_and_the_cap_then_picks_the_probe():
    records = _records(lambda pc, sim: 0.05)
    kw = dict(probe_cv={"pre_logits": 0.82, "stage5": 0.85}, val_images=200, train_images=800, per_class=80,
              similarity=0.5, epochs=2, step_seconds=0.5, batch_size=32, extract_images_per_second=50.0, records=records)
    full = {f.strategy: f for f in forecast(**kw).strategies}
    short = {f.strategy: f for f in forecast(**kw, short_schedule=True).strategies}
    assert full["full-finetune"].accuracy > 0.89
    assert short["full-finetune"].accuracy == short["layer-probe"].accuracy == 0.85
    assert short["full-finetune"].low < short["layer-probe"].low  # the gain's room stays on the low side
    assert "no gain credited" in short["full-finetune"].method


def test_every_strategy_ends_with_one_pass_over_the_test_split():
    records = _records(lambda pc, sim: 0.05)
    kw = dict(probe_cv={"pre_logits": 0.82, "stage5": 0.85}, val_images=200, train_images=800, per_class=80,
              similarity=0.5, epochs=2, step_seconds=0.5, batch_size=32, extract_images_per_second=50.0, records=records)
    without = {f.strategy: f for f in forecast(**kw).strategies}
    with_test = {f.strategy: f for f in forecast(**kw, test_images=500).strategies}
    assert set(without) == set(with_test) == {"linear-probe", "layer-probe", "partial-finetune", "full-finetune"}
    for name, f in with_test.items():
        assert f.seconds == pytest.approx(without[name].seconds + 500 / 50.0, abs=0.11), name
        assert (f.accuracy, f.low, f.high) == (without[name].accuracy, without[name].low, without[name].high)


def test_probe_solves_add_to_their_time_and_a_partial_step_is_timed_with_its_frozen_stages():
    from advisor.backbones import create_backbone

    fc = forecast(probe_cv={"pre_logits": 0.8}, val_images=200, train_images=800, per_class=80, similarity=0.5,
                  epochs=None, step_seconds=None, batch_size=32, extract_images_per_second=50.0, records=[],
                  probe_solve_seconds={"linear-probe": 3.0, "layer-probe": 12.0})
    by = {f.strategy: f.seconds for f in fc.strategies}
    assert by == {"linear-probe": 1000 / 50 + 3.0, "layer-probe": 1000 / 50 + 12.0}
    bb = create_backbone("test/tiny-cnn", seed=0)
    flags = {n: p.requires_grad for n, p in bb.named_parameters()}
    assert finetune_step_seconds(bb, input_size=32, batch_size=32, device="cpu", frozen_stages=bb.num_stages() - 1) > 0
    assert {n: p.requires_grad for n, p in bb.named_parameters()} == flags  # the timing leaves the flags as they were


def test_a_short_cap_marks_the_fine_tunes_short_whatever_the_plan_and_warns_only_on_a_fine_tune_plan():
    from test_rules import LARGE, SIMILAR, SMALL, TAPS, make_profile

    from advisor.decide.advise import _short_cap
    from advisor.decide.rules import recommend

    probe_plan = recommend(make_profile(SMALL, score=SIMILAR), taps=TAPS, epochs_cap=1)
    assert probe_plan.plan.recipe is None and _short_cap(probe_plan) == (True, None)  # its forecast credits no gain
    finetune_plan = recommend(make_profile(LARGE, score=SIMILAR), taps=TAPS, epochs_cap=6)  # 6 of 24 epochs, 25 %
    short, warning = _short_cap(finetune_plan)
    assert short and "keeps 6 of 24 epochs (25%)" in warning
    assert _short_cap(recommend(make_profile(LARGE, score=SIMILAR), taps=TAPS, epochs_cap=7)) == (False, None)


def test_resolution_lost_counts_the_octaves_the_input_size_drops_below_what_the_profile_saw():
    from advisor.decide.forecast import resolution_lost

    assert resolution_lost(256, 64, 224) == pytest.approx(math.log2(224 / 64))  # photos: 1.8 octaves
    assert resolution_lost(28, 64, 224) == 0.0  # digits smaller than either size lose nothing
    assert resolution_lost(128, 64, 224) == pytest.approx(1.0)  # the profile saw only the image's own 128 px
    assert resolution_lost(None, 224, 224) == 0.0 and resolution_lost(0, 112, None) == pytest.approx(1.0)


def test_learning_curve_term_lifts_the_few_shot_end_most():
    from advisor.decide.forecast import learning_curve_term

    assert learning_curve_term(2, 20, 20) == pytest.approx(1 - 2 ** -0.5)  # folds of 1 per class; the run fits on 2
    assert learning_curve_term(100, 1000, 1000) == pytest.approx(80 ** -0.5 - 100 ** -0.5)  # 5 folds on the whole split
    # the same 25 % more images per class lift a 4-shot CV more than a 40-shot one
    assert learning_curve_term(5, 50, 50) > 3 * learning_curve_term(50, 500, 500) > 0
    assert learning_curve_term(100, 1000, 300) > learning_curve_term(100, 1000, 1000)  # a sample's folds saw fewer


def test_cv_size_ratio_is_how_many_more_images_per_class_the_run_trains_on_than_a_cv_fold():
    from advisor.decide.forecast import cv_size_ratio

    assert cv_size_ratio(2, 20, 20) == pytest.approx(1.0)  # 2 per class: 2 folds of 1; the run fits on 2
    assert cv_size_ratio(100, 1000, 1000) == pytest.approx(math.log2(5 / 4))  # 5 folds on the whole split
    assert cv_size_ratio(100, 1000, 300) == pytest.approx(math.log2(100 / (30 * 4 / 5)))  # a 300-image sample
    assert cv_size_ratio(100, None, None) == pytest.approx(math.log2(5 / 4))  # unknown: the whole split


def test_a_probe_forecast_at_a_smaller_input_size_drops_with_the_detail_the_images_lose():
    # references where the probe lost 15 points on large photos at 64 px and nothing on small images
    refs = []
    for i, (side, gap) in enumerate([(256, -0.15), (300, -0.15), (28, 0.0), (64, 0.0), (256, -0.15), (32, 0.0)]):
        refs.append({"dataset": f"d{i}", "input_size": 64, "image_side": side, "profile_size": 224, "train_images": 1000,
                     "cv_images": 1000, "train_per_class_median": 100, "similarity": 0.5,
                     "accuracy": {"linear-probe": 0.8 + gap, "layer-probe": 0.8 + gap}, "sample_cv": {"pre_logits": 0.8}})
    common = dict(probe_cv={"pre_logits": 0.8}, val_images=500, train_images=1000, per_class=100, similarity=0.5,
                  epochs=None, step_seconds=None, batch_size=32, records=refs, input_size=64, cv_images=1000,
                  profile_size=224)
    photos = {f.strategy: f for f in forecast(**common, image_side=400).strategies}["linear-probe"]
    digits = {f.strategy: f for f in forecast(**common, image_side=28).strategies}["linear-probe"]
    assert photos.accuracy == pytest.approx(0.65, abs=0.02) and digits.accuracy == pytest.approx(0.80, abs=0.02)
    assert "1.8 octaves of detail lost at 64 px" in photos.method and "no detail lost at 64 px" in digits.method


def test_forecast_times_show_whole_seconds_and_a_cached_probes_fraction_as_under_one():
    from advisor.cli.advice import seconds_text

    assert (seconds_text(0.4), seconds_text(0.5), seconds_text(187.2), seconds_text(None)) == ("<1 s", "<1 s", "187 s", "-")


def test_the_extraction_pass_is_timed_as_extraction_runs_it_and_remembered_apart_from_the_step(tmp_path):
    import json

    from advisor.backbones import create_backbone
    from advisor.decide import advise
    from advisor.decide.models import RunPlan
    from advisor.decide.timing import forward_seconds

    bb = create_backbone("test/tiny-cnn", seed=0)
    assert forward_seconds(bb, input_size=32, batch_size=32, device="cpu") > 0
    plan = RunPlan(dataset="x", backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=[], input_size=32,
                   batch_size=16)
    fwd = advise._step_seconds(bb, plan, torch.device("cpu"), 0, tmp_path, forward=True)[0]
    step = advise._step_seconds(bb, plan, torch.device("cpu"), 0, tmp_path)[0]
    keys = list(json.loads((tmp_path / advise.STEP_TIMES).read_text()))
    # two entries: the forward at the extraction's batch (32 on the CPU), the step at the plan's (16)
    assert len(keys) == 2 and "|32|forward|" in keys[0] and "|16|0|" in keys[1] and fwd > 0 and step > 0


def test_timing_and_extraction_give_the_backbone_back_in_its_own_memory_layout(tmp_path):
    from PIL import Image

    from advisor.backbones import create_backbone
    from advisor.backbones.backbone import memory_format_of
    from advisor.decide.timing import forward_seconds
    from advisor.measure.features import extract_features

    bb = create_backbone("test/tiny-cnn", seed=0)
    assert memory_format_of(bb) == torch.contiguous_format
    forward_seconds(bb, input_size=32, batch_size=4, device="cpu")
    finetune_step_seconds(bb, input_size=32, batch_size=4, device="cpu")
    paths = []
    for i in range(3):
        Image.new("RGB", (40, 40), (40 * i, 80, 120)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    extract_features(paths, bb, device="cpu", num_workers=0, use_cache=False)
    # extraction and timing run channels_last for speed; a model saved and reloaded is NCHW and must match
    assert memory_format_of(bb) == torch.contiguous_format
    bb.to(memory_format=torch.channels_last)
    forward_seconds(bb, input_size=32, batch_size=4, device="cpu")
    assert memory_format_of(bb) == torch.channels_last


def test_a_few_shot_probe_starts_from_its_cv_whatever_a_reference_records_of_a_holdout():
    # references that also carry an (old) holdout probe: the forecast reads the CV route only, and the
    # forecaster accepts no validation-derived input
    refs = []
    for i, cv in enumerate([0.3, 0.9, 0.5, 0.7, 0.2, 0.6]):
        refs.append({"dataset": f"d{i}", "input_size": 224, "image_side": 256, "profile_size": 224, "train_images": 20,
                     "cv_images": 20, "train_per_class_median": 2, "similarity": 0.5,
                     "accuracy": {"linear-probe": 0.70, "layer-probe": 0.60, "partial-finetune": 0.65, "full-finetune": 0.66},
                     "sample_cv": {"pre_logits": cv, "stage4": cv + 0.05}, "probe_holdout": {"pre_logits": 0.72, "stage4": 0.62},
                     "holdout_images": 280})
    common = dict(probe_cv={"pre_logits": 0.25, "stage4": 0.35}, val_images=500, train_images=20, per_class=2,
                  similarity=0.5, epochs=None, step_seconds=None, batch_size=32, input_size=224,
                  cv_images=20, image_side=256, profile_size=224)
    fc = {f.strategy: f for f in forecast(**common, records=refs).strategies}
    assert "CV on pre_logits (profiling sample) 0.250" in fc["linear-probe"].method and "holdout" not in fc["linear-probe"].method
    plain = [{k: v for k, v in r.items() if k not in ("probe_holdout", "holdout_images")} for r in refs]
    assert fc["linear-probe"].accuracy == {f.strategy: f for f in forecast(**common, records=plain).strategies}["linear-probe"].accuracy
    with pytest.raises(TypeError):
        forecast(**common, records=refs, probe_holdout={"pre_logits": 0.5}, holdout_images=280)


def test_the_probe_interval_widens_where_references_of_as_many_images_per_class_missed_more_never_narrows():
    from advisor.decide.probe_gap import probe_gap_spread

    refs = []
    # 6 few-shot references whose CV missed by +-15 points, 30 large ones by +-1 (the pooled 80 % spans the latter)
    for i, (pc, miss) in enumerate([(2, 0.15)] * 6 + [(200, 0.01)] * 30):
        sign = 1 if i % 2 else -1
        refs.append({"dataset": f"d{i}", "train_per_class_median": pc, "input_size": 224, "image_side": 256,
                     "profile_size": 224, "train_images": 10 * pc, "cv_images": min(10 * pc, 300),
                     "accuracy": {"linear-probe": 0.6 + sign * miss, "layer-probe": 0.6 - sign * miss},
                     "sample_cv": {"pre_logits": 0.6, "stage4": 0.6}})
    pooled = probe_gap_spread(refs)
    few, many = probe_gap_spread(refs, 2), probe_gap_spread(refs, 200)
    assert few[0] < pooled[0] - 0.02 and few[1] > pooled[1] + 0.02  # the few-shot neighbours' misses widen it
    assert many == pooled  # the large sets' small misses do not narrow it
    assert probe_gap_spread(refs[:3]) == (0.0, 0.0)  # too few references: no residual spread


def test_cold_extraction_adds_decoding_on_the_cpu_and_overlaps_it_on_a_gpu():
    from advisor.decide.timing import extraction_seconds_per_image

    # On the CPU the loader's worker shares the cores the forward uses: the two add up.
    assert extraction_seconds_per_image(0.0072, 0.0027, "cpu") == pytest.approx(0.0099)
    # On a GPU the CPU workers decode while the device computes: the slower sets the pace.
    assert extraction_seconds_per_image(0.0004, 0.0027, "cuda") == pytest.approx(0.0027)
    assert extraction_seconds_per_image(0.0040, 0.0027, torch.device("cuda", 0)) == pytest.approx(0.0040)


def test_a_fine_tune_with_the_decoded_store_is_charged_decoding_once_not_every_epoch(monkeypatch):
    records = _records(lambda pc, sim: 0.05)

    def full(epochs: int):
        fc = forecast(probe_cv={"pre_logits": 0.82}, val_images=200, train_images=800, per_class=80, similarity=0.5,
                      epochs=epochs, step_seconds=0.5, batch_size=32, extract_images_per_second=50.0,
                      decode_seconds_per_image=0.01, records=records)
        return {f.strategy: f for f in fc.strategies}["full-finetune"]

    # 10 epochs keep decoded images (advisor.data.decoded): 8 s of decoding in all, not 8 s an epoch
    ten = full(10)
    assert ten.seconds_per_epoch == pytest.approx(25 * 0.5 + 4.0)
    assert ten.seconds == pytest.approx(10 * 16.5 + 800 * 0.01 + 800 / 50)
    one = full(1)  # one epoch reads each image once, without the store: the epoch pays it
    assert one.seconds_per_epoch == pytest.approx(25 * 0.5 + 800 * 0.01 + 4.0)
    monkeypatch.setenv("ADVISOR_DECODED_CACHE", "off")  # the store switched off: every epoch decodes again
    assert full(10).seconds_per_epoch == pytest.approx(25 * 0.5 + 800 * 0.01 + 4.0)
