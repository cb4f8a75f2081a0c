"""advisor/decide/rules/policy.py and its use: one decision, one sentence, the plan shown is the plan that runs."""

from __future__ import annotations

import json
import math

import pytest

from advisor.decide.forecast import Forecast, StrategyForecast, forecast
from advisor.decide.rules.policy import choose, decide, one_se_choice, views
from advisor.decide.timing import DEFAULT_RUN_OVERHEAD_SECONDS, run_overhead, time_correction


def _fc(acc: dict[str, float], half: float = 0.02, seconds: dict[str, float] | None = None) -> Forecast:
    seconds = seconds or {"linear-probe": 10, "layer-probe": 12, "partial-finetune": 100, "full-finetune": 180}
    return Forecast(records=[], strategies=[
        StrategyForecast(strategy=s, accuracy=a, low=a - half, high=a + half, method="test", seconds=seconds.get(s))
        for s, a in acc.items()])


FAR_AHEAD = {"linear-probe": 0.80, "layer-probe": 0.81, "partial-finetune": 0.86, "full-finetune": 0.90}
CLOSE = {"linear-probe": 0.80, "layer-probe": 0.81, "partial-finetune": 0.805, "full-finetune": 0.815}


def test_the_one_standard_error_rule_prefers_the_cheaper_strategy_only_within_the_error():
    close = one_se_choice(views(_fc(CLOSE)))  # all within 1.6 points (one SE of a +-2-point 80 % interval)
    assert close.strategy == "linear-probe"
    assert one_se_choice(views(_fc(FAR_AHEAD))).strategy == "full-finetune"
    # a wider interval is a larger standard error: the cheaper strategy wins again
    assert one_se_choice(views(_fc(FAR_AHEAD, half=0.15))).strategy == "linear-probe"


def test_hybrid_lets_the_forecast_pick_the_row_and_the_table_the_column():
    fv = views(_fc(FAR_AHEAD))
    assert choose("hybrid", table="linear-probe", column="similar", fc=fv)[0] == "partial-finetune"
    assert choose("hybrid", table="layer-probe", column="different", fc=fv)[0] == "full-finetune"
    assert choose("hybrid", table="full-finetune", column="different", fc=views(_fc(CLOSE)))[0] == "layer-probe"
    assert choose("table", table="linear-probe", column="similar", fc=fv)[0] == "linear-probe"
    assert choose("hybrid", table="linear-probe", column="similar", fc=[])[0] == "linear-probe"  # no forecast: the table
    with pytest.raises(ValueError, match="unknown policy"):
        choose("coin", table="linear-probe", column="similar", fc=fv)


def test_a_disagreement_is_one_sentence_with_the_numbers_and_the_reason():
    d = decide("table", table="linear-probe", table_rule="R1", column="similar", forecast=_fc(FAR_AHEAD))
    assert not d.agree and d.chosen == "linear-probe" and d.forecast_best == "full-finetune"
    assert d.sentence.startswith("the table says linear-probe (R1); full-finetune is forecast +10.0 points [80 % ")
    assert "for 18.0x the time; chosen: linear-probe, because" in d.sentence and d.sentence.endswith(".")
    assert d.sentence.rstrip(".").count(". ") == 0  # one sentence
    d = decide("hybrid", table="linear-probe", table_rule="R1", column="similar", forecast=_fc(FAR_AHEAD))
    assert d.chosen == "partial-finetune" and "chosen: partial-finetune, because the forecast puts" in d.sentence
    d = decide("hybrid", table="linear-probe", table_rule="R1", column="similar", forecast=_fc(CLOSE))
    assert d.agree and d.chosen == "linear-probe" and d.sentence.startswith("the table (R1) and the forecast agree")
    d = decide("forecast", table="partial-finetune", table_rule="R3", column="similar", forecast=_fc(CLOSE))
    assert d.chosen == "linear-probe" and "cheapest strategy within one standard error" in d.sentence
    assert decide("hybrid", table="layer-probe", table_rule="R2", column="different").chosen == "layer-probe"


def _records():
    out = []
    for i, (pc, sim) in enumerate([(20, 0.8), (50, 0.6), (100, 0.4), (200, 0.3), (400, 0.7), (800, 0.2)]):
        acc = {"linear-probe": 0.79, "layer-probe": 0.8, "partial-finetune": 0.85, "full-finetune": 0.86}
        out.append({"dataset": f"d{i}", "train_per_class_median": pc, "similarity": sim, "input_size": 128,
                    "schedule_share": 0.3, "accuracy": acc, "sample_cv": {"pre_logits": 0.81, "stage5": 0.83}})
    return out


