"""Running plans: probes end to end, artifacts that reload without pickle, resume, predict, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLE, write_class_images

from advisor.backbones import create_backbone
from advisor.backbones.classifier import ModelCard, load_classifier, save_classifier
from advisor.core.errors import AdvisorError
from advisor.data.imagefile import load_image
from advisor.data.scan import scan_dataset
from advisor.decide.models import RunPlan
from advisor.execute.predict import predict
from advisor.execute.runner import apply_overrides, resume_run, run_plan
from strategies import get_strategy, strategy_names
from strategies.base import RunContext, RunData


@pytest.fixture
def colours(tmp_path) -> Path:
    return write_class_images(tmp_path / "colours", {"red": 10, "green": 10, "blue": 10}, size=36)


def _plan(dataset, strategy, **kw) -> RunPlan:
    return RunPlan(dataset=str(dataset), backbone="test/tiny-cnn", strategy=strategy, rule_ids=["test"], input_size=32, **kw)


def _fit(strategy_name, dataset, tmp_path, **plan_kw):
    strategy = get_strategy(strategy_name)
    plan = _plan(dataset, strategy_name, **plan_kw)
    data = RunData.from_scan(scan_dataset(dataset))
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    ctx = RunContext(run_dir=tmp_path / "run", device=torch.device("cpu"), num_workers=0)
    return strategy.fit(data, bb, strategy.config_from_plan(plan), ctx), data


def test_every_strategy_name_a_rule_can_give_is_registered():
    from advisor.decide.models import STRATEGIES

    assert set(strategy_names()) == set(STRATEGIES)


def test_linear_probe_trains_only_the_head_and_beats_chance(colours, tmp_path):
    (result, model), data = _fit("linear-probe", colours, tmp_path)
    assert result.metrics.val_accuracy > 0.8  # 3 separable colour classes; chance is 1/3
    assert result.trainable_params == model.head.weight.numel() + model.head.bias.numel()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert result.selected["taps"] == ["pre_logits"] and result.selected["l2"] > 0
    assert sum(map(sum, result.metrics.confusion)) == len(data.val)


def test_layer_probe_sweeps_the_calibrated_taps_and_reports_the_table(colours, tmp_path):
    (result, model), _ = _fit("layer-probe", colours, tmp_path)
    swept = [tuple(r["taps"]) for r in result.sweep]
    for tap in ("stage2", "stage3", "pre_logits"):  # probe_stages = 2 of the tiny CNN's 3 stages
        assert (tap,) in swept
    assert ("stage1",) not in swept
    best = max(result.sweep, key=lambda r: r["cv_accuracy"])
    assert result.selected["cv_accuracy"] == pytest.approx(best["cv_accuracy"])
    assert model.taps == result.selected["taps"]
    assert all(r["dim"] > 0 for r in result.sweep)


def test_saved_probe_reloads_and_predicts_exactly_as_in_memory(colours, tmp_path):
    (result, model), data = _fit("layer-probe", colours, tmp_path)
    card = ModelCard(strategy="layer-probe", backbone="test/tiny-cnn", weights_digest=model.backbone.weights_digest,
                     backbone_in_file=True, taps=model.taps, feature_dim=model.feature_dim, classes=data.classes,
                     transform=model.backbone.transform_config)
    save_classifier(model, tmp_path / "saved", card)
    loaded, card2 = load_classifier(tmp_path / "saved")
    tf = model.backbone.transform_config.eval_transform()
    x = torch.stack([tf(load_image(s.path)) for s in data.val])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert card2.classes == data.classes
    # the files are safetensors + JSON: nothing to unpickle
    assert (tmp_path / "saved" / "model.safetensors").read_bytes()[:8] != b"\x80\x04\x95"
    json.loads((tmp_path / "saved" / "model.json").read_text())


def test_run_plan_writes_every_artifact_and_predict_uses_them(colours, tmp_path):
    outcome = run_plan(_plan(colours, "linear-probe"), runs_dir=tmp_path / "runs", num_workers=0)
    rd = Path(outcome.run_dir)
    assert rd.parent == tmp_path / "runs" and rd.name.startswith("colours-linear-probe-")
    for name in ("plan.json", "run.json", "metrics.json", "result.json", "model.safetensors", "model.json", "report.md", "events.jsonl"):
        assert (rd / name).is_file(), name
    assert not list(rd.glob(".*.tmp"))  # atomic writes leave no temporaries
    metrics = json.loads((rd / "metrics.json").read_text())
    assert {"val_accuracy", "per_class", "confusion", "curves"} <= set(metrics)
    assert json.loads((rd / "run.json").read_text())["status"] == "finished"
    events = [json.loads(line)["event"] for line in (rd / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and events[-1] == "finished"
    report = (rd / "report.md").read_text()
    assert "linear-probe" in report and "Confusion matrix" in report and "advisor predict" in report

    scan = scan_dataset(colours)
    val = scan.split("val")
    rep = predict(rd, [s.path for s in val], top_k=2)
    assert len(rep.predictions) == len(val) and all(len(p.top) == 2 for p in rep.predictions)
    correct = sum(p.top[0].label == scan.classes[s.label] for p, s in zip(rep.predictions, val))
    assert correct / len(val) == pytest.approx(outcome.result.metrics.val_accuracy)
    probs = [c.probability for c in rep.predictions[0].top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_skips_bad_inputs_and_counts_ignored_files(colours, tmp_path, capsys):
    rd = Path(run_plan(_plan(colours, "linear-probe"), runs_dir=tmp_path / "runs", num_workers=0).run_dir)
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "good.png").write_bytes(next((colours / "red").iterdir()).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "readme.txt").write_text("not an image")
    rep = predict(rd, [folder, tmp_path / "missing.png"])
    assert [Path(p.path).name for p in rep.predictions] == ["good.png"]
    assert rep.predictions[0].top[0].label == "red"
    assert sorted(Path(s.path).name for s in rep.skipped) == ["broken.jpg", "missing.png"]
    assert rep.ignored == 1
    # --csv: a row per prediction (rank by rank), then a row per skipped file with its reason
    import csv

    from test_cli import run_main

    out = tmp_path / "predictions.csv"
    code, _, err = run_main(["predict", str(rd), str(folder), str(tmp_path / "missing.png"), "-k", "2", "--csv", str(out)], capsys)
    assert code == 0 and f"predictions written to {out}" in err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label1", "probability1", "label2", "probability2", "skipped"]
    assert rows[0]["label1"] == "red" and float(rows[0]["probability1"]) >= float(rows[0]["probability2"])
    assert sorted((Path(r["path"]).name, bool(r["skipped"])) for r in rows) == [
        ("broken.jpg", True), ("good.png", False), ("missing.png", True)]


def test_a_finished_run_cannot_be_resumed_and_a_non_run_is_refused(colours, tmp_path):
    rd = run_plan(_plan(colours, "linear-probe"), runs_dir=tmp_path / "runs", num_workers=0).run_dir
    with pytest.raises(AdvisorError, match="already finished"):
        resume_run(rd)
    with pytest.raises(AdvisorError, match="not a run directory"):
        resume_run(tmp_path)
    with pytest.raises(AdvisorError, match="no saved model"):
        predict(tmp_path, [colours])


def test_an_interrupted_probe_run_resumes_to_the_same_result(colours, tmp_path, monkeypatch):
    import strategies.linear as lin

    real = lin.fit_probe

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(lin, "fit_probe", interrupted)
    from advisor.execute.runner import RunInterrupted

    with pytest.raises(RunInterrupted) as stop:
        run_plan(_plan(colours, "linear-probe"), runs_dir=tmp_path / "runs", num_workers=0)
    rd = stop.value.run_dir
    assert json.loads((rd / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(lin, "fit_probe", real)
    resumed = resume_run(rd)
    fresh = run_plan(_plan(colours, "linear-probe"), runs_dir=tmp_path / "runs2", num_workers=0)
    assert resumed.result.metrics == fresh.result.metrics


def test_overrides_record_a_forced_strategy():
    plan = RunPlan(dataset="d", backbone="b", strategy="linear-probe", rule_ids=["R1"], taps=["pre_logits"])
    forced = apply_overrides(plan, strategy="layer-probe", epochs=3, input_size=96)
    assert forced.strategy == "layer-probe" and forced.recipe is None and forced.input_size == 96  # a probe has no epochs
    assert forced.taps == []  # the probe's single tap must not stop the sweep
    assert "user" in forced.rule_ids and any("forced" in n for n in forced.notes)
    finetune = apply_overrides(plan, strategy="full-finetune", epochs=4)
    assert finetune.recipe.lr_head == 1e-3 and finetune.recipe.epochs == 4  # the default recipe, capped
    one = apply_overrides(finetune, epochs=1)
    assert one.recipe.epochs == 1 and one.recipe.warmup_epochs == 0


def test_a_smaller_batch_scales_a_finetunes_learning_rates_once():
    plan = apply_overrides(RunPlan(dataset="d", backbone="b", strategy="full-finetune", rule_ids=["R1"]))
    half = apply_overrides(plan, batch_size=16)
    assert half.batch_size == 16 and plan.batch_size == 32
    assert half.recipe.lr_head == pytest.approx(1e-3 * 0.5 ** 0.5) and half.recipe.backbone_lr == pytest.approx(1e-4 * 0.5 ** 0.5)
    assert apply_overrides(half, batch_size=16) == half  # the same batch again: no second scaling
    # a probe's plan at batch 16 forced to a fine-tune: the default recipe (set for 32) is scaled to 16
    forced = apply_overrides(RunPlan(dataset="d", backbone="b", strategy="linear-probe", rule_ids=["R1"], batch_size=16),
                             strategy="partial-finetune")
    assert forced.batch_size == 16 and forced.recipe.lr_head == pytest.approx(1e-3 * 0.5 ** 0.5)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        plan.with_batch_size(1)


def test_running_out_of_memory_while_training_says_which_batch_to_try(colours, tmp_path, monkeypatch):
    from advisor.core.errors import DeviceMemoryError

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(type(get_strategy("full-finetune")), "fit", out_of_memory)
    with pytest.raises(DeviceMemoryError, match=r"cpu ran out of memory training full-finetune at 32 px, batch 32 "
                                                r"\(test/tiny-cnn\) \(run it again with --batch-size 16"):
        run_plan(_plan(colours, "full-finetune"), runs_dir=tmp_path / "runs", num_workers=0)
    (rd,) = (tmp_path / "runs").iterdir()
    state = json.loads((rd / "run.json").read_text())
    assert state["status"] == "failed" and state["error"].startswith("OutOfMemoryError: CUDA out of memory")


def test_cli_run_auto_then_predict_on_the_shipped_example(tmp_path, capsys):
    from test_cli import run_main

    # --epochs 2 keeps a fine-tune below the share of its schedule the record measured: the forecast credits
    # it no gain, so the advice runs a probe (and says why) and the test stays fast
    code, out, err = run_main(["run", "--auto", str(EXAMPLE), "--runs-dir", str(tmp_path / "runs"),
                               "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "Recommended: linear-probe" in out and "why: " in out and "validation accuracy" in out
    (rd,) = (tmp_path / "runs").iterdir()
    # the local track record holds the run's whole wall time (what its forecast forecasts) and its fit's share
    from advisor.decide.records import local_outcomes

    (row,) = local_outcomes()
    fit = json.loads((rd / "result.json").read_text())["seconds"]
    assert row["fit_seconds"] == pytest.approx(fit, abs=0.01) and row["seconds"] > row["fit_seconds"]
    code, out, err = run_main(["predict", str(rd), str(EXAMPLE / "val" / "ants"), "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert len(rep["predictions"]) == 10
    # real ant photos through a probe trained on 20 ants and 20 bees
    assert sum(p["top"][0]["label"] == "ants" for p in rep["predictions"]) >= 8


@pytest.mark.parametrize("args, message", [
    (["run", str(EXAMPLE)], "choose exactly one"),
    (["run", "--strategy", "nope", str(EXAMPLE)], "unknown strategy"),
    (["run", "--plan", "/no/such/plan.json"], "plan.json is missing"),
    (["predict", "/tmp", str(EXAMPLE)], "no saved model"),
    (["run", "--resume", "/tmp", "--epochs", "2"], "do not apply to --resume"),
    (["run", "--strategy", "full-finetune", str(EXAMPLE), "--batch-size", "1"], "allowed range 2 <= --batch-size <= 4096"),
])
def test_cli_run_errors_are_one_line(args, message, capsys):
    from test_cli import run_main

    code, _, err = run_main(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_forced_strategy_skips_the_similarity_measurement(colours, tmp_path, monkeypatch):
    import advisor.measure.profiler as prof
    from advisor.execute.runner import auto_run

    def no_similarity(*a, **k):
        raise AssertionError("a forced strategy must not measure similarity")

    monkeypatch.setattr(prof, "measure_similarity", no_similarity)
    out = auto_run(colours, strategy="layer-probe", backbone="test/tiny-cnn", runs_dir=tmp_path / "runs",
                   input_size=32, num_workers=0)
    assert out.plan.strategy == "layer-probe" and "user" in out.plan.rule_ids
    # the forced strategy gets its own plan fields: a sweep over the stage taps, not R1's pre_logits
    assert out.plan.taps[-3:] == ["stage2", "stage3", "pre_logits"] and len(out.result.sweep) > 1
    # the modifiers that fired are applied to the forced strategy too: R10 (36 px images) adds the earlier tap
    assert "R10" in out.plan.rule_ids and out.plan.taps[0] == "stage1"
    assert out.recommendation.profile.similarity is None
    assert any("forced" in n for n in out.plan.notes)
