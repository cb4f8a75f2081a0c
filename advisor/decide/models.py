"""What the decide stage returns: the rules that fired, the plan, the decision and the recommendation.

Pydantic models at the boundary: ``advisor recommend --json`` prints them and ``--save-plan`` writes the plan,
so field names are part of the interface.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.decide.backbones import BackboneRanking
from advisor.decide.forecast import Forecast
from advisor.decide.recipe import BATCH_SIZE, MAX_BATCH, MIN_BATCH, FinetuneRecipe
from advisor.measure.models import CurvePoint, DatasetProfile

MIN_INPUT, MAX_INPUT = 32, 1024  # pixels; below 32 a stride-32 network sees a single pixel
MAX_SEED = 2**32 - 1  # what numpy and torch generators accept everywhere

StrategyName = Literal["linear-probe", "layer-probe", "partial-finetune", "full-finetune"]
STRATEGIES: tuple[str, ...] = ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")


class RuleHit(BaseModel):
    """A rule that fired, with its rationale filled in from the measured values."""

    id: str
    title: str
    kind: Literal["quadrant", "override", "modifier", "warning"]
    rationale: str


class BoundaryNote(BaseModel):
    """How close the placement is to a boundary of the table, and what would flip it."""

    axis: Literal["size", "similarity"]
    value: float
    threshold: float
    margin: str  # human sentence: "2.1x above", "interval straddles the threshold"
    flip: str  # "with >= 200 training images per class this becomes partial-finetune"


class RunPlan(BaseModel):
    """Everything a strategy needs to run; saved by ``recommend --save-plan`` and run later.

    Fine-tunes carry their whole training recipe in ``recipe`` (one source: advisor/decide/recipe.py);
    probes have none. Version 1 plans (recipe fields at the top level) are read and converted.
    """

    # A saved plan is read back as input: the command line's limits hold for it (no NaN or infinity).
    model_config = ConfigDict(allow_inf_nan=False)

    version: int = Field(2, ge=1, le=2)
    dataset: str
    backbone: str
    strategy: StrategyName
    rule_ids: list[str]
    taps: list[str] = Field(default_factory=list)  # features the probe reads (layer/linear probe)
    frozen_stages: int | None = Field(None, ge=0, le=64)  # fine-tunes: how many stages stay frozen (from the input side)
    trainable_stages: int | None = Field(None, ge=0, le=64)
    recipe: FinetuneRecipe | None = None  # fine-tunes only
    batch_size: int = Field(BATCH_SIZE, ge=MIN_BATCH, le=MAX_BATCH)
    input_size: int = Field(224, ge=MIN_INPUT, le=MAX_INPUT)
    class_weighting: bool = False
    balanced_sampler: bool = False
    seed: int = Field(0, ge=0, le=MAX_SEED)
    val_fraction: float | None = Field(None, gt=0, lt=1)
    # Temperature-scale the trained head on the validation split (strategies/temperature.py): probabilities that
    # match accuracy; predictions and accuracy unchanged. Kept only where held-out folds say it helps.
    calibrate: bool = True
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _from_version_1(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("version", 1) != 1:
            return data
        data = dict(data)
        old = {k: data.pop(k) for k in ("lr_head", "lr_backbone", "weight_decay", "epochs", "warmup_epochs", "augment",
                                        "adapt_bn") if k in data}
        data["version"] = 2
        if str(data.get("strategy", "")).endswith("finetune") and data.get("recipe") is None:
            recipe = {k: old[k] for k in ("lr_head", "lr_backbone", "weight_decay", "epochs", "warmup_epochs") if k in old}
            if "augment" in old:
                recipe["augment"] = "crop" if old["augment"] else "none"
            recipe["bn"] = "adapt" if old.get("adapt_bn") else "train"
            data["recipe"] = recipe
        return data

    @model_validator(mode="after")
    def _recipe_for_finetunes(self) -> RunPlan:
        if self.strategy.endswith("finetune") and self.recipe is None:
            self.recipe = FinetuneRecipe()
        return self

    def with_batch_size(self, batch_size: int) -> RunPlan:
        """This plan at another training batch: a fine-tune's learning rates scale by sqrt(new / old).

        The square-root rule for Adam-type optimisers keeps the noise of an update about the same; the
        epochs stay, so a smaller batch takes more steps. Used where the user lowers the batch to fit
        the GPU's memory (``--batch-size``) and by benchmarks/batch_check.py; applying it twice with
        the same batch changes nothing.
        """
        if batch_size == self.batch_size:
            return self
        fields = self.model_dump()
        fields["batch_size"] = batch_size
        if self.recipe is not None:
            scale = math.sqrt(batch_size / self.batch_size)
            fields["recipe"] = {**fields["recipe"], "lr_head": self.recipe.lr_head * scale,
                                "lr_backbone": self.recipe.backbone_lr * scale}
        return RunPlan(**fields)  # validated: the batch's own limits


class Decision(BaseModel):
    """The strategy that runs, which policy chose it, and one sentence that says why."""

    policy: str
    table: str  # the table's strategy (quadrant and overrides)
    table_rule: str  # the rule id(s) that set it
    forecast_best: str | None = None  # the forecast's own choice (one-standard-error rule toward the cheaper)
    chosen: str
    agree: bool
    sentence: str


class MoreDataRow(BaseModel):
    factor: int  # 1: today
    per_class: float
    strategies: dict[str, tuple[float, float, float]]  # strategy -> (forecast, 80 % low, high)
    probe_gain: tuple[float, float, float] | None = None  # what the probe's curve adds from today (gain, low, high)


class MoreData(BaseModel):
    """What more images would buy: the forecast at 1x, 2x and 4x the training images per class, and the size boundary."""

    rows: list[MoreDataRow]
    boundary: str
    boundary_per_class: float | None = None  # images per class that would make the dataset large (None: it is)
    curve: list[CurvePoint] = Field(default_factory=list)  # the probe's measured points it extrapolates
    notes: list[str] = Field(default_factory=list)


class Recommendation(BaseModel):
    """What ``advisor recommend`` returns: the profile, the placement, the rules, the plan."""

    profile: DatasetProfile
    size_class: Literal["small", "large"]
    similarity_class: Literal["similar", "different"]
    quadrant_rule: str
    strategy: StrategyName
    hits: list[RuleHit]
    boundaries: list[BoundaryNote]
    warnings: list[str]
    evidence_notes: list[str] = Field(default_factory=list)  # where measurement and rule disagree
    thresholds: dict[str, float]
    epochs_cap: int | None = None  # the fine-tune epoch cap the advice assumed
    plan: RunPlan
    seconds: float | None = None
    # Wall seconds per stage (the profile's, then step timing, forecast, more data): where ``seconds`` went.
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    forecast: Forecast | None = None  # every strategy's expected accuracy and cost (advisor/decide/forecast.py)
    more_data: MoreData | None = None  # the forecast at 2x and 4x the images (advisor/decide/curves.py)
    backbones: BackboneRanking | None = None  # with --backbones: every candidate's evidence and forecast, ranked
    decision: Decision | None = None  # which of table and forecast chose the strategy, and why (advisor/decide/rules/policy.py)
