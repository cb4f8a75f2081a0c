"""What every strategy shares: the registry, the run context and data, and the strategy interface."""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from advisor.backbones import Backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.core import distributed
from advisor.core.io import append_text
from advisor.core.errors import AdvisorError
from advisor.data.scan import DatasetScan, Sample
from advisor.decide.models import RunPlan
from strategies.results import RunResult

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


def predictions_of(logits: torch.Tensor, y: torch.Tensor, paths: list[str]) -> list[tuple[str, int, int]]:
    """Per-image (path, label, prediction) rows for :attr:`RunResult.predictions`."""
    pred = logits.argmax(1).tolist()
    return [(p, int(t), int(q)) for p, t, q in zip(paths, y.tolist(), pred)]


def confidence_of(logits: torch.Tensor) -> list[float]:
    """Per-image softmax probability of the predicted class, for :attr:`RunResult.confidence`."""
    return [round(float(v), 4) for v in torch.softmax(logits.float(), dim=1).amax(1)]


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
    on_event: Callable[[dict], None] | None = None  # sees every event as it is logged (live epoch lines)
    events: list[dict] = field(default_factory=list)

    def event(self, kind: str, **data: Any) -> None:
        """Append one line to ``events.jsonl`` (flushed at once: the log survives a kill)."""
        rec = {"time": round(time.time(), 3), "event": kind, **data}
        self.events.append(rec)
        if not distributed.is_main():  # under DDP rank 0 logs and shows; the others hold the same state
            return
        append_text(self.run_dir / "events.jsonl", json.dumps(rec, default=str) + "\n")
        if self.on_event is not None:
            self.on_event(rec)

    def report(self, stage: str, done: int, total: int) -> None:
        if self.progress and distributed.is_main():
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
