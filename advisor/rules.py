"""The decision rules: place a dataset in the CS231n 2x2 table and turn the placement into a plan.

The table (size x similarity to ImageNet) picks one of four strategies::

                 similar                        very different
    small        linear-probe on pre_logits     layer-probe over earlier taps
    large        partial-finetune (top stages)  full-finetune (all stages)

Every decision is a :class:`Rule` in :data:`RULES`, evaluated in that fixed order:

1. quadrant rules R1-R4 (exactly one fires) set the strategy;
2. override rules R5, R18, R6, R7, R15, R16 (at most one fires) replace it when the table's answer is unsafe;
3. modifier rules R8-R10 and R17 adjust the plan of whichever strategy was chosen;
4. warning rules R11-R14 change nothing in the plan but are reported.

A rule's ``rationale`` is a ``str.format`` template over :meth:`Context.values`, so every
report cites the measured numbers next to the thresholds they were compared with. All
thresholds live in :class:`Thresholds`, calibrated on measured outcomes (benchmarks/calibrate.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.backbones import PRE_LOGITS, TapInfo
from advisor.errors import AdvisorError
from advisor.recipe import BATCH_SIZE, MAX_STEPS, MIN_STEPS, default_recipe, finetune_schedule
from advisor.models import (
    STRATEGIES,
    BoundaryNote,
    DatasetProfile,
    Recommendation,
    RuleHit,
    RunPlan,
)

__all__ = [
    "RULES",
    "Context",
    "Rule",
    "Thresholds",
    "boundaries",
    "build_context",
    "finetune_schedule",
    "frozen_stages_for",
    "probe_sweep_taps",
    "place",
    "recommend",
    "rules_markdown",
    "thresholds_markdown",
]

SizeClass = Literal["small", "large"]
SimilarityClass = Literal["similar", "different"]
RuleKind = Literal["quadrant", "override", "modifier", "warning"]

class Thresholds(BaseModel):
    """Every threshold the rules compare against.

    Defaults are calibrated by ``benchmarks/calibrate.py`` on the measured suite
    (``docs/decision-rules.md``, section Calibration); the provisional values were 200 per class,
    1000 in total, 3 swept stages and 60 % frozen.
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
        0.5, gt=0, le=1,
        description="a fine-tune capped below this share of its schedule's epochs falls back to a probe (R15, R16)",
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


# --------------------------------------------------------------------------- context


