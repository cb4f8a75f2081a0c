"""The rule table: every rule's stable ID, kind, condition, plan change and rationale, in evaluation order."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from advisor.decide.models import STRATEGIES
from advisor.decide.recipe import finetune_schedule
from advisor.decide.rules.context import RuleContext
from advisor.decide.rules.plans import (
    _full_finetune_plan,
    _imbalance_plan,
    _input_shift_plan,
    _layer_probe_plan,
    _linear_probe_plan,
    _no_flip_plan,
    _partial_finetune_plan,
    _severe_imbalance_plan,
)
from advisor.decide.rules.thresholds import RuleKind, SimilarityClass, SizeClass


@dataclasses.dataclass(frozen=True)
class Rule:
    """One decision rule: when it fires (``condition``), what it sets (``plan``) and why."""

    id: str
    title: str
    kind: RuleKind
    strategy: str | None  # the strategy a quadrant or override rule chooses
    condition: Callable[[RuleContext], bool]
    plan: Callable[[RuleContext, dict[str, Any]], dict[str, Any]] | None
    rationale: str  # str.format template over RuleContext.values()
    when: str  # the condition in words, for rules_markdown
    # Why a rule no longer fires, and what replaced it. Retired rules keep their ID (reports and
    # plans that cite it stay readable) and never fire again; IDs are not reused.
    retired: str | None = None

    def __post_init__(self) -> None:
        if self.retired is not None:
            object.__setattr__(self, "condition", _never)
        # A typo in the table would otherwise surface only in the one report that hits it.
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise ValueError(f"rule {self.id}: strategy must be one of {STRATEGIES}; got {self.strategy!r}")
        if (self.strategy is not None) != (self.kind in ("quadrant", "override")):
            raise ValueError(
                f"rule {self.id}: quadrant and override rules name a strategy, others do not; "
                f"got kind={self.kind!r} with strategy={self.strategy!r}"
            )

    def explain(self, ctx: RuleContext) -> str:
        return self.rationale.format_map(ctx.values())



def _never(ctx: RuleContext) -> bool:
    return False


_RETIRED_BUDGET = (
    "retired when forecasts arrived (issue 13): a measured cost replaced the epoch-share heuristic. "
    "`--budget 15m` picks the strategy with the best forecast that fits the time; an epoch cap only shortens "
    "the schedule, and the advice warns when it falls below min_schedule_fraction of it (the track record's "
    "capped fine-tunes ran 27-36 % of their schedules, and the better one beat the better probe on all eleven datasets)"
)


_SMALL = (
    "Small ({train_per_class_median:.0f} training images per class, large from {large_per_class:.0f}; "
    "{train_images} in total, large from {large_total})"
)
_LARGE = (
    "Large ({train_per_class_median:.0f} training images per class >= {large_per_class:.0f} "
    "and {train_images} in total >= {large_total})"
)

def _quadrant_is(size: SizeClass, similarity: SimilarityClass) -> Callable[[RuleContext], bool]:
    return lambda ctx: ctx.size_class == size and ctx.similarity_class == similarity


def _few_for_finetune(similarity: SimilarityClass) -> Callable[[RuleContext], bool]:
    # Mutually exclusive with R5 (which is stricter) so at most one override fires.
    def condition(ctx: RuleContext) -> bool:
        p, t = ctx.profile, ctx.thresholds
        return (
            ctx.size_class == "large"
            and ctx.similarity_class == similarity
            and not ctx.tiny_classes
            and p.train_per_class_min < t.min_per_class_for_finetune
        )

    return condition


def _short_budget(similarity: SimilarityClass) -> Callable[[RuleContext], bool]:
    # After R5-R7 (so at most one override fires): a fine-tune cut far below its schedule.
    few = _few_for_finetune(similarity)

    def condition(ctx: RuleContext) -> bool:
        if ctx.epochs_cap is None or ctx.size_class != "large" or ctx.similarity_class != similarity:
            return False
        if ctx.tiny_classes or few(ctx) or ctx.profile.train_images < 1:
            return False
        epochs = finetune_schedule(ctx.profile.train_images)[1]
        return ctx.epochs_cap < ctx.thresholds.min_schedule_fraction * epochs

    return condition



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
        "{min_schedule_fraction:.0%} needed): the shortest capped fine-tunes measured to beat the "
        "probes ran about a quarter of their schedule (eleven datasets, 64 px), below that the evidence is mixed, "
        "so use the similar column's probe, a linear classifier on pre_logits; "
        "fine-tune when the full schedule fits.",
        when="R3's quadrant, no earlier override, and an epoch cap below min_schedule_fraction of the schedule",
        retired=_RETIRED_BUDGET,
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
        "{min_schedule_fraction:.0%} needed): the shortest capped fine-tunes measured to beat the "
        "probes ran about a quarter of their schedule (eleven datasets, 64 px), below that the evidence is mixed, "
        "so use the different column's probe, linear classifiers on "
        "{probe_taps}; fine-tune when the full schedule fits.",
        when="R4's quadrant, no earlier override, and an epoch cap below min_schedule_fraction of the schedule",
        retired=_RETIRED_BUDGET,
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
    Rule(
        id="R19",
        title="validation split too small to tell strategies apart",
        kind="warning",
        strategy=None,
        condition=lambda ctx: ctx.val_too_small,
        plan=None,
        rationale="{val_images} validation images pin an accuracy near {val_level_pct:.0f}% to "
        "+-{val_half_width_pct:.1f} points (95 %), over +-{val_resolution_pct:.0f}: too few to tell strategies apart; "
        "{val_action}.",
        when="the 95 % Wilson half-width of the probe CV's accuracy on the validation split's size > val_resolution",
    ),
)