KW = dict(probe_cv={"pre_logits": 0.82, "stage5": 0.85}, val_images=200, train_images=800, per_class=80, similarity=0.5,
          epochs=8, step_seconds=None, batch_size=32)


def test_the_forecast_names_settings_outside_its_record_and_the_nearest_recorded_one():
    inside = forecast(**KW, records=_records(), input_size=128, schedule_share=0.3)
    assert inside.extrapolating == []
    outside = forecast(**KW, records=_records(), input_size=224, schedule_share=0.1)
    assert any("input size 224 px" in n and "nearest 128 px" in n for n in outside.extrapolating)
    assert any("keeps 10% of the schedule" in n for n in outside.extrapolating)
    tiny = forecast(**{**KW, "per_class": 2}, records=_records(), input_size=128, schedule_share=0.3)
    assert any("2 training images per class" in n and "nearest 20" in n for n in tiny.extrapolating)
    # each range covered on its own, not together: the record's only 224-px run has 5 per class
    mixed = _records() + [{**_records()[0], "dataset": "d224", "input_size": 224, "train_per_class_median": 5}]
    big = forecast(**{**KW, "per_class": 400}, records=mixed, input_size=224, schedule_share=0.3)
    assert big.extrapolating == ["400 training images per class at 224 px: the record's runs at 224 px span 5-5; "
                                 "nearest 5 (other sizes cover it)"]
    assert forecast(**{**KW, "per_class": 400}, records=mixed, input_size=128, schedule_share=0.3).extrapolating == []


def test_the_probe_forecast_follows_the_input_size_it_will_train_at():
    records = []
    for size, drop in ((64, -0.12), (128, -0.02)):  # smaller inputs fall further below the 224-px sample CV
        for i, pc in enumerate((20, 50, 100, 200)):
            cv = 0.85
            records.append({"dataset": f"d{i}", "train_per_class_median": pc, "similarity": 0.5, "input_size": size,
                            "schedule_share": 0.3, "sample_cv": {"pre_logits": cv, "stage5": cv},
                            "accuracy": {"linear-probe": cv + drop, "layer-probe": cv + drop,
                                         "partial-finetune": cv + drop + 0.03, "full-finetune": cv + drop + 0.04}})
    at = {s: {f.strategy: f.accuracy for f in forecast(**KW, records=records, input_size=s, schedule_share=0.3).strategies}
          for s in (64, 128)}
    assert at[64]["linear-probe"] == pytest.approx(0.82 - 0.12, abs=0.015)  # ridge shrinks a little
    assert at[128]["linear-probe"] == pytest.approx(0.82 - 0.02, abs=0.015)
    assert at[64]["linear-probe"] < at[128]["linear-probe"] - 0.07


def test_a_datasets_own_records_are_shown_as_earlier_runs_never_counted_as_references(tmp_path):
    mine = str(tmp_path / "flowers")
    records = _records() + [
        {"dataset": "flowers (local)", "path": mine, "train_per_class_median": 80, "similarity": 0.5, "input_size": 128,
         "accuracy": {"linear-probe": 0.91}},
        {"dataset": "flowers", "train_per_class_median": 600, "similarity": 0.6, "input_size": 64,
         "accuracy": {"linear-probe": 0.7, "layer-probe": 0.7, "partial-finetune": 0.9, "full-finetune": 0.9}}]
    fc = forecast(**KW, records=records, input_size=128, dataset=mine)
    assert "flowers" not in fc.records and "flowers (local)" not in fc.records and len(fc.records) == 6
    assert fc.earlier_runs == {"linear-probe": 0.91}  # this machine's run; the same-named reference is only left out
    assert any("your earlier runs of this dataset" in n for n in fc.notes)
    assert any("reference dataset of the same name (flowers) is left out" in n for n in fc.notes)
    other = forecast(**KW, records=records, input_size=128, dataset=str(tmp_path / "pets"))
    assert "flowers" in other.records and other.earlier_runs == {}