@dataclasses.dataclass(frozen=True)
class Context:
    """What rules see: the profile, the thresholds, the backbone's taps and derived values."""

    profile: DatasetProfile
    thresholds: Thresholds
    taps: tuple[TapInfo, ...]
    stage_taps: tuple[str, ...]  # stage outputs in depth order (pre_logits excluded)
    size_class: SizeClass
    similarity_class: SimilarityClass
    similarity_measured: bool
    score: float | None
    score_low: float | None
    score_high: float | None
    score_level: float | None
    greyscale_observed: float | None  # measured share of greyscale images
    median_short_side: float  # min(median width, median height): SizeSummary has no exact median
    low_res: bool
    input_shift_reasons: tuple[str, ...]
    tiny_classes: tuple[tuple[str, int], ...]
    epochs_cap: int | None = None  # the user's cap on fine-tune epochs (a budget), if any
    # What the resolved strategy would be across each boundary; filled by build_context.
    similarity_flip_strategy: str | None = None
    size_flip_strategy: str | None = None

    @property
    def frozen_stages(self) -> int:
        """Stages a partial fine-tune keeps frozen (see :func:`frozen_stages_for`)."""
        return frozen_stages_for(len(self.stage_taps), self.thresholds.frozen_fraction)

    @property
    def layer_probe_taps(self) -> tuple[str, ...]:
        return probe_sweep_taps(self.stage_taps, self.thresholds.probe_stages)

    @property
    def earlier_tap(self) -> str | None:
        """The stage just before the layer-probe sweep, if any."""
        n, k = len(self.stage_taps), self.thresholds.probe_stages
        return self.stage_taps[n - k - 1] if n > k else None

    @property
    def flips_change_labels(self) -> bool:
        """R17: the profiler's flip check lost at least ``flip_drop`` accuracy, beyond twice its standard error."""
        fc = self.profile.flip_check
        return fc is not None and fc.drop >= self.thresholds.flip_drop and fc.drop > 2 * fc.drop_se

    @property
    def straddles(self) -> bool:
        """Whether the similarity interval has points on both sides of the threshold."""
        if self.score_low is None or self.score_high is None:
            return False
        return self.score_low < self.thresholds.similarity <= self.score_high

    def values(self) -> dict[str, Any]:
        """The names rationale templates may use; missing measurements are NaN, never None."""
        p, t = self.profile, self.thresholds
        nan = float("nan")
        steps, epochs = finetune_schedule(p.train_images) if p.train_images > 0 else (0, 0)
        strategy = _resolve(self)[1]
        other = "different" if self.similarity_class == "similar" else "similar"
        if self.similarity_flip_strategy is None:
            flip_effect = "the strategy on the other side is unknown"
        elif self.similarity_flip_strategy == strategy:
            flip_effect = f"the other side gives {strategy} too, so the strategy does not depend on it"
        else:
            flip_effect = (
                f"if the data is in fact {other} the strategy becomes "
                f"{self.similarity_flip_strategy} instead of {strategy}"
            )
        if self.similarity_measured:
            relation = ">=" if self.similarity_class == "similar" else "<"
            evidence = (
                f"similarity score {self.score:.2f} [{self.score_low:.2f}, {self.score_high:.2f}] "
                f"{relation} {t.similarity:.2f}"
            )
        else:
            evidence = "similarity not measured, treated as similar"
        smallest = min(p.train_per_class, key=p.train_per_class.__getitem__, default="")
        return {
            **t.model_dump(),
            "dataset": p.dataset,
            "backbone": p.backbone,
            "num_classes": p.num_classes,
            "train_images": p.train_images,
            "train_per_class_min": p.train_per_class_min,
            "train_per_class_median": p.train_per_class_median,
            "smallest_class": smallest,
            "imbalance_ratio": p.imbalance_ratio,
            "input_size": p.input_size,
            "smaller_than_input": p.smaller_than_input,
            "cross_split_duplicates": p.cross_split_duplicates,
            "conflicting_label_duplicates": p.conflicting_label_duplicates,
            "size_class": self.size_class,
            "similarity_class": self.similarity_class,
            "per_class_ratio": p.train_per_class_median / t.large_per_class,
            "total_ratio": p.train_images / t.large_total,
            "score": nan if self.score is None else self.score,
            "score_low": nan if self.score_low is None else self.score_low,
            "score_high": nan if self.score_high is None else self.score_high,
            "score_level_pct": nan if self.score_level is None else 100 * self.score_level,
            "similarity_evidence": evidence,
            "shift_pattern": p.similarity.shift_pattern if p.similarity else "unknown",
            "greyscale_observed": nan if self.greyscale_observed is None else self.greyscale_observed,
            "median_short_side": self.median_short_side,
            "input_shift_reasons": "; ".join(self.input_shift_reasons) or "none",
            "input_shift_action": _INPUT_SHIFT_ACTION[strategy].format(earlier_tap=self.earlier_tap)
            if strategy != "layer-probe" or self.earlier_tap
            else "the layer probe already sweeps every stage",
            "tiny_classes": ", ".join(f"{name} ({n})" for name, n in self.tiny_classes) or "none",
            "tiny_class_count": len(self.tiny_classes),
            "stages": len(self.stage_taps),
            "frozen_stages": self.frozen_stages,
            "trainable_stages": len(self.stage_taps) - self.frozen_stages,
            "probe_taps": ", ".join(self.layer_probe_taps),
            "strategy": strategy,
            "similarity_flip_strategy": self.similarity_flip_strategy or "unknown",
            "similarity_flip_effect": flip_effect,
            "size_flip_strategy": self.size_flip_strategy or "unknown",
            "finetune_steps": steps,
            "finetune_epochs": epochs,
            "epochs_cap": self.epochs_cap if self.epochs_cap is not None else nan,
            "flip_accuracy": p.flip_check.accuracy if p.flip_check else nan,
            "flip_flipped_accuracy": p.flip_check.flipped_accuracy if p.flip_check else nan,
            "flip_drop_pct": 100 * p.flip_check.drop if p.flip_check else nan,
            "flip_drop_se_pct": 100 * p.flip_check.drop_se if p.flip_check else nan,
            "flip_images": p.flip_check.images if p.flip_check else 0,
            "schedule_share_pct": 100 * self.epochs_cap / epochs if self.epochs_cap is not None and epochs else nan,
        }


_INPUT_SHIFT_ACTION = {
    "linear-probe": "a linear probe on pre_logits cannot correct it: if it underperforms, try a layer "
    "probe or a fine-tune with re-estimated BatchNorm statistics",
    "layer-probe": "the layer probe therefore also sweeps an earlier tap ({earlier_tap})",
    "partial-finetune": "the fine-tune's trainable stages adapt to it; BatchNorm statistics are not re-estimated, "
    "which measured worse even under such a shift (mnist-small, 64 px, 3 epochs: 0.780 re-estimated vs 0.903 kept)",
    "full-finetune": "the full fine-tune retrains the early stages too; BatchNorm statistics are not re-estimated, "
    "which measured worse even under such a shift (mnist-small, 64 px, 3 epochs: 0.780 re-estimated vs 0.903 kept)",
}


def frozen_stages_for(stages: int, fraction: float | None = None) -> int:
    """round(fraction * stages), half up, leaving at least one stage trainable (R3's depth)."""
    fraction = Thresholds().frozen_fraction if fraction is None else fraction
    return max(0, min(stages - 1, math.floor(fraction * stages + 0.5 + 1e-9)))


def probe_sweep_taps(stage_taps: Sequence[str], probe_stages: int | None = None) -> tuple[str, ...]:
    """The taps a layer probe sweeps: the deepest ``probe_stages`` stage taps, then pre_logits."""
    k = Thresholds().probe_stages if probe_stages is None else probe_stages
    return (*tuple(stage_taps)[-k:], PRE_LOGITS)


