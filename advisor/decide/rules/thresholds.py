"""Every threshold the rules compare with (calibrated by benchmarks/calibrate.py) and the depth helpers derived from them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.backbones import PRE_LOGITS

SizeClass = Literal["small", "large"]
SimilarityClass = Literal["similar", "different"]
RuleKind = Literal["quadrant", "override", "modifier", "warning"]


class Thresholds(BaseModel):
    """Every threshold the rules compare against.

    Defaults are calibrated by ``benchmarks/calibrate.py`` on the measured suite
    (``docs/decision-rules.md``, section Calibration); the provisional values were 200 per class,
    1000 in total, 3 swept stages, 60 % frozen and half the schedule for a capped fine-tune.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    large_per_class: float = Field(
        110, gt=0,
        description="median training images per class at or above which the size axis can be 'large'",
    )
    large_total: int = Field(
        175, ge=1,
        description="training images in total at or above which the size axis can be 'large' "
        "(both this and large_per_class must hold)",
    )
    similarity: float = Field(
        0.5, ge=0, le=1,
        description="combined similarity score in [0, 1] at or above which the dataset is 'similar'",
    )
    tiny_class: int = Field(
        5, ge=0,
        description="a class with fewer training images than this forces a probe: linear on similar data (R5), layer on different (R18)",
    )
    imbalance: float = Field(
        3.0, ge=1,
        description="largest/smallest training class ratio at or above which the loss is class-weighted",
    )
    severe_imbalance: float = Field(
        10.0, ge=1,
        description="largest/smallest ratio at or above which batches are also sampled class-balanced",
    )
    greyscale_share: float = Field(
        0.5, ge=0, le=1,
        description="share of greyscale images at or above which the input is shifted (R10)",
    )
    low_resolution: int = Field(
        64, ge=1,
        description="median shorter side in px below which the input is low-resolution (R10)",
    )
    min_per_class_for_finetune: int = Field(
        20, ge=0,
        description="smallest training class below which a fine-tune falls back to a probe (R6, R7)",
    )
    flip_drop: float = Field(
        0.02, ge=0, le=1,
        description="held-out probe accuracy lost on mirrored images at or above which (and above twice its "
        "standard error) horizontal flips are taken to change labels and are not used as augmentation (R17)",
    )
    min_schedule_fraction: float = Field(
        0.26, gt=0, le=1,
        description="a fine-tune capped below this share of its schedule's epochs is outside the measured evidence: the advice warns (R15, R16 retired)",
    )
    val_resolution: float = Field(
        0.05, gt=0, le=1,
        description="95 % interval half-width of an accuracy measured on the validation split above which the advice "
        "warns that the split cannot tell strategies apart (R19): the gaps that decide between them measured "
        "2-8 points (fine-tune over probe) and 0.5-3.5 (partial against full fine-tune)",
    )
    probe_stages: int = Field(
        2, ge=1,
        description="the layer probe sweeps this many of the deepest stage taps, plus pre_logits (R2, R7)",
    )
    frozen_fraction: float = Field(
        0.4, ge=0, lt=1,
        description="share of stages a partial fine-tune keeps frozen, rounded half up, one stage left trainable (R3)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if self.severe_imbalance < self.imbalance:
            raise ValueError(
                f"severe_imbalance must be >= imbalance; got severe_imbalance={self.severe_imbalance} "
                f"and imbalance={self.imbalance}"
            )
        return self



def frozen_stages_for(stages: int, fraction: float | None = None) -> int:
    """round(fraction * stages), half up, leaving at least one stage trainable (R3's depth)."""
    fraction = Thresholds().frozen_fraction if fraction is None else fraction
    return max(0, min(stages - 1, math.floor(fraction * stages + 0.5 + 1e-9)))


def probe_sweep_taps(stage_taps: Sequence[str], probe_stages: int | None = None) -> tuple[str, ...]:
    """The taps a layer probe sweeps: the deepest ``probe_stages`` stage taps, then pre_logits."""
    k = Thresholds().probe_stages if probe_stages is None else probe_stages
    return (*tuple(stage_taps)[-k:], PRE_LOGITS)


def sweep_candidates(taps: Sequence[str], *, concat_top: int = 2) -> list[list[str]]:
    """Each tap alone, then the last ``concat_top`` taps together, then the last 3 (if >= 3 taps)."""
    cands = [[t] for t in taps]
    for k in (concat_top, 3):
        if 2 <= k <= len(taps) and list(taps[-k:]) not in cands:
            cands.append(list(taps[-k:]))
    return cands
