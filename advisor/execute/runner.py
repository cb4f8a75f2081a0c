"""Execute a plan: a run directory, the strategy's fit, artifacts, report; and resume.

A run directory ``<runs>/<dataset>-<strategy>-<time>/`` holds::

    plan.json        the plan that ran (with any overrides applied)
    run.json         how to resume it: dataset path, device, cache, status
    profile.json     the measured profile, when the plan came from `advisor recommend`/`--auto`
    metrics.json     validation metrics, per-class precision/recall, confusion matrix, curves, calibration, test split
    result.json      the strategy's RunResult (parameters, time, what it selected)
    model.safetensors + model.json   the trained classifier and its card (no pickle)
    seen.json        content digests of its training and validation images (advisor evaluate leaves them out)
    report.md        a readable summary
    report.html      the same with figures (map, curves, confusion matrix, reliability diagram, most confidently
                     wrong), self-contained
    events.jsonl     the event log
    checkpoints/     fine-tunes: the last checkpoint (resume restarts from it)

Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from advisor.core.version import __version__
from advisor.backbones import create_backbone
from advisor.backbones.classifier import ModelCard, save_classifier
from advisor.core import distributed
from advisor.core.distributed import resolve_device
from advisor.core.errors import AdvisorError, DeviceMemoryError, is_out_of_memory
from advisor.core.io import ensure_writable_dir, read_model, write_text_atomic
from advisor.core.machine import machine_name
from advisor.data.scan import DEFAULT_VAL_FRACTION, scan_dataset
from advisor.decide.advise import recommend_once
from advisor.decide.records import record_outcome
from advisor.execute.evaluate import score_samples
from advisor.execute.logs import METRICS_CSV, check_loggers, make_loggers
from advisor.execute.seen import write_seen
from advisor.decide.models import Recommendation, RunPlan
from advisor.decide.recipe import BATCH_SIZE
from advisor.measure.models import DatasetProfile
from advisor.report import LABEL_ISSUES_CSV, label_issues_csv, run_report_md
from advisor.report.html import write_report_html
from strategies.results import RunResult
from strategies.temperature import calibrate_run

DEFAULT_RUNS_DIR = "runs"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the checkpoint is saved; carries the directory to resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class RunState(BaseModel):
    """``run.json``: enough to resume a run from its directory alone."""

    dataset: str
    strategy: str
    status: Literal["running", "interrupted", "failed", "finished"]
    device: str | None = None
    cache_dir: str | None = None
    num_workers: int | None = None
    started: str
    finished: str | None = None
    advisor_version: str = __version__
    error: str | None = None
    keep_checkpoint: bool = False  # a finished run drops its resume checkpoint unless asked to keep it
    loggers: list[str] = []  # besides metrics.csv: tensorboard, mlflow (advisor.execute.logs)


class RunOutcome(BaseModel):
    """What ``advisor run`` returns to the CLI."""

    run_dir: str
    plan: RunPlan
    result: RunResult
    report: str
    recommendation: Recommendation | None = None


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def new_run_dir(runs_dir: str | os.PathLike, dataset: str | os.PathLike, strategy: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).resolve().name or "dataset")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{strategy}-{stamp}"
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = base.with_name(f"{base.name}-{k}")
    return run_dir


def _write(run_dir: Path, name: str, model: BaseModel) -> Path:
    if not distributed.is_main():  # under DDP only rank 0 writes run artifacts
        return run_dir / name
    return write_text_atomic(run_dir / name, model.model_dump_json(indent=2))


def execute(run_dir: Path, plan: RunPlan, state: RunState, *, resume: bool, progress=None,
            recommendation: Recommendation | None = None) -> RunOutcome:
    """Run ``plan`` in ``run_dir`` (fresh or resumed) and write every artifact."""
    from strategies import get_strategy
    from strategies.base import RunContext, RunData

    started = time.perf_counter()  # the run's wall time, fixed costs included, is what its forecast forecasts
    strategy = get_strategy(plan.strategy)
    config = strategy.config_from_plan(plan)
    scan = scan_dataset(state.dataset, val_fraction=plan.val_fraction or DEFAULT_VAL_FRACTION, seed=plan.seed)
    data = RunData.from_scan(scan)
    backbone = create_backbone(plan.backbone)
    loggers = make_loggers(run_dir, state.loggers) if distributed.is_main() else []
    shows = getattr(progress, "event", None)

    def on_event(rec: dict) -> None:
        if shows is not None:
            shows(rec)
        for logger in loggers:
            logger.on_event(rec)

    ctx = RunContext(run_dir=run_dir, device=resolve_device(state.device), seed=plan.seed,
                     cache_dir=Path(state.cache_dir) if state.cache_dir else None, num_workers=state.num_workers,
                     resume=resume, progress=progress, on_event=on_event)
    state.status = "running"
    _write(run_dir, "run.json", state)
    # The device as its times are keyed ("cpu x2": the thread count chosen for this machine's load at start).
    ctx.event("resume" if resume else "start", strategy=plan.strategy, dataset=state.dataset,
              machine=machine_name(ctx.device))
    try:
        result, model = strategy.fit(data, backbone, config, ctx)
        if plan.calibrate and (cal := calibrate_run(result, model, data.classes)) is not None:
            ctx.event("calibration", applied=cal.applied, temperature=cal.temperature, ece_before=cal.ece_before,
                      ece_after=cal.ece_after)
        temperature = result.calibration.temperature if result.calibration else 1.0
        card = ModelCard(strategy=plan.strategy, backbone=backbone.name, weights_digest=backbone.weights_digest,
                         backbone_in_file=plan.strategy.endswith("finetune"), taps=model.taps,
                         feature_dim=model.feature_dim, classes=data.classes, transform=model.backbone.transform_config,
                         metrics={"val_accuracy": result.metrics.val_accuracy,
                                  # folded into the head already: predictions divide by nothing more
                                  **({"temperature": temperature} if temperature != 1.0 else {})},
                         created=_now(), advisor_version=__version__)
        if not distributed.is_main():  # the other ranks trained the same model; rank 0 writes it
            return RunOutcome(run_dir=str(run_dir), plan=plan, result=result, report="", recommendation=recommendation)
        model_path, card_path = save_classifier(model, run_dir, card)
        # the images it trained and validated on, by content: `advisor evaluate` leaves them out of a later score
        write_seen(run_dir, data.scan.samples, cache_dir=state.cache_dir)
        if test := data.scan.split("test"):  # scored once, by the saved classifier: nothing above chose on it
            try:
                result.test = score_samples(model, test, data.classes, split="test", dataset=state.dataset, device=ctx.device,
                                            workers=ctx.num_workers, progress=lambda d, t: ctx.report("test", d, t),
                                            temperature=temperature)
                ctx.event("test", accuracy=result.test.accuracy, n=result.test.n, skipped=result.test.skipped,
                          ece=result.test.ece)
            except AdvisorError as err:  # no test image decoded: the trained model still stands
                ctx.event("test_not_scored", reason=str(err))
        result.artifacts.update({"model": str(model_path), "card": str(card_path), "seen": str(run_dir / "seen.json"),
                                 "metrics": str(run_dir / "metrics.json"),
                                 "metrics_csv": str(run_dir / METRICS_CSV),
                                 "report": str(run_dir / "report.md"), "report_html": str(run_dir / "report.html"),
                                 "events": str(run_dir / "events.jsonl")})
        if not state.keep_checkpoint:
            result.artifacts.pop("checkpoint", None)  # removed once the run has finished
        write_text_atomic(run_dir / "metrics.json", json.dumps(
            {**result.metrics.model_dump(), "curves": result.curves,
             **({"test": result.test.model_dump()} if result.test else {}),
             **({"calibration": result.calibration.model_dump()} if result.calibration else {})}, indent=2))
        _write(run_dir, "result.json", result)
        for logger in loggers:
            logger.finish(plan, result, run_dir)
        if recommendation is not None and recommendation.profile.labels is not None:
            write_text_atomic(run_dir / LABEL_ISSUES_CSV, label_issues_csv(recommendation.profile.labels))
        report = run_report_md(plan, result, dataset=state.dataset, run_dir=run_dir, recommendation=recommendation)
        write_text_atomic(run_dir / "report.md", report)
        write_report_html(run_dir)
    except KeyboardInterrupt:
        state.status = "interrupted"
        _write(run_dir, "run.json", state)
        ctx.event("interrupted")
        raise RunInterrupted(run_dir) from None
    except Exception as err:
        state.status, state.error = "failed", f"{type(err).__name__}: {err}"
        try:  # on a full disk even this small write may fail; the error raised below still says what happened
            _write(run_dir, "run.json", state)
            ctx.event("failed", error=state.error)
        except (OSError, AdvisorError):
            pass
        if is_out_of_memory(err):
            raise _out_of_memory(plan, ctx.device) from err
        raise
    state.status, state.finished = "finished", _now()
    _write(run_dir, "run.json", state)
    if not state.keep_checkpoint and distributed.is_main():
        # The model is saved and the run finished: the resume checkpoint (weights + optimiser) is dead weight.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    ctx.event("finished", val_accuracy=result.metrics.val_accuracy, seconds=result.seconds)
    if recommendation is not None and distributed.is_main():
        try:  # the local track record learns from every run; failing to write it must not fail the run
            # A resumed run's wall clock saw only this process, while its fit counts every process:
            # it records the fit alone, and teaches nothing about the fixed cost.
            whole = result.seconds if resume else time.perf_counter() - started
            record_outcome(recommendation, plan.strategy, result.metrics.val_accuracy, whole,
                           device=ctx.device, fit_seconds=None if resume else result.seconds)
        except OSError as err:
            ctx.event("track_record_not_written", error=str(err))
    return RunOutcome(run_dir=str(run_dir), plan=plan, result=result, report=report, recommendation=recommendation)


def run_plan(
    plan: RunPlan,
    *,
    dataset: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
    run_dir: str | os.PathLike | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress=None,
    recommendation: Recommendation | None = None,
    profile: DatasetProfile | None = None,
    keep_checkpoint: bool = False,
    loggers: list[str] | None = None,
) -> RunOutcome:
    """Start a new run of ``plan`` (on ``dataset``, default the plan's own); ``loggers``: tensorboard, mlflow."""
    loggers = check_loggers(loggers)
    dataset = str(Path(dataset or plan.dataset).resolve())
    if not Path(dataset).exists():
        raise AdvisorError(f"dataset not found: {dataset}")
    plan = plan.model_copy(update={"dataset": dataset})
    rd = None
    if distributed.is_main():  # rank 0 names and creates the run directory; under DDP the others are told
        ensure_writable_dir(runs_dir if not run_dir else Path(run_dir).parent, what="runs folder", option="--runs-dir")
        rd = Path(run_dir) if run_dir else new_run_dir(runs_dir, dataset, plan.strategy)
        if rd.exists() and any(rd.iterdir()):
            raise AdvisorError(f"run directory {rd} already exists and is not empty", hint="use --resume to continue it")
        rd.mkdir(parents=True, exist_ok=True)
    rd = Path(distributed.broadcast(str(rd) if rd else None))
    state = RunState(dataset=dataset, strategy=plan.strategy, status="running", device=device,
                     cache_dir=str(cache_dir) if cache_dir else None, num_workers=num_workers, started=_now(),
                     keep_checkpoint=keep_checkpoint, loggers=loggers)
    _write(rd, "plan.json", plan)
    if profile is not None or recommendation is not None:
        _write(rd, "profile.json", profile or recommendation.profile)
    if recommendation is not None:
        _write(rd, "recommendation.json", recommendation)
    return execute(rd, plan, state, resume=False, progress=progress, recommendation=recommendation)


def resume_run(run_dir: str | os.PathLike, *, device: str | None = None, progress=None) -> RunOutcome:
    """Continue an interrupted run from its directory (fine-tunes restart from their last checkpoint)."""
    rd = Path(run_dir)
    if not (rd / "run.json").exists() or not (rd / "plan.json").exists():
        raise AdvisorError(f"{rd} is not a run directory (no run.json/plan.json)", hint="pass the folder `advisor run` printed")
    fix = "the run directory is damaged: start a new run"
    state = read_model(rd / "run.json", RunState, fix=fix)
    if state.status == "finished":
        raise AdvisorError(f"run {rd} already finished", hint="start a new run instead of resuming")
    plan = read_model(rd / "plan.json", RunPlan, fix=fix)
    if device:
        state.device = device
    rec = None
    if (rd / "recommendation.json").exists():
        rec = read_model(rd / "recommendation.json", Recommendation, fix=fix)
    return execute(rd, plan, state, resume=True, progress=progress, recommendation=rec)


def _out_of_memory(plan: RunPlan, device) -> DeviceMemoryError:
    """What ran out of memory, and the setting to lower: the batch for a fine-tune, else the input size."""
    doing = f"training {plan.strategy} at {plan.input_size} px, batch {plan.batch_size} ({plan.backbone})"
    where = "see what else holds its memory with nvidia-smi" if device.type == "cuda" else "close other programs"
    if plan.strategy.endswith("finetune") and plan.batch_size > 2:
        hint = (f"run it again with --batch-size {max(2, plan.batch_size // 2)} (the learning rates follow the "
                f"batch's square root) or a smaller --input-size, or {where}")
    else:
        hint = f"run it again with a smaller --input-size or backbone, or {where}"
    return DeviceMemoryError(f"{device} ran out of memory {doing}", hint=hint)


def apply_overrides(plan: RunPlan, *, epochs: int | None = None, input_size: int | None = None,
                    batch_size: int | None = None, strategy: str | None = None) -> RunPlan:
    """A copy of ``plan`` with the user's explicit choices on top (``epochs`` caps a fine-tune's recipe;
    ``batch_size`` scales its learning rates, :meth:`RunPlan.with_batch_size`).

    A saved plan carries no profile, so a strategy forced onto it drops the old strategy's own
    fields (taps, stage split, recipe) and the new one uses its defaults.
    """
    fields = plan.model_dump()
    batch = batch_size if batch_size is not None else plan.batch_size
    if input_size is not None:
        fields["input_size"] = input_size
    if strategy and strategy != plan.strategy:
        # the default recipe is set for the default batch: scaled to the plan's batch below
        fields.update(strategy=strategy, rule_ids=[*plan.rule_ids, "user"], taps=[], frozen_stages=None,
                      trainable_stages=None, recipe=None, batch_size=BATCH_SIZE,
                      notes=[*plan.notes, f"strategy forced to {strategy} by the user (the plan said {plan.strategy})"])
    plan = RunPlan(**fields).with_batch_size(batch)  # a fine-tune without a recipe gets the default one here
    if epochs is not None and plan.recipe is not None:
        warmup = min(plan.recipe.warmup_epochs, max(0, epochs - 1))
        plan.recipe = plan.recipe.model_copy(update={"epochs": epochs, "warmup_epochs": warmup})
    return plan


def auto_run(dataset: str | os.PathLike, *, strategy: str | None = None, backbone: str = "efficientnet_lite0",
             sample_size: int = 300, seed: int = 0, runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR, device: str | None = None,
             cache_dir: str | os.PathLike | None = None, num_workers: int | None = None, epochs: int | None = None,
             input_size: int | None = None, progress=None, on_recommendation=None,
             keep_checkpoint: bool = False, budget_seconds: float | None = None,
             loggers: list[str] | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
             batch_size: int | None = None) -> RunOutcome:
    """profile -> recommend -> (report through ``on_recommendation``) -> execute the plan.

    A forced ``strategy`` skips the similarity measurement: its only use would be to choose
    the strategy the user already chose (the plan's other fields come from the file-level profile).
    """
    check_loggers(loggers)  # before any work: a missing package fails in a second, not after profiling
    rec = recommend_once(dataset, backbone=backbone, sample_size=sample_size, seed=seed, device=device,
                         cache_dir=cache_dir, num_workers=num_workers, progress=progress, similarity=strategy is None,
                         force_strategy=strategy, epochs_cap=epochs, budget_seconds=budget_seconds, input_size=input_size,
                         batch_size=batch_size, val_fraction=val_fraction)
    plan = apply_overrides(rec.plan, epochs=epochs, input_size=input_size)  # the batch: set by the recommendation
    rec = rec.model_copy(update={"plan": plan})  # what is shown and saved is the plan that runs
    if on_recommendation is not None and distributed.is_main():
        on_recommendation(rec)
    return run_plan(plan, dataset=dataset, runs_dir=runs_dir, device=device, cache_dir=cache_dir,
                    num_workers=num_workers, progress=progress, recommendation=rec, keep_checkpoint=keep_checkpoint,
                    loggers=loggers)