def _size_class(profile: DatasetProfile, t: Thresholds) -> SizeClass:
    large = profile.train_per_class_median >= t.large_per_class and profile.train_images >= t.large_total
    return "large" if large else "small"


def _similarity_class(profile: DatasetProfile, t: Thresholds) -> SimilarityClass:
    # Unmeasured similarity counts as similar: the cheaper, head-only strategies are the safer
    # default, and R14 says so in the report.
    if profile.similarity is None:
        return "similar"
    return "similar" if profile.similarity.score.value >= t.similarity else "different"


def place(profile: DatasetProfile, thresholds: Thresholds | None = None) -> tuple[SizeClass, SimilarityClass]:
    """The dataset's cell of the 2x2 table: (size class, similarity class)."""
    t = thresholds or Thresholds()
    return _size_class(profile, t), _similarity_class(profile, t)


def _greyscale_share(profile: DatasetProfile) -> float | None:
    if profile.greyscale_share is not None:
        return profile.greyscale_share.value
    # Without a pixel estimate, files stored single-channel are a lower bound worth using.
    if profile.images_total > 0 and profile.greyscale_by_mode > 0:
        return profile.greyscale_by_mode / profile.images_total
    return None


def _low_resolution(profile: DatasetProfile, t: Thresholds) -> tuple[bool, float]:
    sizes = profile.sizes
    short = float(min(sizes.median_width, sizes.median_height))
    below = sizes.smaller_than.get(t.low_resolution)
    if below is not None and sizes.count > 0:
        # More than half the shorter sides below the threshold is exactly "median below it".
        return below > sizes.count / 2, short
    return short < t.low_resolution, short


def build_context(
    profile: DatasetProfile, *, taps: Sequence[TapInfo], thresholds: Thresholds | None = None,
    epochs_cap: int | None = None,
) -> Context:
    """Derive everything the rules look at from the profile, the thresholds and the taps."""
    t = thresholds or Thresholds()
    sim = profile.similarity
    grey = _greyscale_share(profile)
    low_res, short = _low_resolution(profile, t)
    reasons = []
    if grey is not None and grey >= t.greyscale_share:
        reasons.append(f"{grey:.0%} of images are greyscale, threshold {t.greyscale_share:.0%}")
    if low_res:
        reasons.append(
            f"the median shorter side, about {short:.0f} px, is below {t.low_resolution} px "
            f"and images are upsampled to {profile.input_size} px"
        )
    if sim is not None and sim.shift_pattern == "input-level":
        detail = f" ({sim.shift_pattern_reason})" if sim.shift_pattern_reason else ""
        reasons.append(f"the BatchNorm-statistics shift is concentrated in early stages{detail}")
    ctx = Context(
        profile=profile,
        thresholds=t,
        taps=tuple(taps),
        stage_taps=tuple(tap.name for tap in taps if tap.name != PRE_LOGITS),
        size_class=_size_class(profile, t),
        similarity_class=_similarity_class(profile, t),
        similarity_measured=sim is not None,
        score=sim.score.value if sim else None,
        score_low=sim.score.low if sim else None,
        score_high=sim.score.high if sim else None,
        score_level=sim.score.level if sim else None,
        greyscale_observed=grey,
        median_short_side=short,
        low_res=low_res,
        input_shift_reasons=tuple(reasons),
        tiny_classes=tuple(
            sorted(((c, n) for c, n in profile.train_per_class.items() if n < t.tiny_class), key=lambda x: (x[1], x[0]))
        ),
        epochs_cap=epochs_cap,
    )
    flip_sim = "different" if ctx.similarity_class == "similar" else "similar"
    flip_size = "small" if ctx.size_class == "large" else "large"
    return dataclasses.replace(
        ctx,
        similarity_flip_strategy=_resolve(dataclasses.replace(ctx, similarity_class=flip_sim))[1],
        size_flip_strategy=_resolve(dataclasses.replace(ctx, size_class=flip_size))[1],
    )


# --------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
    """One decision rule: when it fires (``condition``), what it sets (``plan``) and why."""

    id: str
    title: str
    kind: RuleKind
    strategy: str | None  # the strategy a quadrant or override rule chooses
    condition: Callable[[Context], bool]
    plan: Callable[[Context, dict[str, Any]], dict[str, Any]] | None
    rationale: str  # str.format template over Context.values()
    when: str  # the condition in words, for rules_markdown

    def __post_init__(self) -> None:
        # A typo in the table would otherwise surface only in the one report that hits it.
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ValueError(f"rule {self.id}: strategy must be one of {STRATEGIES}; got {self.strategy!r}")
        if (self.strategy is not None) != (self.kind in ("quadrant", "override")):
            raise ValueError(
                f"rule {self.id}: quadrant and override rules name a strategy, others do not; "
                f"got kind={self.kind!r} with strategy={self.strategy!r}"
            )

    def explain(self, ctx: Context) -> str:
        return self.rationale.format_map(ctx.values())


