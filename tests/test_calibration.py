"""benchmarks/calibrate.py: its three rules on small made-up outcomes, and the shipped defaults."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from advisor.decide.rules import Thresholds

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cal():
    spec = importlib.util.spec_from_file_location("calibrate", REPO / "benchmarks" / "calibrate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _taps(*accs):
    names = ["stage1", "stage2", "stage3", "stage4", "stage5", "pre_logits"]
    return {"taps": [{"tap": n, "val_accuracy": a} for n, a in zip(names, accs, strict=True)]}


def test_probe_stages_cover_every_tap_within_the_margin(cal):
    # stage3 is within 2 points of the best on the second dataset: the sweep must reach it.
    sweeps = {"a": _taps(0.3, 0.5, 0.6, 0.7, 0.9, 0.91), "b": _taps(0.3, 0.5, 0.795, 0.7, 0.81, 0.8)}
    assert cal.calibrate_probe_stages(sweeps)[0] == 3
    assert cal.calibrate_probe_stages({"a": sweeps["a"]})[0] == 1  # only stage5 is close
    assert cal.calibrate_probe_stages({"a": sweeps["a"]}, margin=0.35)[0] == 3


def test_frozen_fraction_is_the_best_mean_depth_ties_to_more_frozen(cal):
    def depths(*accs):
        return {"depths": [{"frozen_stages": f, "stages": 4, "val_accuracy": a} for f, a in enumerate(accs)]
                + [{"frozen_stages": None, "stages": 4, "val_accuracy": 0.0}]}

    fraction, means = cal.calibrate_frozen_fraction({"a": depths(0.8, 0.9, 0.7, 0.6), "b": depths(0.8, 0.7, 0.9, 0.6)})
    assert means[1] == means[2] == pytest.approx(0.8) and fraction == 0.5  # tie 1 vs 2 frozen -> 2 of 4
    assert cal.calibrate_frozen_fraction({})[0] == cal.PROVISIONAL.frozen_fraction


def test_threshold_fewest_misplaced_then_nearest_provisional(cal):
    points = [(10, False), (20, False), (40, True), (80, True)]
    assert cal._threshold(points, [15, 30, 60], provisional=100) == (30, 0)
    # a cut that misplaces nothing is not available: the one nearest the provisional value wins the tie
    noisy = [(10, True), (20, False), (40, True)]
    best, errors = cal._threshold(noisy, [5, 15, 30, 50], provisional=12)
    assert errors == 1 and best == 5  # 5 and 30 misplace one point each; 5 is nearer 12 (log ratio)


def test_shipped_defaults_are_the_calibrated_ones(cal):
    """The rules' defaults must be what the calibration derives from the measurements shipped in docs/."""
    suite = json.loads((REPO / "docs" / "suite_gpu_before.json").read_text())
    sweeps = json.loads((REPO / "docs" / "sweeps_gpu.json").read_text())
    budget = json.loads((REPO / "docs" / "suite_cpu64_cap8.json").read_text())
    derived = cal.calibrate(suite, sweeps, budget_suite=budget)["thresholds"]
    shipped = Thresholds()
    assert derived == {k: getattr(shipped, k) for k in derived}


def test_calibration_report_matches_the_docs(cal):
    suite = json.loads((REPO / "docs" / "suite_gpu_before.json").read_text())
    sweeps = json.loads((REPO / "docs" / "sweeps_gpu.json").read_text())
    budget = json.loads((REPO / "docs" / "suite_cpu64_cap8.json").read_text())
    md = cal.markdown(cal.calibrate(suite, sweeps, budget_suite=budget))
    assert md == (REPO / "docs" / "calibration.md").read_text()
    assert md.split("\n\n")[1] in (REPO / "docs" / "decision-rules.md").read_text()  # the before/after table


def _capped_point(cal, name, *, train_images, cap, finetune, probe):
    from advisor.measure.models import DatasetProfile
    profile = DatasetProfile.model_validate(json.loads((REPO / "docs" / "suite_gpu_before.json").read_text())[0]["profile"])
    profile = profile.model_copy(update={"train_images": train_images})
    return {"dataset": name, "group": name, "profile": profile, "epochs_cap": cap,
            "accuracy": {"linear-probe": probe, "layer-probe": probe, "partial-finetune": finetune, "full-finetune": finetune}}


def test_budget_cut_separates_lost_from_won_and_never_goes_below_the_measured_shares(cal):
    epochs = cal.finetune_schedule(2000)[1]
    lost = _capped_point(cal, "a", train_images=2000, cap=round(0.1 * epochs), finetune=0.80, probe=0.85)
    won = _capped_point(cal, "b", train_images=2000, cap=round(0.3 * epochs), finetune=0.90, probe=0.85)
    t, ev = cal.calibrate_budget([lost, won], cal.PROVISIONAL)
    share_lost, share_won = cal.schedule_share(lost), cal.schedule_share(won)
    assert ev["misplaced"] == 0 and share_lost < t.min_schedule_fraction <= share_won
    # every capped fine-tune won: the cut is the smallest share measured (rounded down), not below it
    t, ev = cal.calibrate_budget([won], cal.PROVISIONAL)
    assert t.min_schedule_fraction == pytest.approx(int(share_won * 100) / 100) and ev["lost"] == []
    # an uncapped point is no evidence about budgets
    full = _capped_point(cal, "c", train_images=2000, cap=None, finetune=0.9, probe=0.8)
    assert cal.calibrate_budget([full], cal.PROVISIONAL)[0] == cal.PROVISIONAL
