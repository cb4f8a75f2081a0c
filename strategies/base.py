"""What every strategy shares: the registry, the run context, metrics and the result model."""

from __future__ import annotations

import abc
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from advisor.backbones import Backbone
from advisor.classifier import TransferClassifier
from advisor.data import DatasetScan, Sample
from advisor.errors import AdvisorError
from advisor.models import RunPlan

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a strategy under a stable name."""

    def wrap(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_strategy(name: str) -> Strategy:
    import strategies  # noqa: F401  (registers the built-in strategies)

    if name not in _REGISTRY:
        raise AdvisorError(f"unknown strategy {name!r}", hint=f"choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def strategy_names() -> list[str]:
    import strategies  # noqa: F401

    return sorted(_REGISTRY)


class ClassMetrics(BaseModel):
    name: str
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(BaseModel):
    """Validation metrics of a trained classifier."""

    val_accuracy: float
    val_accuracy_ci: tuple[float, float]  # Wilson 95 % interval
    val_loss: float
    n_val: int
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # rows: true class, columns: predicted


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> Metrics:
    logits, y = logits.detach().float().cpu(), y.cpu()
    k = len(classes)
    pred = logits.argmax(1)
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per = []
    for i, name in enumerate(classes):
        tp = int(conf[i, i])
        p = tp / int(conf[:, i].sum()) if conf[:, i].sum() else 0.0
        r = tp / int(conf[i].sum()) if conf[i].sum() else 0.0
        per.append(ClassMetrics(name=name, precision=round(p, 4), recall=round(r, 4),
                                f1=round(2 * p * r / (p + r), 4) if p + r else 0.0, support=int(conf[i].sum())))
    correct = int((pred == y).sum())
    n = int(y.numel())
    loss = float(torch.nn.functional.cross_entropy(logits, y)) if n else float("nan")
    return Metrics(val_accuracy=correct / n if n else 0.0, val_accuracy_ci=wilson_interval(correct, n), val_loss=round(loss, 5),
                   n_val=n, per_class=per, confusion=conf.tolist())


class RunResult(BaseModel):
    """What a strategy's ``fit`` returns."""

    strategy: str
    metrics: Metrics
    curves: dict[str, list[float]] = {}
    trainable_params: int
    total_params: int
    seconds: float
    device: str
    selected: dict[str, Any] = {}  # what the strategy chose (tap, l2, epochs run, ...)
    sweep: list[dict[str, Any]] = []  # layer probe: one row per candidate
    artifacts: dict[str, str] = {}
    epochs_completed: int | None = None
    stopped_early: bool = False
    # (path, true class, predicted class) of every validation image evaluated: paired comparisons
    # between strategies (compare) need the per-image outcomes, not only the accuracy.
    predictions: list[tuple[str, int, int]] = []


def predictions_of(logits: torch.Tensor, y: torch.Tensor, paths: list[str]) -> list[tuple[str, int, int]]:
    """Per-image (path, label, prediction) rows for :attr:`RunResult.predictions`."""
    pred = logits.argmax(1).tolist()
    return [(p, int(t), int(q)) for p, t, q in zip(paths, y.tolist(), pred)]


@dataclass
class RunData:
    """The images a run trains and validates on."""

    scan: DatasetScan
    train: list[Sample]
    val: list[Sample]

    @property
    def classes(self) -> list[str]:
        return self.scan.classes

    @classmethod
    def from_scan(cls, scan: DatasetScan) -> RunData:
        train, val = scan.split("train"), scan.split("val")
        if not val:
            raise AdvisorError("the dataset has no validation images", hint="add a val/ folder or let the scan carve a split")
        return cls(scan=scan, train=train, val=val)


@dataclass
class RunContext:
    """Where and how a run executes; strategies report through ``progress`` and ``event``."""

    run_dir: Path
    device: torch.device
    seed: int = 0
    cache_dir: Path | None = None
    num_workers: int | None = None
    resume: bool = False
    progress: Callable[[str, int, int], None] | None = None
    events: list[dict] = field(default_factory=list)

    def event(self, kind: str, **data: Any) -> None:
        """Append one line to ``events.jsonl`` (flushed at once: the log survives a kill)."""
        rec = {"time": round(time.time(), 3), "event": kind, **data}
        self.events.append(rec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / "events.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(stage, done, total)


class Strategy(abc.ABC):
    """Base class: a pydantic ``Config`` built from the plan and a ``fit``."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    @abc.abstractmethod
    def config_from_plan(self, plan: RunPlan) -> BaseModel:
        """The strategy's own settings, read off a plan."""

    @abc.abstractmethod
    def fit(self, data: RunData, backbone: Backbone, config: BaseModel, ctx: RunContext) -> tuple[RunResult, TransferClassifier]:
        """Train on ``data.train``, evaluate on ``data.val``; return the result and the model."""


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
