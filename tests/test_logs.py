"""Experiment logs: metrics.csv in every run; TensorBoard and MLflow logs read back with their own readers."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

import advisor


def _rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    from conftest import write_class_images

    tmp = tmp_path_factory.mktemp("logs")
    data = write_class_images(tmp / "d", {"red": 8, "blue": 8})
    loggers = [n for n in ("tensorboard", "mlflow") if importlib.util.find_spec(n) is not None]
    out = advisor.run(data, strategy="full-finetune", backbone="test/tiny-cnn", input_size=32, epochs=3,
                      runs_dir=tmp / "runs", cache_dir=tmp / "cache", workers=0, loggers=loggers)
    return out, loggers


def test_a_finetune_writes_one_row_per_epoch(finetune):
    out, _ = finetune
    rows = _rows(out.run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    curves = out.result.curves
    for r, loss, acc in zip(rows, curves["train_loss"], curves["val_accuracy"]):
        assert float(r["train_loss"]) == pytest.approx(loss) and float(r["val_accuracy"]) == pytest.approx(acc)
        assert float(r["lr_head"]) > 0 and float(r["lr_backbone"]) > 0 and float(r["images_per_s"]) > 0
        assert int(r["step"]) > 0 and float(r["epoch_seconds"]) > 0
    assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)


def test_a_probe_writes_its_cv_sweep(tmp_path):
    from conftest import write_class_images

    data = write_class_images(tmp_path / "d", {"red": 8, "blue": 8})
    out = advisor.run(data, strategy="layer-probe", backbone="test/tiny-cnn", input_size=32, runs_dir=tmp_path / "runs",
                      cache_dir=tmp_path / "cache")
    rows = _rows(out.run_dir)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"candidate", "l2"}
    chosen = [r for r in rows if r["kind"] == "candidate" and r["chosen"] == "True"]
    assert len(chosen) == 1 and chosen[0]["taps"] == "+".join(out.result.selected["taps"])


def test_tensorboard_reads_back_the_series(finetune):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, loggers = finetune
    assert "tensorboard" in loggers
    acc = EventAccumulator(str(Path(out.run_dir) / "tensorboard"))
    acc.Reload()
    series = acc.Scalars("epoch/val_accuracy")
    assert [e.step for e in series] == [1, 2, 3]
    assert [e.value for e in series] == pytest.approx(out.result.curves["val_accuracy"])
    assert acc.Scalars("final/val_accuracy")[0].value == pytest.approx(out.result.metrics.val_accuracy)


def test_mlflow_reads_back_params_and_metrics(finetune):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    out, loggers = finetune
    assert "mlflow" in loggers
    client = MlflowClient(tracking_uri=(Path(out.run_dir) / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("advisor")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["strategy"] == "full-finetune" and run.data.params["recipe.epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(out.result.metrics.val_accuracy)


def test_an_unknown_or_missing_logger_is_one_line_before_any_work(tiny_dataset, tmp_path, monkeypatch):
    with pytest.raises(advisor.AdvisorError, match="unknown logger 'wandb'"):
        advisor.run(tiny_dataset, strategy="linear-probe", loggers=["wandb"], runs_dir=tmp_path / "runs")
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(advisor.AdvisorError, match="needs the mlflow package"):
        advisor.run(tiny_dataset, strategy="linear-probe", loggers=["mlflow"], runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
