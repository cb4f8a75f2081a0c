"""Experiment logs where users look: metrics.csv in every run, TensorBoard and MLflow on request.

Loggers see the run's events as they happen (``on_event``: one row per fine-tune epoch) and the
finished result (``finish``: the plan's hyperparameters, the final metrics, a probe's CV sweep).
They write local files only: ``metrics.csv``, ``tensorboard/`` (``--logger tensorboard``) and
``mlruns/`` (``--logger mlflow``, a file store), all inside the run directory; nothing is sent anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from advisor.core.errors import AdvisorError
from advisor.core.io import append_text, write_text_atomic

METRICS_CSV = "metrics.csv"
LOGGERS = ("tensorboard", "mlflow")
# images_per_s: training images over the training part of the epoch (validation excluded); lr_backbone: the
# top backbone group's (under layer decay the lower groups' rates fall from it by the recipe's factor per depth)
EPOCH_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_accuracy", "holdout_accuracy", "lr_head",
                 "lr_backbone", "epoch_seconds", "seconds", "images_per_s"]
PROBE_COLUMNS = ["kind", "taps", "dim", "l2", "cv_accuracy", "chosen"]
_EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny (or mlflow)"}


def check_loggers(names: list[str] | None) -> list[str]:
    """The loggers asked for, each known and installed; anything else is a one-line error saying how to fix it."""
    import importlib.util

    names = list(dict.fromkeys(names or []))
    for name in names:
        if name not in LOGGERS:
            raise AdvisorError(f"unknown logger {name!r}", hint=f"choose from {', '.join(LOGGERS)}")
        if importlib.util.find_spec(name) is None:
            raise AdvisorError(f"--logger {name} needs the {name} package", hint=f"pip install {_EXTRA[name]}")
    return names


def epoch_row(rec: dict) -> dict[str, Any]:
    """One fine-tune epoch event as a metrics.csv row."""
    groups = rec.get("lr_groups") if isinstance(rec.get("lr_groups"), dict) else {"head": rec.get("lr")}
    backbone = [v for k, v in groups.items() if k.startswith("backbone") and isinstance(v, (int, float))]
    images, secs = rec.get("images"), rec.get("train_seconds")
    return {"epoch": rec["epoch"], "step": rec.get("step"), "train_loss": rec.get("train_loss"),
            "val_loss": rec.get("val_loss"), "val_accuracy": rec.get("val_accuracy"),
            "holdout_accuracy": rec.get("holdout_accuracy"), "lr_head": groups.get("head", rec.get("lr")),
            "lr_backbone": max(backbone) if backbone else None, "epoch_seconds": secs, "seconds": rec.get("seconds"),
            "images_per_s": round(images / secs, 2) if images and secs else None}


def probe_rows(result) -> list[dict[str, Any]]:
    """A probe's CV: each layer-probe candidate (its best l2), then the chosen taps' l2 grid."""
    chosen = result.selected.get("taps") or []
    rows = [{"kind": "candidate", "taps": "+".join(r["taps"]), "dim": r.get("dim"), "l2": r.get("l2"),
             "cv_accuracy": r.get("cv_accuracy"), "chosen": list(r["taps"]) == list(chosen)} for r in result.sweep]
    best_l2 = result.selected.get("l2")
    rows += [{"kind": "l2", "taps": "+".join(chosen), "dim": None, "l2": l2, "cv_accuracy": acc, "chosen": l2 == best_l2}
             for l2, acc in result.selected.get("cv_table") or []]
    return rows


def _csv_text(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()})
    return buf.getvalue()


def epochs_from_events(run_dir: Path) -> list[dict]:
    """Every epoch event of the run (a resumed run's repeated epoch: the last one counts), in epoch order."""
    rows: dict[int, dict] = {}
    path = run_dir / "events.jsonl"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a kill: the others still count
                continue
            if isinstance(rec, dict) and rec.get("event") == "epoch" and isinstance(rec.get("epoch"), int):
                rows[rec["epoch"]] = rec
    return [rows[k] for k in sorted(rows)]


class CSVLogger:
    """metrics.csv: fine-tunes one row per epoch (live, appended), rewritten whole at the end; probes their CV."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_CSV

    def on_event(self, rec: dict) -> None:
        if rec.get("event") != "epoch":
            return
        text = _csv_text(EPOCH_COLUMNS, [epoch_row(rec)])  # live: a killed run keeps the epochs it finished
        append_text(self.path, text if not self.path.exists() else text.split("\n", 1)[1])

    def finish(self, plan, result, run_dir: Path) -> None:
        if result.sweep or result.selected.get("cv_table"):
            write_text_atomic(self.path, _csv_text(PROBE_COLUMNS, probe_rows(result)))
        else:  # the events are the record: a resumed run's repeated epoch appears once
            write_text_atomic(self.path, _csv_text(EPOCH_COLUMNS, [epoch_row(r) for r in epochs_from_events(run_dir)]))


def _params(plan) -> dict[str, str]:
    flat = {k: v for k, v in plan.model_dump(mode="json").items() if k not in ("recipe", "notes") and v is not None}
    if plan.recipe is not None:
        flat.update({f"recipe.{k}": v for k, v in plan.recipe.model_dump(mode="json").items()})
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flat.items()}


def _final(result) -> dict[str, float]:
    m = result.metrics
    return {"final/val_accuracy": m.val_accuracy, "final/val_accuracy_low": m.val_accuracy_ci[0],
            "final/val_accuracy_high": m.val_accuracy_ci[1], "final/val_loss": m.val_loss, "final/seconds": result.seconds}


_SERIES = ("train_loss", "val_loss", "val_accuracy", "holdout_accuracy", "lr_head", "lr_backbone", "images_per_s")


def epoch_series(rec: dict):
    """(epoch, series, value) of one epoch event, every finite number the loggers plot; nothing for other events."""
    if rec.get("event") != "epoch":
        return
    row = epoch_row(rec)
    for key in _SERIES:
        if isinstance(row.get(key), (int, float)) and not math.isnan(row[key]):
            yield int(row["epoch"]), key, float(row[key])


class TensorBoardLogger:
    """``tensorboard/`` in the run directory: the epoch series (step = epoch), hyperparameters and final metrics."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def on_event(self, rec: dict) -> None:
        for epoch, key, value in epoch_series(rec):
            self.writer.add_scalar(f"epoch/{key}", value, global_step=epoch)
        self.writer.flush()

    def finish(self, plan, result, run_dir: Path) -> None:
        for row in probe_rows(result):
            if row["kind"] == "l2" and row["cv_accuracy"] is not None:
                self.writer.add_scalar("probe/cv_accuracy_by_log10_l2", row["cv_accuracy"],
                                       global_step=round(math.log10(row["l2"]) * 100) if row["l2"] else 0)
        self.writer.add_text("plan", "\n".join(f"- {k}: {v}" for k, v in _params(plan).items()))
        for key, value in _final(result).items():
            self.writer.add_scalar(key, value, global_step=0)
        self.writer.close()


class MLflowLogger:
    """``mlruns/`` in the run directory (an MLflow file store): params, per-epoch metrics, final metrics."""

    def __init__(self, run_dir: Path) -> None:
        import os

        from mlflow.tracking import MlflowClient

        # MLflow 3 refuses new file stores unless asked: a folder in the run directory is the point here
        # (nothing to set up, nothing sent anywhere); `mlflow ui --backend-store-uri RUN_DIR/mlruns` reads it.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        exp = self.client.get_experiment_by_name("advisor")
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("advisor")
        self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id

    def on_event(self, rec: dict) -> None:
        for epoch, key, value in epoch_series(rec):
            self.client.log_metric(self.run_id, key, value, step=epoch)

    def finish(self, plan, result, run_dir: Path) -> None:
        for key, value in _params(plan).items():
            self.client.log_param(self.run_id, key, value[:500])
        for key, value in _final(result).items():
            self.client.log_metric(self.run_id, key.replace("/", "_"), float(value))
        self.client.set_terminated(self.run_id)


def make_loggers(run_dir: Path, names: list[str]) -> list:
    """metrics.csv always, then the loggers asked for."""
    kinds = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    return [CSVLogger(run_dir)] + [kinds[n](run_dir) for n in check_loggers(names)]