_SMALL = (
    "Small ({train_per_class_median:.0f} training images per class, large from {large_per_class:.0f}; "
    "{train_images} in total, large from {large_total})"
)
_LARGE = (
    "Large ({train_per_class_median:.0f} training images per class >= {large_per_class:.0f} "
    "and {train_images} in total >= {large_total})"
)
_FINETUNE_NOTE = (
    "recipe (advisor/recipe.py): the head starts as a cross-validated probe on the features training starts from; "
    "AdamW, backbone lr a tenth of the head's so pretrained weights move less; warm-up then cosine to zero; "
    "label smoothing, RandomResizedCrop + TrivialAugment, EMA weights reported; the schedule runs to its end"
)


def _schedule_note(ctx: Context) -> str:
    steps, epochs = finetune_schedule(ctx.profile.train_images)
    return (
        f"schedule: {steps} optimizer steps = clamp(40*sqrt({ctx.profile.train_images}), "
        f"{MIN_STEPS}, {MAX_STEPS}), i.e. {epochs} epochs at batch {BATCH_SIZE}"
    )


def _probe_fields() -> dict[str, Any]:
    # Probes train on frozen cached features: no stage split, no training recipe.
    return {"frozen_stages": None, "trainable_stages": None, "recipe": None}


def _linear_probe_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        **_probe_fields(),
        "taps": [PRE_LOGITS],
        "notes": ["train a linear classifier on frozen pre_logits features"],
    }


def _layer_probe_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        **_probe_fields(),
        "taps": list(ctx.layer_probe_taps),
        "notes": ["fit one linear classifier per tap on frozen features; keep the best on validation"],
    }


def _finetune_plan(ctx: Context, frozen: int) -> dict[str, Any]:
    recipe = default_recipe(ctx.profile.train_images, full=frozen == 0)
    return {
        "taps": [],
        "frozen_stages": frozen,
        "trainable_stages": len(ctx.stage_taps) - frozen,
        "recipe": recipe.model_dump(),
        "notes": [_FINETUNE_NOTE, _schedule_note(ctx)],
    }


def _partial_finetune_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return _finetune_plan(ctx, ctx.frozen_stages)


def _full_finetune_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return _finetune_plan(ctx, 0)


def _quadrant_is(size: SizeClass, similarity: SimilarityClass) -> Callable[[Context], bool]:
    return lambda ctx: ctx.size_class == size and ctx.similarity_class == similarity


def _few_for_finetune(similarity: SimilarityClass) -> Callable[[Context], bool]:
    # Mutually exclusive with R5 (which is stricter) so at most one override fires.
    def condition(ctx: Context) -> bool:
        p, t = ctx.profile, ctx.thresholds
        return (
            ctx.size_class == "large"
            and ctx.similarity_class == similarity
            and not ctx.tiny_classes
            and p.train_per_class_min < t.min_per_class_for_finetune
        )

    return condition


def _short_budget(similarity: SimilarityClass) -> Callable[[Context], bool]:
    # After R5-R7 (so at most one override fires): a fine-tune cut far below its schedule.
    few = _few_for_finetune(similarity)

    def condition(ctx: Context) -> bool:
        if ctx.epochs_cap is None or ctx.size_class != "large" or ctx.similarity_class != similarity:
            return False
        if ctx.tiny_classes or few(ctx) or ctx.profile.train_images < 1:
            return False
        epochs = finetune_schedule(ctx.profile.train_images)[1]
        return ctx.epochs_cap < ctx.thresholds.min_schedule_fraction * epochs

    return condition


def _input_shift_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    size = ctx.profile.input_size
    notes = []
    if ctx.greyscale_observed is not None and ctx.greyscale_observed >= ctx.thresholds.greyscale_share:
        notes.append("greyscale images are replicated to 3 channels; colour-dependent ImageNet features see no colour")
    if ctx.low_res:
        notes.append(f"low-resolution images are upsampled to {size} px: their blur is a shift the early layers see")
    strategy = plan["strategy"]
    if strategy in ("partial-finetune", "full-finetune"):
        notes.append(
            "BatchNorm keeps ImageNet's statistics (recipe bn: frozen): re-estimating them on this data measured "
            "worse even under an input-level shift (see docs/finetune.md)"
        )
        return {"notes": notes}
    if strategy == "layer-probe":
        earlier = ctx.earlier_tap
        if earlier is not None and earlier not in plan["taps"]:
            notes.append(f"{earlier} added to the sweep: under an input-level shift an earlier tap may transfer best")
            return {"taps": [earlier, *plan["taps"]], "notes": notes}
        return {"notes": notes}
    notes.append(
        "if the linear probe underperforms, a layer probe over earlier taps or a fine-tune with "
        "re-estimated BatchNorm statistics addresses an early-layer shift; pre_logits alone cannot"
    )
    return {"notes": notes}


def _no_flip_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    if plan.get("recipe") is None:
        return {"notes": ["probes train on unaugmented features: nothing to change"]}
    return {"recipe": {**dict(plan["recipe"]), "hflip": False},
            "notes": ["no horizontal flips in the fine-tune's augmentation: they change labels here"]}


