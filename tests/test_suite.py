"""benchmarks/suite.py on two tiny synthetic datasets (a tiny random backbone, a tiny budget)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from conftest import write_class_images

from advisor.decide.models import STRATEGIES

REPO = Path(__file__).resolve().parents[1]


def _suite_module():
    spec = importlib.util.spec_from_file_location("suite", REPO / "benchmarks" / "suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_suite_tables_two_tiny_datasets(tmp_path):
    suite = _suite_module()
    a = write_class_images(tmp_path / "alpha", {"red": 8, "blue": 8}, size=36)
    b = write_class_images(tmp_path / "beta", {"x": 8, "y": 8, "z": 8}, size=36, seed=1)
    rows = suite.run_suite([str(a), str(b)], input_size=32, epochs=1, backbone="test/tiny-cnn", sample_size=20,
                           runs_dir=str(tmp_path / "runs"), num_workers=0)
    assert [r["dataset"] for r in rows] == ["alpha", "beta"]
    for r in rows:
        assert set(r["accuracy"]) == set(STRATEGIES)
        assert r["best"] == max(r["accuracy"], key=lambda k: r["accuracy"][k]) or \
            r["accuracy"][r["best"]] == max(r["accuracy"].values())
        assert r["regret_points"] == round(100 * (r["accuracy"][r["best"]] - r["accuracy"][r["recommended"]]), 3)
        assert 0 < r["recommend_cost_fraction"]
    md = suite.markdown(rows)
    assert md.count("\n| alpha |") == 1 and "| beta |" in md and "mean regret" in md


def test_suite_rows_carry_the_profile_the_calibration_reruns(tmp_path):
    from advisor.measure.models import DatasetProfile

    suite = _suite_module()
    a = write_class_images(tmp_path / "alpha", {"red": 8, "blue": 8}, size=36)
    seen = []
    rows = suite.run_suite([str(a)], input_size=32, epochs=1, backbone="test/tiny-cnn", sample_size=20,
                           runs_dir=str(tmp_path / "runs"), num_workers=0, strategies=["linear-probe"],
                           on_row=lambda r: seen.append(len(r)))
    assert seen == [1]  # written after every dataset
    profile = DatasetProfile.model_validate(rows[0]["profile"])
    assert profile.train_images == rows[0]["train_images"]
    assert "linear-probe" in rows[0]["accuracy"] and rows[0]["recommended"] in rows[0]["accuracy"]


def test_sweeps_subsample_caps_train_and_keeps_val(tmp_path):
    spec = importlib.util.spec_from_file_location("sweeps", REPO / "benchmarks" / "sweeps.py")
    sweeps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweeps)
    from advisor.data.scan import scan_dataset

    src = write_class_images(tmp_path / "src", {"red": 20, "blue": 12}, size=36)
    full = scan_dataset(src)
    sub = scan_dataset(sweeps.subsample(str(src), 5, tmp_path / "sub"))
    counts = {c: sum(1 for s in sub.split("train") if sub.classes[s.label] == c) for c in sub.classes}
    assert counts == {"blue": 5, "red": 5}
    # the validation split is the source's, file for file
    assert sorted(Path(s.path).name for s in sub.split("val")) == sorted(Path(s.path).name for s in full.split("val"))
    again = scan_dataset(sweeps.subsample(str(src), 5, tmp_path / "sub2"))
    assert sorted(Path(s.path).name for s in again.split("train")) == sorted(Path(s.path).name for s in sub.split("train"))


def test_sweeps_taps_and_depths_on_a_tiny_dataset(tmp_path):
    spec = importlib.util.spec_from_file_location("sweeps", REPO / "benchmarks" / "sweeps.py")
    sweeps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweeps)
    from advisor.decide.advise import recommend_dataset

    data = write_class_images(tmp_path / "data", {"red": 10, "blue": 10}, size=36)
    rec = recommend_dataset(data, backbone="test/tiny-cnn", sample_size=20, cache_dir=tmp_path / "cache", num_workers=0)
    kw = {"cache_dir": tmp_path / "cache", "num_workers": 0}
    taps = sweeps.tap_sweep(rec, str(data), tmp_path / "runs", input_size=32, backbone="test/tiny-cnn", **kw)
    assert [r["tap"] for r in taps] == ["stage1", "stage2", "stage3", "pre_logits"]
    assert all(r["selected"]["taps"] == [r["tap"]] and 0 <= r["val_accuracy"] <= 1 for r in taps)
    depths = sweeps.depth_sweep(rec, str(data), tmp_path / "runs", input_size=32, epochs=1, backbone="test/tiny-cnn", **kw)
    assert [r["frozen_stages"] for r in depths] == [2, 1, 0, None]  # every partial depth, then the full fine-tune
    assert [r["selected"]["frozen_stages"] for r in depths] == [2, 1, 0, 0]
    assert depths[0]["trainable_params"] < depths[1]["trainable_params"] < depths[2]["trainable_params"]
