"""`advisor compare`: every strategy under one budget, the winner and the advice's regret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE
from test_cli import run_main

from advisor.decide.models import STRATEGIES
from strategies.results import Comparison


def test_compare_on_the_shipped_example_with_a_tiny_budget(tmp_path, capsys):
    args = ["compare", str(EXAMPLE), "--input-size", "64", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    code, out, err = run_main(args + ["--json"], capsys)
    assert code == 0, err
    printed = json.loads(out)  # --json leaves the (long) recommendation out; compare.json has it
    assert "recommendation" not in printed
    res = Comparison.model_validate_json(Path(printed["saved_to"]).read_text())
    assert [r.strategy for r in res.rows] == list(STRATEGIES)
    assert sum(r.recommended for r in res.rows) == 1 and sum(r.winner for r in res.rows) == 1
    rec = next(r for r in res.rows if r.recommended)
    win = next(r for r in res.rows if r.winner)
    assert res.recommended == rec.strategy == "linear-probe" and res.winner == win.strategy
    assert win.val_accuracy == max(r.val_accuracy for r in res.rows)
    assert res.regret_points == round(100 * (win.val_accuracy - rec.val_accuracy), 3) and res.regret_points >= 0
    # paired statistics on the same 20 validation images: the regret's interval holds the regret
    assert res.regret_ci[0] <= res.regret_points <= res.regret_ci[1] and res.verdict
    for r in res.rows:
        if not r.winner:
            assert r.behind_best == round(100 * (win.val_accuracy - r.val_accuracy), 3)
            assert r.tied_with_best == (r.behind_best_ci[0] <= 0)
    assert all(r.input_size == 64 for r in res.rows)
    ft = [r for r in res.rows if r.strategy.endswith("finetune")]
    assert all(r.trainable_params > 100_000 for r in ft)
    assert all(r.trainable_params < 20_000 for r in res.rows if r.strategy.endswith("probe"))
    for r in res.rows:  # every strategy left a run directory with a loadable model
        assert (Path(r.run_dir) / "model.safetensors").is_file() and (Path(r.run_dir) / "model.json").is_file()
    saved = json.loads(Path(res.saved_to).read_text())
    assert saved["winner"] == res.winner and saved["regret_points"] == res.regret_points
    assert 0 < res.recommend_cost_fraction
    assert res.recommendation.epochs_cap == 1  # the advice knew the epoch cap it would run under

    # the rich table, served from the same cache
    code, out, err = run_main(args + ["--strategies", "linear-probe,layer-probe"], capsys)
    assert code == 0, err
    assert "Regret" in out and "best" in out and "recommended" in out


def test_compare_rejects_unknown_strategies(capsys):
    code, _, err = run_main(["compare", str(EXAMPLE), "--strategies", "linear-probe,magic"], capsys)
    assert code == 2 and "magic" in err


def test_paired_bootstrap_separates_what_separate_intervals_cannot():
    import torch

    from advisor.core.stats import paired_bootstrap

    # Two methods right on the same 90 of 100 images, and the first also on 8 of the other 10:
    # their Wilson intervals overlap, but every resample of the pairs puts the first ahead.
    a = torch.tensor([1.0] * 98 + [0.0] * 2)
    b = torch.tensor([1.0] * 90 + [0.0] * 10)
    diff, lo, hi = paired_bootstrap(a, b, seed=0)
    assert diff == pytest.approx(0.08) and 0 < lo <= diff <= hi
    # Disagreeing on two images each way: a tie the interval must show.
    c = torch.tensor([1.0, 1.0, 0.0, 0.0] + [1.0] * 16)
    d = torch.tensor([0.0, 0.0, 1.0, 1.0] + [1.0] * 16)
    diff, lo, hi = paired_bootstrap(c, d, seed=0)
    assert diff == 0 and lo < 0 < hi