def _imbalance_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return {"class_weighting": True}


def _severe_imbalance_plan(ctx: Context, plan: dict[str, Any]) -> dict[str, Any]:
    return {"balanced_sampler": True}


RULES: tuple[Rule, ...] = (
    Rule(
        id="R1",
        title="small and similar: linear probe",
        kind="quadrant",
        strategy="linear-probe",
        condition=_quadrant_is("small", "similar"),
        plan=_linear_probe_plan,
        rationale=_SMALL + " and similar ({similarity_evidence}): the top layer's features already "
        "describe this kind of image and there are too few images to fine-tune without overfitting, "
        "so train a linear classifier on pre_logits.",
        when="size small and similarity similar",
    ),
    Rule(
        id="R2",
        title="small and different: layer probe",
        kind="quadrant",
        strategy="layer-probe",
        condition=_quadrant_is("small", "different"),
        plan=_layer_probe_plan,
        rationale=_SMALL + " and different ({similarity_evidence}): too few images to retrain the "
        "ImageNet-specific top layers, and earlier layers are more generic (edges, colour blobs, "
        "textures), so train a linear classifier on each of {probe_taps} and keep the best.",
        when="size small and similarity different",
    ),
    Rule(
        id="R3",
        title="large and similar: fine-tune the top",
        kind="quadrant",
        strategy="partial-finetune",
        condition=_quadrant_is("large", "similar"),
        plan=_partial_finetune_plan,
        rationale=_LARGE + " and similar ({similarity_evidence}): enough images to fine-tune without "
        "overfitting, and the generic early layers already fit, so freeze the first {frozen_stages} "
        "of {stages} stages and train the other {trainable_stages} plus a new head, with a backbone "
        "learning rate a tenth of the head's.",
        when="size large and similarity similar",
    ),
    Rule(
        id="R4",
        title="large and different: fine-tune everything",
        kind="quadrant",
        strategy="full-finetune",
        condition=_quadrant_is("large", "different"),
        plan=_full_finetune_plan,
        rationale=_LARGE + " and different ({similarity_evidence}): enough images to retrain the "
        "network, and the ImageNet-specific layers must change, so fine-tune all {stages} stages "
        "plus a new head from the pretrained start, with a backbone learning rate a tenth of the head's.",
        when="size large and similarity different",
    ),
    Rule(
        id="R5",
        title="tiny class, similar data: linear probe only",
        kind="override",
        strategy="linear-probe",
        condition=lambda ctx: bool(ctx.tiny_classes) and ctx.similarity_class == "similar",
        plan=_linear_probe_plan,
        rationale="{tiny_class_count} class(es) have fewer than {tiny_class} training images "
        "({tiny_classes}): too few to fine-tune on, and the data is similar to ImageNet, so a linear "
        "classifier on pre_logits is advised whatever the size; collect more images of these classes.",
        when="some class has fewer than tiny_class training images, and similarity similar",
    ),
    Rule(
        id="R18",
        title="tiny class, different data: layer probe",
        kind="override",
        strategy="layer-probe",
        condition=lambda ctx: bool(ctx.tiny_classes) and ctx.similarity_class == "different",
        plan=_layer_probe_plan,
        rationale="{tiny_class_count} class(es) have fewer than {tiny_class} training images "
        "({tiny_classes}): too few to fine-tune on, and the data differs from ImageNet, so fit linear "
        "classifiers on {probe_taps} and keep the simplest within one standard error of the best "
        "(with 3 training images per class the layer probe beat the top-layer probe by 17-19 points on "
        "eurosat and brain-mri and never lost, benchmarks/few_shot.py); collect more images of these classes.",
        when="some class has fewer than tiny_class training images, and similarity different",
    ),
    Rule(
        id="R6",
        title="few per class for a partial fine-tune: linear probe",
        kind="override",
        strategy="linear-probe",
        condition=_few_for_finetune("similar"),
        plan=_linear_probe_plan,
        rationale="The table says partial-finetune, but the smallest class ({smallest_class}) has "
        "{train_per_class_min} training images, fewer than {min_per_class_for_finetune} needed to "
        "fine-tune without overfitting it, so fall back to the similar column's probe: a linear "
        "classifier on pre_logits.",
        when="R3's quadrant, no tiny class, and the smallest class has fewer than "
        "min_per_class_for_finetune training images",
    ),
    Rule(
        id="R7",
        title="few per class for a full fine-tune: layer probe",
        kind="override",
        strategy="layer-probe",
        condition=_few_for_finetune("different"),
        plan=_layer_probe_plan,
        rationale="The table says full-finetune, but the smallest class ({smallest_class}) has "
        "{train_per_class_min} training images, fewer than {min_per_class_for_finetune} needed to "
        "fine-tune without overfitting it, so fall back to the different column's probe: linear "
        "classifiers on {probe_taps}.",
        when="R4's quadrant, no tiny class, and the smallest class has fewer than "
        "min_per_class_for_finetune training images",
    ),
    Rule(
        id="R15",
        title="fine-tune budget too short for a partial fine-tune: linear probe",
        kind="override",
        strategy="linear-probe",
        condition=_short_budget("similar"),
        plan=_linear_probe_plan,
        rationale="The table says partial-finetune, but the budget caps it at {epochs_cap:.0f} epochs, "
        "{schedule_share_pct:.0f}% of its {finetune_epochs}-epoch schedule (at least "
        "{min_schedule_fraction:.0%} needed): measured on five datasets, fine-tunes cut that short lost "
        "to a probe on every one, so use the similar column's probe, a linear classifier on pre_logits; "
        "fine-tune when the full schedule fits.",
        when="R3's quadrant, no earlier override, and an epoch cap below min_schedule_fraction of the schedule",
    ),
    Rule(
        id="R16",
        title="fine-tune budget too short for a full fine-tune: layer probe",
        kind="override",
        strategy="layer-probe",
        condition=_short_budget("different"),
        plan=_layer_probe_plan,
        rationale="The table says full-finetune, but the budget caps it at {epochs_cap:.0f} epochs, "
        "{schedule_share_pct:.0f}% of its {finetune_epochs}-epoch schedule (at least "
        "{min_schedule_fraction:.0%} needed): measured on five datasets, fine-tunes cut that short lost "
        "to a probe on every one, so use the different column's probe, linear classifiers on "
        "{probe_taps}; fine-tune when the full schedule fits.",
        when="R4's quadrant, no earlier override, and an epoch cap below min_schedule_fraction of the schedule",
    ),
    Rule(
        id="R8",
        title="imbalanced classes: class-weighted loss",
        kind="modifier",
        strategy=None,
        condition=lambda ctx: ctx.profile.imbalance_ratio >= ctx.thresholds.imbalance,
        plan=_imbalance_plan,
        rationale="The largest training class is {imbalance_ratio:.1f}x the smallest (threshold "
        "{imbalance:.1f}x): weight the loss by inverse class frequency so small classes count.",
        when="imbalance_ratio >= imbalance",
    ),
    Rule(
        id="R9",
        title="severely imbalanced classes: balanced sampler",
        kind="modifier",
        strategy=None,
        condition=lambda ctx: ctx.profile.imbalance_ratio >= ctx.thresholds.severe_imbalance,
        plan=_severe_imbalance_plan,
        rationale="The largest training class is {imbalance_ratio:.1f}x the smallest (threshold "
        "{severe_imbalance:.1f}x): also draw batches class-balanced, or the smallest classes are "
        "missing from most batches.",
        when="imbalance_ratio >= severe_imbalance",
    ),
    Rule(
        id="R10",
        title="input-level shift: adapt early layers",
        kind="modifier",
        strategy=None,
        condition=lambda ctx: bool(ctx.input_shift_reasons),
        plan=_input_shift_plan,
        rationale="Input-level shift: {input_shift_reasons}. A shift concentrated in the early "
        "layers argues for re-estimating BatchNorm statistics or training early stages rather than "
        "only the head; {input_shift_action}.",
        when="greyscale share >= greyscale_share, or median shorter side < low_resolution, "
        "or similarity shift_pattern is 'input-level'",
    ),
    Rule(
        id="R17",
        title="labels change under a horizontal flip: no flip augmentation",
        kind="modifier",
        strategy=None,
        condition=lambda ctx: ctx.flips_change_labels,
        plan=_no_flip_plan,
        rationale="A linear probe on the images' pixels scored {flip_accuracy:.1%} on held-out images and "
        "{flip_flipped_accuracy:.1%} on the same images mirrored ({flip_images} images): a drop of {flip_drop_pct:.1f} "
        "points (standard error {flip_drop_se_pct:.1f}, threshold {flip_drop:.0%}), so a mirrored image is not like "
        "this data's own (digits, text, a fixed orientation) and flips must not be used to augment it.",
        when="the flip check's accuracy drop >= flip_drop and > 2 standard errors",
    ),
    Rule(
        id="R11",
        title="duplicates across splits",
        kind="warning",
        strategy=None,
        condition=lambda ctx: ctx.profile.cross_split_duplicates > 0,
        plan=None,
        rationale="{cross_split_duplicates} duplicate group(s) span train and val/test: the "
        "validation score will be optimistic; remove each group from all but one split before trusting it.",
        when="cross_split_duplicates > 0",
    ),
    Rule(
        id="R12",
        title="duplicates with conflicting labels",
        kind="warning",
        strategy=None,
        condition=lambda ctx: ctx.profile.conflicting_label_duplicates > 0,
        plan=None,
        rationale="{conflicting_label_duplicates} duplicate group(s) carry different labels for the "
        "same image: label noise that caps accuracy; fix or drop them.",
        when="conflicting_label_duplicates > 0",
    ),
    Rule(
        id="R13",
        title="similarity placement uncertain",
        kind="warning",
        strategy=None,
        condition=lambda ctx: ctx.straddles,
        plan=None,
        rationale="The similarity score {score:.2f} has a {score_level_pct:.0f}% interval "
        "[{score_low:.2f}, {score_high:.2f}] that straddles the threshold {similarity:.2f}: placement "
        "on the similarity axis is uncertain; {similarity_flip_effect}.",
        when="the similarity interval has points on both sides of similarity",
    ),
    Rule(
        id="R14",
        title="similarity not measured",
        kind="warning",
        strategy=None,
        condition=lambda ctx: not ctx.similarity_measured,
        plan=None,
        rationale="The similarity to ImageNet could not be measured, so the dataset is treated as "
        "similar; {similarity_flip_effect}.",
        when="the profile has no similarity report",
    ),
)