def test_finished_runs_correct_the_time_and_broken_records_are_ignored():
    outcomes = [{"device": "cpu x2", "seconds": 300.0, "forecast_seconds": 100.0},
                {"device": "cpu x2", "seconds": 200.0, "forecast_seconds": 100.0},
                {"device": "cpu x2", "seconds": float("nan"), "forecast_seconds": 100.0},
                {"device": "cpu x2", "seconds": 1e300, "forecast_seconds": 1.0},
                {"device": "cpu x1", "seconds": 10.0, "forecast_seconds": 100.0}]
    assert time_correction(outcomes, device="cpu x2") == (2.5, 2)
    assert time_correction([], device="cpu x2") == (1.0, 0)
    stamped = [{**o, "time": t} for o, t in zip(outcomes, ("2026-01-01T10:00:00", "2026-01-02T10:00:00"), strict=False)]
    assert time_correction(stamped, device="cpu x2", since="2026-01-02T00:00:00") == (2.0, 1)  # runs of the timing in use
    fast = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0)
    slow = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0, time_factor=2.5,
                    time_source="x2.50 from 2 runs")
    for f, g in zip(fast.strategies, slow.strategies, strict=True):
        assert g.seconds == pytest.approx(2.5 * f.seconds, rel=1e-3) and g.time_source == "x2.50 from 2 runs"
    cached = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0, cached_share=0.75)
    probe = {f.strategy: f.seconds for f in fast.strategies}["linear-probe"]
    assert {f.strategy: f.seconds for f in cached.strategies}["linear-probe"] == pytest.approx(probe / 4, rel=1e-3)
    # each kind by its own runs: a probe that took 3x its few seconds leaves the fine-tunes' forecast alone
    kinds = [{"device": "cpu x2", "strategy": "linear-probe", "seconds": 3.0, "forecast_seconds": 1.0},
             {"device": "cpu x2", "strategy": "full-finetune", "seconds": 110.0, "forecast_seconds": 100.0}]
    assert time_correction(kinds, device="cpu x2", kind="probe") == (3.0, 1)
    assert time_correction(kinds, device="cpu x2", kind="finetune") == (1.1, 1)
    split = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0,
                     time_factor=1.1, probe_time_factor=3.0, probe_time_source="probes x3")
    for f, g in zip(fast.strategies, split.strategies, strict=True):
        probe_kind = f.strategy.endswith("-probe")
        assert g.seconds == pytest.approx((3.0 if probe_kind else 1.1) * f.seconds, rel=1e-3)
        assert (g.time_source == "probes x3") == probe_kind


def test_every_time_carries_the_runs_fixed_cost_measured_by_finished_runs():
    # a run's wall time beyond its fit: the median of this device's finished runs, else the reference figure
    outcomes = [{"device": "cpu x2", "seconds": 5.0, "fit_seconds": 3.0}, {"device": "cpu x2", "seconds": 9.0, "fit_seconds": 8.0},
                {"device": "cpu x2", "seconds": 4.0, "fit_seconds": 1.0}, {"device": "cpu x2", "seconds": 4.0},
                {"device": "cpu x2", "seconds": 1.0, "fit_seconds": 2.0}, {"device": "cpu x1", "seconds": 50.0, "fit_seconds": 1.0}]
    assert run_overhead(outcomes, device="cpu x2") == (2.0, 3)
    assert run_overhead([], device="cpu x2") == (DEFAULT_RUN_OVERHEAD_SECONDS, 0)
    base = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0, time_factor=2.0)
    more = forecast(**{**KW, "step_seconds": 0.5}, records=_records(), extract_images_per_second=50.0, time_factor=2.0,
                    overhead_seconds=3.0)
    for f, g in zip(base.strategies, more.strategies, strict=True):
        assert g.seconds == pytest.approx(f.seconds + 3.0, abs=0.11)  # added once, not scaled by the time factor


