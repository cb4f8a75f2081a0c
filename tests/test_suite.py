"""benchmarks/suite.py on two tiny synthetic datasets (a tiny random backbone, a tiny budget)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from advisor.models import STRATEGIES

from conftest import write_class_images

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