def _resolve(ctx: Context) -> tuple[Rule, str, Rule | None]:
    """(quadrant rule, final strategy, override rule or None): the strategy-setting rules only."""
    quadrant = next(r for r in RULES if r.kind == "quadrant" and r.condition(ctx))
    override = next((r for r in RULES if r.kind == "override" and r.condition(ctx)), None)
    chosen = override or quadrant
    assert chosen.strategy is not None
    return quadrant, chosen.strategy, override


# --------------------------------------------------------------------------- outputs


def _fmt(x: float) -> str:
    return f"{x:g}" if x >= 100 or float(x).is_integer() else f"{x:.1f}"


def boundaries(profile: DatasetProfile, thresholds: Thresholds | None = None) -> list[BoundaryNote]:
    """How far the placement is from each boundary of the table, and what would flip it.

    Size gives two notes (per-class median and total, both needed for 'large'); similarity gives
    one when it was measured.
    """
    return _boundaries(build_context(profile, taps=(), thresholds=thresholds))


def _boundaries(ctx: Context) -> list[BoundaryNote]:
    p, t = ctx.profile, ctx.thresholds
    flipped = "small" if ctx.size_class == "large" else "large"
    strategy = _resolve(ctx)[1]
    flip_quadrant, flip_strategy, flip_override = _resolve(dataclasses.replace(ctx, size_class=flipped))
    if flip_override is not None:
        outcome = f"the table says {flip_quadrant.strategy}, but {flip_override.id} would still give {flip_strategy}"
    elif flip_strategy == strategy:
        outcome = f"this stays {flip_strategy}"
    else:
        outcome = f"this becomes {flip_strategy}"
    if ctx.size_class == "small":
        missing = []
        if p.train_per_class_median < t.large_per_class:
            missing.append(f">= {_fmt(t.large_per_class)} training images per class")
        if p.train_images < t.large_total:
            missing.append(f">= {t.large_total} in total")
        size_flip = f"with {' and '.join(missing)} {outcome}"
    else:
        size_flip = (
            f"with fewer than {_fmt(t.large_per_class)} training images per class "
            f"or fewer than {t.large_total} in total {outcome}"
        )

    def ratio_margin(value: float, threshold: float) -> str:
        side = "at or above" if value >= threshold else "below"
        return f"{value / threshold:.2f}x the threshold ({_fmt(value)} vs {_fmt(threshold)}, {side})"

    notes = [
        BoundaryNote(
            axis="size",
            value=p.train_per_class_median,
            threshold=t.large_per_class,
            margin="median per class " + ratio_margin(p.train_per_class_median, t.large_per_class),
            flip=size_flip,
        ),
        BoundaryNote(
            axis="size",
            value=p.train_images,
            threshold=t.large_total,
            margin="training images in total " + ratio_margin(p.train_images, t.large_total),
            flip=size_flip,
        ),
    ]
    if ctx.similarity_measured:
        assert ctx.score is not None and ctx.score_low is not None and ctx.score_high is not None
        interval = f"[{ctx.score_low:.2f}, {ctx.score_high:.2f}]"
        if ctx.straddles:
            margin = f"score {ctx.score:.2f}, interval {interval} straddles the threshold {t.similarity:.2f}"
        else:
            side = "at or above" if ctx.similarity_class == "similar" else "below"
            margin = (
                f"score {ctx.score:.2f} is {abs(ctx.score - t.similarity):.2f} {side} the threshold "
                f"{t.similarity:.2f}; the whole interval {interval} is {side} it"
            )
        other = "different" if ctx.similarity_class == "similar" else "similar"
        relation = "below" if other == "different" else "at or above"
        same = ctx.similarity_flip_strategy == strategy
        notes.append(
            BoundaryNote(
                axis="similarity",
                value=ctx.score,
                threshold=t.similarity,
                margin=margin,
                flip=f"with a score {relation} {t.similarity:.2f} the data is {other} and this "
                + (f"stays {strategy}" if same else f"becomes {ctx.similarity_flip_strategy}"),
            )
        )
    return notes