def test_a_step_timed_under_load_is_timed_again_and_a_broken_entry_is_ignored(tmp_path, monkeypatch):
    from advisor.backbones import create_backbone
    from advisor.decide import advise
    from advisor.decide.models import RunPlan

    bb = create_backbone("test/tiny-cnn", seed=0)
    plan = RunPlan(dataset="x", backbone="test/tiny-cnn", strategy="full-finetune", rule_ids=[], input_size=32)
    calls = []
    monkeypatch.setattr(advise, "finetune_step_seconds", lambda *a, **k: calls.append(1) or 0.25)
    monkeypatch.setattr(advise, "busy_elsewhere", lambda: 0.2)
    dev = __import__("torch").device("cpu")
    secs, source, _ = advise._step_seconds(bb, plan, dev, 0, tmp_path)
    assert secs == 0.25 and "timed now" in source and len(calls) == 1
    assert advise._step_seconds(bb, plan, dev, 0, tmp_path)[0] == 0.25 and len(calls) == 1  # remembered
    path = tmp_path / advise.STEP_TIMES
    data = json.loads(path.read_text())
    (key,) = data
    assert key.endswith("|" + advise.STEP_TIMING)  # an entry timed the old way (another key) is never read back
    for bad in ({"seconds": 22.7, "load": 2.5, "time": "2026-01-01T00:00:00"}, {"seconds": float("nan")}, {"seconds": -1},
                {"seconds": 1e300}, 22.7):
        path.write_text(json.dumps({key: bad}))
        n = len(calls)
        assert advise._step_seconds(bb, plan, dev, 0, tmp_path)[0] == 0.25 and len(calls) == n + 1
    assert math.isfinite(json.loads(path.read_text())[key]["seconds"])


def test_recommend_says_who_decided_caps_the_plan_it_shows_and_never_mentions_an_unasked_budget(tmp_path):
    from conftest import EXAMPLE

    from advisor.decide.advise import recommend_dataset

    rec = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0, epochs_cap=2, input_size=64)
    assert rec.decision is not None and rec.decision.sentence
    assert rec.strategy == rec.plan.strategy == rec.decision.chosen
    assert "budget" not in rec.plan.rule_ids and not any("budget" in w for w in rec.warnings)
    assert rec.plan.input_size == 64 and rec.forecast.input_size == 64
    # the recommendation's seconds split by stage: the profile's, then the forecast's own
    assert {"features", "step timing", "forecast"} <= set(rec.stage_seconds)
    assert list(rec.stage_seconds)[: len(rec.profile.stage_seconds)] == list(rec.profile.stage_seconds)
    assert sum(rec.stage_seconds.values()) <= rec.seconds + 0.05
    # a 2-epoch cap keeps less of the schedule than any recorded fine-tune: no gain is credited, so a probe runs
    assert rec.strategy in ("linear-probe", "layer-probe") and rec.plan.recipe is None
    # report.html says the same, and its map marks each reference with the strategy that measured best there
    from advisor.report.html import esc, recommendation_page

    page = recommendation_page(rec)
    assert f"Why {rec.strategy}:</b> {esc(rec.decision.sentence)}" in page and "best measured: " in page
    assert any("keeps 7% of the schedule" in n for n in rec.forecast.extrapolating) and "extrapolating: " in page
    # the table policy keeps the table's strategy and says so when the forecast disagrees
    table = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0, policy="table")
    assert table.strategy == table.decision.table
    # at 224 px the profile has just extracted every image of this small set: the probes' forecast charges none
    assert "100% of the images' features already cached at 224 px" in table.forecast.strategies[0].time_source
    assert table.decision.sentence.startswith(f"the table ({table.decision.table_rule}) and the forecast agree"
                                              if table.decision.agree else f"the table says {table.decision.table}")
    # a forced fine-tune under a cap: the plan shown carries the cap (the plan that runs)
    # and the batch the user asked for, its learning rates scaled (sqrt(16 / 32)) before the step is timed at it
    forced = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0, force_strategy="partial-finetune", epochs_cap=3,
                               batch_size=16)
    assert forced.plan.strategy == "partial-finetune" and forced.plan.recipe.epochs == 3 and forced.decision is None
    assert forced.plan.batch_size == 16 and forced.plan.recipe.lr_head == pytest.approx(1e-3 * 0.5 ** 0.5)
    # a budget, when given, is named
    budget = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0, budget_seconds=1e6)
    assert any("budget" in w for w in budget.warnings)
    # finished runs that took 10x their forecast since the step was timed: the step is timed again, and said so
    from advisor.core.machine import machine_name
    from advisor.decide.records import local_record_path

    later = "2999-01-01T00:00:00"
    local_record_path().write_text("".join(json.dumps({"dataset": "elsewhere", "strategy": "full-finetune", "achieved": 0.9,
                                                       "train_per_class_median": 50, "seconds": 1000.0, "forecast_seconds": 100.0,
                                                       "device": machine_name(), "time": later}) + "\n" for _ in range(3)))
    again = recommend_dataset(EXAMPLE, cache_dir=tmp_path, num_workers=0)
    # fine-tune runs 10x off re-time the steps; the probes' extraction timing and source are left alone
    for f in again.forecast.strategies:
        retimed = "re-timed: 3 finished fine-tune run(s) took x10.00" in (f.time_source or "")
        assert retimed == f.strategy.endswith("-finetune")


