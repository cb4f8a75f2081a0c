"""benchmarks/records.py and benchmarks/policy.py: a cell's record, and the leave-one-dataset-out scoring."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def policy():
    return _load("policy")


def test_a_k_shot_cell_records_every_strategy_with_its_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVISOR_TEST_BACKBONES", "1")
    records = _load("records")
    for split, n in (("train", 8), ("val", 4)):
        write_class_images(tmp_path / "data" / "colours" / split, {"red": n, "blue": n, "green": n}, size=24)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        row = records.run_cell(dict(dataset="colours", k=3, input_size=32, epochs_cap=1, seed=1), work=tmp_path / "w",
                               cache=tmp_path / "cache", sample_size=8, data=tmp_path / "data", backbone="test/tiny-cnn")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert row["train_images"] == 9 and row["train_per_class_median"] == 3 and row["n_val"] == 12
    assert set(row["strategies"]) == {"linear-probe", "layer-probe", "partial-finetune", "full-finetune"}
    assert row["schedule_share"] == pytest.approx(1 / 30, abs=1e-3) and row["seed"] == 1 and row["k"] == 3
    for v in row["strategies"].values():
        assert 0 <= v["accuracy"] <= 1 and v["seconds"] > 0 and isinstance(v["tied_with_best"], bool)
    assert row["strategies"]["linear-probe"]["cv"] is not None  # the probes' training-split CV
    assert json.loads(json.dumps(row)) == row  # one JSON line
    # resumable: a recorded cell is not planned again
    out = tmp_path / "cells.jsonl"
    out.write_text(json.dumps(row) + "\n")
    assert records.cell_key(row) in records.done_keys(out)
    cells = records.plan_cells(["kshot128", "seeds128"], ["colours"], ["colours"], [3], 1, {"colours": 9})
    assert [(c["k"], c["seed"]) for c in cells] == [(3, 0), (3, 1), (None, 1), (3, 2), (None, 2)]
    few = records.plan_cells(["seeds224"], ["colours"], ["colours"], [3], 1, {"colours": 9})
    assert [(c["k"], c["seed"], c["input_size"]) for c in few] == [(2, 1, 224), (2, 2, 224), (5, 1, 224), (5, 2, 224)]
    default_size = records.plan_cells(["kshot224"], ["colours"], ["colours"], [3], 1, {"colours": 9})
    assert [(c["k"], c["seed"], c["input_size"]) for c in default_size] == [(k, 0, 224) for k in (10, 5, 2, 20, 50)]
    # a legacy cell of the same setting gives way to the fresh one; a legacy cell of another setting stays
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(json.dumps({**row, "legacy": True, **extra}) + "\n" for extra in ({}, {"seed": 7})))
    assert [(c["seed"], bool(c.get("legacy"))) for c in records.read_cells([out, legacy])] == [(1, False), (7, True)]


def _cell(policy, name, accs, seconds, *, tied, per_class=50, sim=0.8, probe_cv=0.8, k=None):
    from test_rules import make_profile

    profile = make_profile({f"c{i}": per_class for i in range(10)}, score=(sim, sim - 0.05, sim + 0.05))
    profile = profile.model_copy(update={"probe_cv": {"pre_logits": probe_cv, "stage5": probe_cv - 0.01}})
    best = max(accs, key=accs.get)
    strategies = {s: {"accuracy": a, "seconds": seconds[s], "winner": s == best, "tied_with_best": s == best or s in tied,
                      "cv": None} for s, a in accs.items()}
    c = {"dataset": name, "k": k, "seed": 0, "input_size": 128, "epochs_cap": 8, "schedule_share": 0.5, "n_val": 200,
         "train_images": 10 * per_class, "train_per_class_median": per_class, "similarity": sim, "strategies": strategies,
         "best": best, "profile": profile.model_dump(mode="json")}
    c["profile_model"] = profile
    return c


def test_scores_read_regret_ties_and_time_against_the_cheapest_tied_strategy(policy):
    accs = {"linear-probe": 0.80, "layer-probe": 0.81, "partial-finetune": 0.88, "full-finetune": 0.90}
    secs = {"linear-probe": 10, "layer-probe": 20, "partial-finetune": 100, "full-finetune": 200}
    c = _cell(policy, "a", accs, secs, tied=["partial-finetune"])
    lp, pf, ff = (policy.score(c, s) for s in ("linear-probe", "partial-finetune", "full-finetune"))
    assert lp["regret"] == pytest.approx(10.0) and not lp["tied"]
    assert pf["tied"] and pf["time_ratio"] == 1.0  # the cheapest strategy tied with the best
    assert ff["regret"] == 0 and ff["time_ratio"] == 2.0


def test_leave_one_dataset_out_scores_every_policy_and_baseline(policy):
    secs = {"linear-probe": 10, "layer-probe": 20, "partial-finetune": 100, "full-finetune": 200}
    cells = []
    for i, (pc, sim) in enumerate([(5, 0.8), (20, 0.3), (80, 0.7), (300, 0.2), (150, 0.6)]):
        gain = 0.02 * (i + 1)  # fine-tunes gain more on the larger sets
        accs = {"linear-probe": 0.8, "layer-probe": 0.79, "partial-finetune": 0.8 + gain, "full-finetune": 0.8 + gain / 2}
        cells.append(_cell(policy, f"d{i}", accs, secs, tied=[], per_class=pc, sim=sim))
    _, errors, rows = policy.evaluate(cells)
    assert len(rows) == 5 and {e["strategy"] for e in errors} == {"linear-probe", "layer-probe", "partial-finetune",
                                                                    "full-finetune"}
    for name in policy.POLICIES + policy.BASELINES:
        s = policy.summarise(rows, name)
        assert s["cells"] == 5 and 0 <= s["mean_regret"] <= s["max_regret"] and 0 <= s["tied_share"] <= 1
    always_lp = policy.summarise(rows, "always linear-probe")
    assert always_lp["mean_regret"] == pytest.approx(100 * sum(0.02 * (i + 1) for i in range(5)) / 5)
    assert policy.summarise(rows, "always layer-probe")["tied_share"] == 0


def test_the_readme_block_states_the_record_and_each_target_met_or_missed(policy, tmp_path):
    secs = {"linear-probe": 10, "layer-probe": 20, "partial-finetune": 100, "full-finetune": 200}
    cells = []
    for i, (pc, sim) in enumerate([(5, 0.8), (20, 0.3), (80, 0.7), (300, 0.2), (150, 0.6)]):
        accs = {"linear-probe": 0.8, "layer-probe": 0.79, "partial-finetune": 0.82, "full-finetune": 0.81}
        cells.append(_cell(policy, f"d{i}", accs, secs, tied=[], per_class=pc, sim=sim, k=2 if i < 2 else None))
    cells[0]["seed"] = 1
    assert policy.describe_cells(cells) == ("5 cells from 5 datasets; 128 px: 2 seeded k-shot subsamples (k = 2: 2 cells, "
                                            "2 sets, seeds 0-1) and 3 full sets in 3 cells (seed 0)")
    _, _, rows = policy.evaluate(cells)
    summary = {"128 px, all cells": {n: policy.summarise(rows, n) for n in policy.POLICIES + policy.BASELINES}}
    (check,) = policy.target_check(summary, "always full-finetune", [128])
    # every fixed strategy loses 1 point on every cell: each target is read off the numbers
    met, missed = check.split("; missed ")
    assert "mean regret 1.00" in met and "max regret 1.00" in met and "tied 0%" in missed
    assert "better than every fixed baseline" in missed  # it ties itself: no margin over the baselines
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- policy-readme -->\nold text\n<!-- /policy-readme -->\nafter\n")
    summary["all cells, every size"] = summary["128 px, all cells"]
    policy.update_readme(readme, cells, summary, {}, {}, {}, "best-forecast", policy.tradeoff(rows), "python x.py")
    text = readme.read_text()
    assert text.startswith("intro\n<!-- policy-readme -->") and text.endswith("<!-- /policy-readme -->\nafter\n")
    assert "old text" not in text and "**best-forecast**" in text and "5 cells from 5 datasets" in text
    assert all(f"| {n} | " in text for n in policy.POLICIES + policy.BASELINES)


def test_the_shipped_policy_is_the_one_the_records_rank_first(policy):
    """DEFAULT_POLICY must be what benchmarks/policy.py derives from the records shipped in docs/records/."""
    from advisor.decide.rules.policy import DEFAULT_POLICY

    paths = sorted((REPO / "docs" / "records").glob("*.jsonl"))
    cells = policy.load_cells(paths)
    assert len({c["dataset"] for c in cells}) >= 4
    _, _, rows = policy.evaluate(cells)
    assert policy.winner(rows) == DEFAULT_POLICY


def test_time_summary_reports_the_runs_forecast_by_the_current_timing_apart(policy):
    def cell(time, achieved):
        return {"time": time, "strategies": {"full-finetune": {"seconds": achieved}},
                "forecast": {"full-finetune": {"seconds": 100.0}}}

    old, new = "2026-01-01T00:00:00", policy.CURRENT_TIMING_SINCE
    tsum = policy.time_summary([cell(old, 50.0), cell(old, 55.0), cell(new, 95.0), cell(new, 139.0)])
    assert tsum["runs"] == 4 and tsum["within_30_percent"] == 0.25
    finetunes = {"runs": 2, "within_30_percent": 0.5, "median_achieved_over_forecast": 1.17}
    assert tsum["current_timing"] == {**finetunes, "by_kind": {"finetune": finetunes}}
    assert "50% of 2 within +-30 %" in policy.current_timing_text(tsum)
    probe = {"time": new, "strategies": {"linear-probe": {"seconds": 3.0}}, "forecast": {"linear-probe": {"seconds": 1.0}}}
    both = policy.time_summary([cell(new, 95.0), probe])["current_timing"]
    assert both["by_kind"] == {"finetune": {"runs": 1, "within_30_percent": 1.0, "median_achieved_over_forecast": 0.95},
                               "probe": {"runs": 1, "within_30_percent": 0.0, "median_achieved_over_forecast": 3.0}}
    text = policy.current_timing_text({"current_timing": both})
    assert "fine-tunes 100% of 1 (median 0.95); probes 0% of 1 (median 3.00)" in text
    assert "current_timing" not in policy.time_summary([cell(old, 50.0)]) and policy.current_timing_text({}) == ""


def test_a_cells_probe_gap_inputs_come_from_its_profile():
    records = _load("records")
    sizes = {"count": 9, "min_width": 200, "min_height": 150, "median_width": 341.0, "median_height": 256.0,
             "max_width": 500, "max_height": 400, "smaller_than": {"224": 1}}
    cell = {"train_images": 500, "profile": {"sizes": sizes, "probe_cv_images": 300, "input_size": 224}}
    assert records.probe_gap_inputs(cell) == {"train_images": 500, "cv_images": 300, "image_side": 256.0,
                                              "profile_size": 224}
    older = {"train_images": 40, "profile": {"input_size": 224}}  # before the CV's size (and sizes) were kept
    assert records.probe_gap_inputs(older) == {"train_images": 40, "cv_images": 40, "image_side": None,
                                               "profile_size": 224}


def test_recorded_cells_take_todays_profile_cv_for_their_dataset_k_and_seed_and_no_holdout(tmp_path):
    records = _load("records")
    cells = [{"dataset": "a", "k": 2, "seed": 1, "profile": {"probe_cv": {"pre_logits": 0.3}}},
             {"dataset": "a", "k": 2, "seed": 0, "profile": {}},
             {"dataset": "b", "k": None, "seed": 0, "profile": {"probe_cv": {"pre_logits": 0.5}, "recorded_probe_cv": {}}}]
    found = tmp_path / "profile_holdout.jsonl"
    found.write_text(json.dumps({"dataset": "a", "k": 2, "seed": 1, "probe_holdout": {"pre_logits": 0.7},
                                 "probe_holdout_images": 280, "probe_cv": {"pre_logits": 0.4}}) + "\n" + "not json\n"
                     + json.dumps({"dataset": "b", "k": None, "seed": 0, "probe_cv": {"pre_logits": 0.2}}) + "\n")
    records.add_profile_cv(cells, [found, tmp_path / "missing.jsonl"])
    assert cells[0]["profile"] == {"probe_cv": {"pre_logits": 0.4}, "recorded_probe_cv": {"pre_logits": 0.3}}
    assert "probe_holdout" not in records.probe_gap_inputs({"train_images": 20, **cells[0]})  # the study is not read
    assert cells[1]["profile"] == {}  # another seed: another draw, nothing measured for it
    assert cells[2]["profile"]["probe_cv"] == {"pre_logits": 0.5}  # overlaid once already: kept


def test_the_regret_floor_is_what_running_each_settings_best_on_average_loses_to_its_seeds(policy):
    secs = {"linear-probe": 10, "layer-probe": 20, "partial-finetune": 100, "full-finetune": 200}
    # one setting, three seeds: the full fine-tune is best on average (0.85) but a probe wins the third draw by 4 points
    draws = [(0.80, 0.88), (0.80, 0.86), (0.85, 0.81)]
    cells = []
    for seed, (lp, ff) in enumerate(draws):
        c = _cell(policy, "a", {"linear-probe": lp, "layer-probe": 0.5, "partial-finetune": 0.5, "full-finetune": ff},
                  secs, tied=[], k=5)
        c["seed"] = seed
        cells.append(c)
    single = _cell(policy, "b", {"linear-probe": 0.9, "layer-probe": 0.5, "partial-finetune": 0.5, "full-finetune": 0.5},
                   secs, tied=[])  # one seed only: no floor from it
    rows = [{"dataset": c["dataset"], "k": c["k"], "seed": c["seed"], "input_size": 128,
             "scores": {"always linear-probe": policy.score(c, "linear-probe")}} for c in cells + [single]]
    floor = policy.regret_floor(cells + [single], rows, "always linear-probe")
    assert list(floor) == [128]
    f = floor[128]
    assert f["cells"] == 3 and f["floor_mean"] == pytest.approx(4 / 3, abs=0.01) and f["floor_max"] == pytest.approx(4.0)
    assert f["policy_mean"] == pytest.approx((8 + 6 + 0) / 3, abs=0.01) and f["policy_max"] == pytest.approx(8.0)
    text = policy.regret_floor_text(floor, "always linear-probe")
    assert "128 px, 3 cells: mean 1.33, max 4.00 (always linear-probe on the same cells: 4.67, 8.00)" in text
    assert policy.regret_floor_text({}, "x") == ""


def test_the_regret_difference_is_bootstrapped_over_datasets_and_says_whether_it_is_chance(policy):
    def row(dataset, a, b):
        return {"dataset": dataset, "scores": {"a": {"regret": a}, "b": {"regret": b}}}

    # a is behind b by 2 points on every cell of every dataset: behind beyond chance, whatever the draw
    rows = [row(d, 3.0, 1.0) for d in "xyz" for _ in range(2)]
    diff = policy.regret_difference(rows, "a", "b", resamples=200)
    assert diff["difference"] == diff["low"] == diff["high"] == 2.0 and diff["datasets"] == 3
    assert "behind beyond chance" in policy.regret_difference_text(diff)
    # ahead on one dataset, behind on another: the interval spans 0
    mixed = [row("x", 0.0, 4.0), row("y", 4.0, 0.0), row("z", 1.0, 1.0)]
    diff = policy.regret_difference(mixed, "a", "b", resamples=500)
    assert diff["difference"] == 0.0 and diff["low"] < 0 < diff["high"]
    assert "not distinguishable" in policy.regret_difference_text(diff)
    assert policy.regret_difference(mixed, "a", "b", resamples=500) == diff  # seeded: the same figures every run
    assert policy.regret_difference_text({}) == ""


def test_remeasured_probes_replace_the_recorded_ones_and_the_ties_are_worked_out_again(tmp_path):
    records = _load("records")

    def strat(acc, best, ci, tied):
        return {"accuracy": acc, "cv": 0.5, "seconds": 1.0, "winner": best, "tied_with_best": tied, "behind_best_ci": ci}

    def cell(seed):
        return {"dataset": "a", "k": 2, "input_size": 128, "epochs_cap": 8, "seed": seed, "n_val": 100, "best": "full-finetune",
                "strategies": {"linear-probe": strat(0.60, False, [10.0, 30.0], False),
                               "layer-probe": strat(0.62, False, [8.0, 28.0], False),
                               "partial-finetune": strat(0.78, False, [-1.0, 5.0], True),
                               "full-finetune": strat(0.80, True, [0.0, 0.0], False)}}

    hits = lambda n: "1" * n + "0" * (100 - n)  # noqa: E731
    lines = [{"key": ["a", 2, 128, 8, 0], "linear-probe": {"accuracy": 0.95, "cv": 0.9, "correct": hits(95)},
              "layer-probe": {"accuracy": 0.70, "cv": 0.6, "correct": hits(70)}},
             {"key": ["a", 2, 128, 8, 1], "linear-probe": {"accuracy": 0.70, "cv": 0.7, "correct": hits(70)},
              "layer-probe": {"accuracy": 0.71, "cv": 0.7, "correct": hits(71)}}]
    found = tmp_path / "probes_remeasured.jsonl"
    found.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cells = [cell(0), cell(1), cell(2)]
    records.add_remeasured_probes(cells, [found])
    now, same, untouched = cells
    assert now["best"] == "linear-probe" and now["recorded_best"] == "full-finetune"
    assert now["strategies"]["linear-probe"]["winner"] and not now["strategies"]["full-finetune"]["winner"]
    assert now["recorded_probes"]["linear-probe"] == {"accuracy": 0.60, "cv": 0.5}
    assert not now["strategies"]["layer-probe"]["tied_with_best"]  # 25 points behind, paired on the same images
    assert not now["strategies"]["partial-finetune"]["tied_with_best"]  # 17 points behind on 100 images
    # the fine-tune stays best: the partial fine-tune's recorded interval against it still holds
    assert same["best"] == "full-finetune" and same["strategies"]["partial-finetune"]["behind_best_ci"] == [-1.0, 5.0]
    assert same["strategies"]["partial-finetune"]["tied_with_best"] and same["strategies"]["linear-probe"]["accuracy"] == 0.70
    assert untouched == cell(2)  # nothing re-measured for seed 2
    assert 0 < records.paired_ratio([cell(0)]) < 1.5


def test_the_cv_at_size_study_overlays_cells_below_224_px_and_drops_the_unmeasured(tmp_path):
    records = _load("records")
    line = {"dataset": "a", "k": 2, "seed": 1, "input_size": 128, "probe_cv": {"pre_logits": 0.7}}
    (tmp_path / "at.jsonl").write_text(json.dumps(line) + "\nnot json\n")
    cells = [{"dataset": "a", "k": 2, "seed": 1, "input_size": 128, "profile": {"probe_cv": {"pre_logits": 0.5}, "input_size": 224}},
             {"dataset": "a", "k": 2, "seed": 1, "input_size": 224, "profile": {"probe_cv": {"pre_logits": 0.6}, "input_size": 224}},
             {"dataset": "b", "k": None, "seed": 0, "input_size": 64, "profile": {"probe_cv": {"pre_logits": 0.9}, "input_size": 224}}]
    assert records.add_profile_cv_at_size(cells, tmp_path / "at.jsonl") == 1
    assert [(c["input_size"], c["profile"]["probe_cv"]["pre_logits"], c["profile"]["input_size"]) for c in cells] == [
        (128, 0.7, 128), (224, 0.6, 224)]