def recommend(
    profile: DatasetProfile,
    *,
    taps: Sequence[TapInfo],
    thresholds: Thresholds | None = None,
    seed: int = 0,
    val_fraction: float | None = None,
    epochs_cap: int | None = None,
) -> Recommendation:
    """Evaluate :data:`RULES` on the profile and return the placement, the hits and the plan.

    ``taps`` are the backbone's feature taps in depth order (stages, then ``pre_logits``);
    ``val_fraction`` is recorded in the plan when the validation split was carved by the scan;
    ``epochs_cap`` is the budget the plan will run under (R15, R16), if the user set one.
    """
    if epochs_cap is not None and epochs_cap < 1:
        raise AdvisorError(f"the epoch cap must be at least 1; got {epochs_cap}", hint="leave --epochs unset for the plan's schedule")
    names = [tap.name for tap in taps]
    if PRE_LOGITS not in names:
        raise AdvisorError(f"the backbone's taps must include {PRE_LOGITS!r}; got {names}")
    if len(names) < 2:
        raise AdvisorError(f"the backbone must expose at least one stage tap besides {PRE_LOGITS!r}; got {names}")
    if profile.train_images < 1:
        raise AdvisorError(f"recommending needs at least 1 training image; got {profile.train_images}")
    ctx = build_context(profile, taps=taps, thresholds=thresholds, epochs_cap=epochs_cap)
    fired = [rule for rule in RULES if rule.condition(ctx)]
    quadrant, strategy, _ = _resolve(ctx)
    fields: dict[str, Any] = {
        "dataset": profile.dataset,
        "backbone": profile.backbone,
        "strategy": quadrant.strategy,
        "rule_ids": [rule.id for rule in fired],
        "batch_size": BATCH_SIZE,
        "input_size": profile.input_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "notes": [],
    }
    for rule in fired:  # fixed order: quadrant, override, modifiers, warnings
        if rule.strategy is not None:
            fields["strategy"] = rule.strategy
            # A strategy replaces its predecessor's notes; modifiers' notes come after.
            fields["notes"] = []
        if rule.plan is not None:
            update = rule.plan(ctx, dict(fields))
            notes = update.pop("notes", [])
            fields.update(update)
            fields["notes"] = [*fields["notes"], *notes]
    assert fields["strategy"] == strategy
    hits = [RuleHit(id=r.id, title=r.title, kind=r.kind, rationale=r.explain(ctx)) for r in fired]
    return Recommendation(
        profile=profile,
        size_class=ctx.size_class,
        similarity_class=ctx.similarity_class,
        quadrant_rule=quadrant.id,
        strategy=strategy,
        hits=hits,
        boundaries=_boundaries(ctx),
        # Overrides are surfaced too: they mean the table's own answer was judged unsafe.
        warnings=[hit.rationale for hit in hits if hit.kind in ("override", "warning")],
        thresholds=ctx.thresholds.model_dump(),
        epochs_cap=epochs_cap,
        plan=RunPlan(**fields),
    )