def test_a_fine_tune_is_separated_from_a_probe_by_its_gains_error_alone():
    from advisor.decide.rules.policy import StrategyView

    probe = StrategyView(strategy="linear-probe", accuracy=0.80, sd=0.04)
    # +3 points: inside the fine-tune's whole error (4), outside its gain's error (2): the probe's own error is shared
    finetune = StrategyView(strategy="partial-finetune", accuracy=0.83, sd=0.04, gain_sd=0.02)
    assert finetune.se_against(probe) == 0.02 and finetune.se_against(finetune) == 0.04
    assert choose("hybrid", table="linear-probe", column="similar", fc=[probe, finetune])[0] == "partial-finetune"
    assert choose("hybrid", table="linear-probe", column="similar",
                  fc=[probe, finetune.model_copy(update={"gain_sd": None})])[0] == "linear-probe"
    fc = forecast(**KW, records=_records(), input_size=128, schedule_share=0.3)
    assert all((f.gain_sd is not None) == (f.strategy.endswith("finetune")) for f in fc.strategies)


def test_the_per_setting_policy_asks_the_forecast_only_probe_or_finetune_below_20_images_per_class():
    from advisor.decide.rules.policy import PER_SETTING_BOUNDARY, StrategyView, resolve

    fc = [StrategyView(strategy="linear-probe", accuracy=0.80, sd=0.03, seconds=5.0),
          StrategyView(strategy="layer-probe", accuracy=0.79, sd=0.03, seconds=6.0),
          StrategyView(strategy="partial-finetune", accuracy=0.805, sd=0.03, seconds=200.0, gain_sd=0.03),
          StrategyView(strategy="full-finetune", accuracy=0.83, sd=0.03, seconds=300.0, gain_sd=0.03)]
    assert PER_SETTING_BOUNDARY == 20
    assert resolve("per-setting", 5) == "hybrid" and resolve("per-setting", 20) == "best-forecast"
    assert resolve("per-setting", None) == "best-forecast" and resolve("table", 5) == "table"
    # below 20: the column's probe unless its fine-tune is more than one standard error ahead (not here)
    few = choose("per-setting", table="full-finetune", column="similar", fc=fc, per_class=5)[0]
    # from 20 up: the best forecast, whatever the column
    many = choose("per-setting", table="linear-probe", column="similar", fc=fc, per_class=50)[0]
    assert few == "linear-probe" and many == "full-finetune"
    ahead = [v.model_copy(update={"accuracy": 0.95}) if v.strategy == "partial-finetune" else v for v in fc]
    assert choose("per-setting", table="linear-probe", column="similar", fc=ahead, per_class=5)[0] == "partial-finetune"
    d = decide("per-setting", table="full-finetune", table_rule="R4", column="similar", forecast=None, per_class=5)
    assert d.policy == "per-setting" and d.chosen == "full-finetune"  # no forecast: the table decides


def test_hybrid_runs_the_linear_probe_where_the_layer_probe_is_forecast_no_better():
    # The profile's tap CV put no earlier tap ahead of pre_logits: both probes forecast 0.80, the linear one cheaper.
    level = {"linear-probe": 0.80, "layer-probe": 0.80, "partial-finetune": 0.805, "full-finetune": 0.81}
    assert choose("hybrid", table="layer-probe", column="different", fc=views(_fc(level)))[0] == "linear-probe"
    d = decide("hybrid", table="layer-probe", table_rule="R2", column="different", forecast=_fc(level))
    assert d.chosen == "linear-probe" and not d.agree
    assert "level with the layer probe" in d.sentence and d.sentence.startswith("the table says layer-probe (R2)")
    # An earlier tap ahead in the CV keeps the layer probe; a similar column never involved it.
    ahead = {**level, "layer-probe": 0.83}
    assert choose("hybrid", table="layer-probe", column="different", fc=views(_fc(ahead)))[0] == "layer-probe"
    assert choose("hybrid", table="linear-probe", column="similar", fc=views(_fc(level)))[0] == "linear-probe"