_STRATEGY_PLANS: dict[str, Callable[[Context, dict[str, Any]], dict[str, Any]]] = {
    "linear-probe": _linear_probe_plan,
    "layer-probe": _layer_probe_plan,
    "partial-finetune": _partial_finetune_plan,
    "full-finetune": _full_finetune_plan,
}


def plan_for_strategy(rec: Recommendation, strategy: str, *, taps: Sequence[TapInfo]) -> RunPlan:
    """The plan ``rec`` would hold had the rules chosen ``strategy``: for a strategy the user forces.

    Strategy fields (taps, frozen stages, recipe) come from the same builders the rules use, then
    every modifier rule that fired (class weighting, sampler, BatchNorm re-estimation, flips) is
    applied again to them, so a forced fine-tune gets the same modifiers as a recommended one.
    """
    if strategy not in _STRATEGY_PLANS:
        raise AdvisorError(f"unknown strategy {strategy!r}", hint=f"choose from {', '.join(_STRATEGY_PLANS)}")
    if strategy == rec.strategy:
        return rec.plan
    ctx = build_context(rec.profile, taps=taps, thresholds=Thresholds(**rec.thresholds), epochs_cap=rec.epochs_cap)
    fields = {**rec.plan.model_dump(), "strategy": strategy, "notes": []}
    fields.update(_STRATEGY_PLANS[strategy](ctx, dict(fields)))
    notes = [f"strategy forced to {strategy} by the user (the rules advised {rec.strategy})", *fields.pop("notes", [])]
    fired = set(rec.plan.rule_ids)
    for rule in RULES:
        if rule.kind == "modifier" and rule.id in fired and rule.plan is not None:
            update = rule.plan(ctx, dict(fields))
            notes += update.pop("notes", [])
            fields.update(update)
    return RunPlan(**{**fields, "rule_ids": [*rec.plan.rule_ids, "user"], "notes": notes})


def rules_markdown() -> str:
    """The rule table in evaluation order: id, kind, condition, strategy, rationale template."""
    lines = [
        "| id | kind | fires when | strategy | rationale (template) |",
        "|---|---|---|---|---|",
    ]
    for rule in RULES:
        template = rule.rationale.replace("|", "\\|")
        lines.append(
            f"| {rule.id} | {rule.kind} | {rule.when} | {rule.strategy or '-'} | {template} |"
        )
    return "\n".join(lines) + "\n"


def thresholds_markdown() -> str:
    """The thresholds with their defaults and meaning, as a markdown table."""
    lines = ["| threshold | default | meaning |", "|---|---|---|"]
    for name, field in Thresholds.model_fields.items():
        lines.append(f"| `{name}` | {field.default:g} | {field.description} |")
    return "\n".join(lines) + "\n"

