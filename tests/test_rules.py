"""The decision rules on synthetic profiles: placement, overrides, modifiers, warnings, boundaries."""

from __future__ import annotations

import re
import statistics
import string
from pathlib import Path

import pytest
from pydantic import ValidationError

from advisor.backbones import TapInfo
from advisor.core.errors import AdvisorError
from advisor.data.scan import SizeSummary
from advisor.decide.models import STRATEGIES, Recommendation
from advisor.decide.rules import (
    RULES,
    Thresholds,
    boundaries,
    build_context,
    finetune_schedule,
    place,
    recommend,
    rules_markdown,
    thresholds_markdown,
)
from advisor.measure.models import DatasetProfile, Interval, SimilarityReport

DOC = Path(__file__).resolve().parents[1] / "docs" / "decision-rules.md"

TAPS = [
    *(TapInfo(name=f"stage{i}", channels=16 * i, stride=2**i) for i in range(1, 6)),
    TapInfo(name="pre_logits", channels=1280),
]
TAPS_3 = [*(TapInfo(name=f"stage{i}", channels=16 * i, stride=2**i) for i in range(1, 4)), TapInfo(name="pre_logits", channels=64)]
TAPS_4 = [*(TapInfo(name=f"stage{i}", channels=16 * i, stride=2**i) for i in range(1, 5)), TapInfo(name="pre_logits", channels=64)]

SIMILAR = (0.8, 0.7, 0.9)
DIFFERENT = (0.2, 0.1, 0.3)
SMALL = {f"c{i}": 50 for i in range(10)}
LARGE = {f"c{i}": 300 for i in range(10)}


def make_profile(
    per_class: dict[str, int] = SMALL,
    *,
    score: tuple[float, float, float] | None = SIMILAR,
    shift_pattern: str = "unknown",
    greyscale: float | None = None,
    median_side: int = 300,
    below_64: int = 0,
    cross_split: int = 0,
    conflicting: int = 0,
) -> DatasetProfile:
    """A profile whose derived counts (min, median, ratio, totals) follow from ``per_class``."""
    counts = list(per_class.values())
    train = sum(counts)
    val = max(1, train // 4)
    similarity = None
    if score is not None:
        value, low, high = score
        similarity = SimilarityReport(
            backbone="efficientnet_lite0",
            sample_size=200,
            bootstrap_rounds=100,
            seed=0,
            signals=[],
            shift_pattern=shift_pattern,
            score=Interval(value=value, low=low, high=high),
            method="synthetic",
        )
    total = train + val
    return DatasetProfile(
        dataset="synthetic",
        layout="class-folders",
        backbone="efficientnet_lite0",
        input_size=224,
        classes=list(per_class),
        num_classes=len(per_class),
        images_total=total,
        images_per_split={"train": train, "val": val},
        train_per_class=dict(per_class),
        train_images=train,
        train_per_class_min=min(counts),
        train_per_class_median=float(statistics.median(counts)),
        imbalance_ratio=max(counts) / min(counts) if min(counts) else float("inf"),
        sizes=SizeSummary(
            count=total,
            min_width=min(median_side, 32),
            min_height=min(median_side, 32),
            median_width=median_side,
            median_height=median_side,
            max_width=max(median_side, 800),
            max_height=max(median_side, 800),
            smaller_than={64: below_64, 128: below_64, 224: below_64},
        ),
        smaller_than_input=below_64,
        greyscale_share=None if greyscale is None else Interval(value=greyscale, low=greyscale, high=greyscale),
        cross_split_duplicates=cross_split,
        conflicting_label_duplicates=conflicting,
        similarity=similarity,
        split_source="stratified",
        split_seed=0,
    )


def with_class(base: dict[str, int], name: str, n: int) -> dict[str, int]:
    return {**base, name: n}


# (case id, profile, strategy, quadrant rule, every rule that fires, in order)
CASES = [
    ("small-similar", make_profile(SMALL, score=SIMILAR), "linear-probe", "R1", ["R1"]),
    ("small-different", make_profile(SMALL, score=DIFFERENT), "layer-probe", "R2", ["R2"]),
    ("large-similar", make_profile(LARGE, score=SIMILAR), "partial-finetune", "R3", ["R3"]),
    ("large-different", make_profile(LARGE, score=DIFFERENT), "full-finetune", "R4", ["R4"]),
    # R5 / R18: a tiny class overrides every quadrant with its column's probe, even a large, different dataset.
    ("tiny-small", make_profile({f"c{i}": 4 for i in range(6)}), "linear-probe", "R1", ["R1", "R5"]),
    ("tiny-small-different", make_profile({f"c{i}": 4 for i in range(6)}, score=DIFFERENT), "layer-probe", "R2", ["R2", "R18"]),
    ("tiny-large-different", make_profile(with_class(LARGE, "rare", 2), score=DIFFERENT), "layer-probe", "R4", ["R4", "R18", "R8", "R9"]),
    ("tiny-at-threshold", make_profile({f"c{i}": 5 for i in range(6)}), "linear-probe", "R1", ["R1"]),
    # R6 / R7: large, but the smallest class is too small to fine-tune on.
    ("few-large-similar", make_profile(with_class(LARGE, "rare", 19)), "linear-probe", "R3", ["R3", "R6", "R8", "R9"]),
    ("few-large-different", make_profile(with_class(LARGE, "rare", 19), score=DIFFERENT), "layer-probe", "R4", ["R4", "R7", "R8", "R9"]),
    ("few-at-threshold", make_profile(with_class(LARGE, "rare", 20)), "partial-finetune", "R3", ["R3", "R8", "R9"]),
    # R8 / R9: imbalance at and just below each threshold.
    ("imbalance-below", make_profile({"a": 59, "b": 20}), "linear-probe", "R1", ["R1"]),
    ("imbalance-at", make_profile({"a": 60, "b": 20}), "linear-probe", "R1", ["R1", "R8"]),
    ("severe-below", make_profile({"a": 99, "b": 10}), "linear-probe", "R1", ["R1", "R8"]),
    ("severe-at", make_profile({"a": 100, "b": 10}), "linear-probe", "R1", ["R1", "R8", "R9"]),
    # R10: input-level shift from greyscale, low resolution or the BN shift pattern.
    ("greyscale-at", make_profile(greyscale=0.5), "linear-probe", "R1", ["R1", "R10"]),
    ("greyscale-below", make_profile(greyscale=0.49), "linear-probe", "R1", ["R1"]),
    ("low-res", make_profile(median_side=48, below_64=600), "linear-probe", "R1", ["R1", "R10"]),
    ("low-res-half", make_profile(median_side=64, below_64=312), "linear-probe", "R1", ["R1"]),
    ("input-level-pattern", make_profile(LARGE, score=DIFFERENT, shift_pattern="input-level"), "full-finetune", "R4", ["R4", "R10"]),
    ("semantic-pattern", make_profile(LARGE, score=DIFFERENT, shift_pattern="semantic"), "full-finetune", "R4", ["R4"]),
    # R11 / R12: duplicates.
    ("cross-split-dups", make_profile(cross_split=3), "linear-probe", "R1", ["R1", "R11"]),
    ("conflicting-dups", make_profile(conflicting=2), "linear-probe", "R1", ["R1", "R12"]),
    # R13: the interval straddles the similarity threshold (either side of the point estimate).
    ("straddle-similar", make_profile(score=(0.55, 0.45, 0.65)), "linear-probe", "R1", ["R1", "R13"]),
    ("straddle-different", make_profile(LARGE, score=(0.45, 0.35, 0.55)), "full-finetune", "R4", ["R4", "R13"]),
    ("interval-low-at-threshold", make_profile(score=(0.6, 0.5, 0.7)), "linear-probe", "R1", ["R1"]),
    ("interval-high-at-threshold", make_profile(score=(0.45, 0.4, 0.5)), "layer-probe", "R2", ["R2", "R13"]),
    # R14: similarity unmeasured counts as similar.
    ("no-similarity-small", make_profile(score=None), "linear-probe", "R1", ["R1", "R14"]),
    ("no-similarity-large", make_profile(LARGE, score=None), "partial-finetune", "R3", ["R3", "R14"]),
    # Exact size boundaries: median per class and total both at threshold, then each just below.
    ("size-at-threshold", make_profile({f"c{i}": 110 for i in range(5)}), "partial-finetune", "R3", ["R3"]),
    (
        "median-just-below",
        make_profile({**{f"a{i}": 109 for i in range(5)}, **{f"b{i}": 110 for i in range(5)}}),
        "linear-probe",
        "R1",
        ["R1"],
    ),
    # With two or more classes at 110 the total is at least 220: only one class can miss 175.
    ("total-just-below", make_profile({"c0": 174}), "linear-probe", "R1", ["R1"]),
    ("total-at-threshold", make_profile({"c0": 175}), "partial-finetune", "R3", ["R3"]),
    # R15 / R16 are retired: an epoch cap, even a short one, no longer changes the strategy
    # (LARGE: 3000 images, a 24-epoch schedule; 6 epochs is 25 %, below min_schedule_fraction 0.26).
    ("budget-short-similar", make_profile(LARGE), "partial-finetune", "R3", ["R3"], 6),
    ("budget-short-different", make_profile(LARGE, score=DIFFERENT), "full-finetune", "R4", ["R4"], 6),
    ("budget-enough", make_profile(LARGE, score=DIFFERENT), "full-finetune", "R4", ["R4"], 7),
    ("budget-small-data", make_profile(SMALL, score=DIFFERENT), "layer-probe", "R2", ["R2"], 1),
    ("budget-after-few", make_profile(with_class(LARGE, "rare", 19), score=DIFFERENT), "layer-probe", "R4",
     ["R4", "R7", "R8", "R9"], 1),
    # Exact similarity boundary.
    ("similarity-at-threshold", make_profile(LARGE, score=(0.5, 0.5, 0.6)), "partial-finetune", "R3", ["R3"]),
    ("similarity-just-below", make_profile(LARGE, score=(0.4999, 0.4, 0.4999)), "full-finetune", "R4", ["R4"]),
]


@pytest.mark.parametrize(("profile", "strategy", "quadrant", "fired", "epochs_cap"), [(*c[1:], *([None] * (6 - len(c))))
                         for c in CASES], ids=[c[0] for c in CASES])
def test_rule_table(profile, strategy, quadrant, fired, epochs_cap):
    rec = recommend(profile, taps=TAPS, epochs_cap=epochs_cap)
    assert rec.epochs_cap == epochs_cap
    assert (rec.strategy, rec.quadrant_rule) == (strategy, quadrant)
    assert [hit.id for hit in rec.hits] == fired
    assert rec.plan.strategy == strategy
    assert rec.plan.rule_ids == fired


def test_median_and_total_exact_values_of_boundary_profiles():
    # The boundary cases above only test what they claim if the factory derives these numbers.
    t = Thresholds()
    assert (t.large_per_class, t.large_total) == (110, 175)  # the calibrated values these cases sit on
    at = make_profile({f"c{i}": 110 for i in range(5)})
    assert (at.train_per_class_median, at.train_images) == (110.0, 550)
    below = make_profile({**{f"a{i}": 109 for i in range(5)}, **{f"b{i}": 110 for i in range(5)}})
    assert below.train_per_class_median == 109.5 and below.train_images >= 175
    assert make_profile({"c0": 174}).train_images == 174


def test_place_returns_the_cell():
    assert place(make_profile(SMALL, score=SIMILAR)) == ("small", "similar")
    assert place(make_profile(LARGE, score=DIFFERENT)) == ("large", "different")
    assert place(make_profile(LARGE, score=None)) == ("large", "similar")
    assert place(make_profile(SMALL), Thresholds(large_per_class=50, large_total=500)) == ("large", "similar")
    assert place(make_profile(SMALL, score=SIMILAR), Thresholds(similarity=0.81)) == ("small", "different")


# --------------------------------------------------------------------------- plans


def test_linear_probe_plan():
    plan = recommend(make_profile(SMALL), taps=TAPS, seed=7, val_fraction=0.2).plan
    assert plan.taps == ["pre_logits"]
    assert plan.frozen_stages is None and plan.trainable_stages is None and plan.recipe is None  # probes train no backbone
    assert (plan.seed, plan.val_fraction, plan.batch_size, plan.input_size) == (7, 0.2, 32, 224)


def test_layer_probe_sweeps_the_calibrated_stages_and_pre_logits():
    plan = recommend(make_profile(SMALL, score=DIFFERENT), taps=TAPS).plan
    assert plan.taps == ["stage4", "stage5", "pre_logits"]
    wider = recommend(make_profile(SMALL, score=DIFFERENT), taps=TAPS, thresholds=Thresholds(probe_stages=3)).plan
    assert wider.taps == ["stage3", "stage4", "stage5", "pre_logits"]


def test_layer_probe_on_a_three_stage_backbone_sweeps_all_stages():
    plan = recommend(make_profile(SMALL, score=DIFFERENT, greyscale=0.9), taps=TAPS_3).plan
    assert plan.taps == ["stage1", "stage2", "stage3", "pre_logits"]  # no earlier tap to add


def test_partial_finetune_freezes_the_calibrated_share_of_stages():
    plan = recommend(make_profile(LARGE), taps=TAPS).plan
    assert (plan.frozen_stages, plan.trainable_stages) == (2, 3)  # round(0.4 * 5)
    assert plan.recipe.lr_head == 1e-3 and plan.recipe.backbone_lr == pytest.approx(1e-4)
    assert plan.recipe.warmup_epochs == 1 and plan.taps == [] and plan.recipe.drop_path == 0
    assert plan.recipe.early_stopping.policy == "none"  # the schedule runs to its end
    assert (recommend(make_profile(LARGE), taps=TAPS_3).plan.frozen_stages) == 1  # round(1.2)
    assert (recommend(make_profile(LARGE), taps=TAPS_4).plan.frozen_stages) == 2  # round(1.6)
    deeper = recommend(make_profile(LARGE), taps=TAPS, thresholds=Thresholds(frozen_fraction=0.6)).plan
    assert deeper.frozen_stages == 3  # round(3.0)


def test_full_finetune_trains_every_stage_with_smaller_backbone_lr():
    plan = recommend(make_profile(LARGE, score=DIFFERENT), taps=TAPS).plan
    assert (plan.frozen_stages, plan.trainable_stages) == (0, 5)
    assert plan.recipe.backbone_lr == pytest.approx(plan.recipe.lr_head / 10)
    assert plan.recipe.drop_path > 0  # stochastic depth only where every stage trains
    assert any("AdamW" in note for note in plan.notes)


@pytest.mark.parametrize(
    ("n", "steps", "epochs"),
    [(50, 300, 30), (1000, 1265, 30), (3000, 2191, 24), (5000, 2828, 19), (10_000, 3000, 10), (100_000, 3000, 3)],
)
def test_finetune_schedule(n, steps, epochs):
    assert finetune_schedule(n) == (steps, epochs)


def test_finetune_epochs_follow_the_schedule():
    profile = make_profile({f"c{i}": 500 for i in range(10)})
    plan = recommend(profile, taps=TAPS).plan
    assert plan.recipe.epochs == finetune_schedule(5000)[1] == 19


def test_schedule_rejects_empty_training_set():
    with pytest.raises(AdvisorError, match="got 0"):
        finetune_schedule(0)


def test_override_replaces_quadrant_plan_fields():
    plan = recommend(make_profile(with_class(LARGE, "rare", 19)), taps=TAPS).plan
    assert plan.strategy == "linear-probe"
    assert plan.taps == ["pre_logits"] and plan.frozen_stages is None and plan.recipe is None
    assert not any("AdamW" in note for note in plan.notes)


def test_fallback_to_layer_probe_sweeps_taps():
    plan = recommend(make_profile(with_class(LARGE, "rare", 19), score=DIFFERENT), taps=TAPS).plan
    assert plan.taps == ["stage4", "stage5", "pre_logits"]


def test_imbalance_modifiers_set_plan_flags():
    mild = recommend(make_profile({"a": 60, "b": 20}), taps=TAPS).plan
    assert (mild.class_weighting, mild.balanced_sampler) == (True, False)
    severe = recommend(make_profile({"a": 100, "b": 10}), taps=TAPS).plan
    assert (severe.class_weighting, severe.balanced_sampler) == (True, True)
    balanced = recommend(make_profile({"a": 59, "b": 20}), taps=TAPS).plan
    assert (balanced.class_weighting, balanced.balanced_sampler) == (False, False)


def test_input_shift_keeps_bn_statistics_for_finetunes():
    for score in (SIMILAR, DIFFERENT):
        plan = recommend(make_profile(LARGE, score=score, greyscale=0.7), taps=TAPS).plan
        assert plan.recipe.bn == "frozen" and "R10" in plan.rule_ids  # re-estimating BN measured worse
        assert any("replicated to 3 channels" in note for note in plan.notes)
        assert any("keeps ImageNet's statistics" in note for note in plan.notes)
    assert "R10" not in recommend(make_profile(LARGE), taps=TAPS).plan.rule_ids


def test_input_shift_adds_an_earlier_tap_to_the_layer_probe():
    plan = recommend(make_profile(SMALL, score=DIFFERENT, median_side=40, below_64=600), taps=TAPS).plan
    assert plan.taps == ["stage3", "stage4", "stage5", "pre_logits"]
    assert plan.recipe is None
    assert any("upsampled to 224 px" in note for note in plan.notes)


def test_input_shift_on_a_linear_probe_only_adds_notes():
    plan = recommend(make_profile(SMALL, greyscale=0.8), taps=TAPS).plan
    assert plan.taps == ["pre_logits"] and plan.recipe is None
    assert any("layer probe" in note for note in plan.notes)


def test_greyscale_falls_back_to_single_channel_files():
    profile = make_profile(SMALL).model_copy(update={"greyscale_by_mode": 400})
    rec = recommend(profile, taps=TAPS)
    assert "R10" in rec.plan.rule_ids
    assert "64% of images are greyscale" in next(h.rationale for h in rec.hits if h.id == "R10")


# --------------------------------------------------------------------------- reports


def test_warnings_cite_counts():
    rec = recommend(make_profile(cross_split=3, conflicting=2), taps=TAPS)
    text = " ".join(rec.warnings)
    assert "3 duplicate group(s) span train and val/test" in text and "optimistic" in text
    assert "2 duplicate group(s) carry different labels" in text and "label noise" in text


def test_tiny_class_warning_names_the_classes():
    rec = recommend(make_profile({**SMALL, "rare": 3, "odd": 1}), taps=TAPS)
    r5 = next(h for h in rec.hits if h.id == "R5")
    assert "odd (1), rare (3)" in r5.rationale
    assert r5.rationale in rec.warnings


def test_fallback_rationale_cites_smallest_class():
    rec = recommend(make_profile(with_class(LARGE, "rare", 19)), taps=TAPS)
    r6 = next(h for h in rec.hits if h.id == "R6")
    assert "smallest class (rare) has 19 training images, fewer than 20" in r6.rationale


def test_straddle_warning_names_the_other_strategy():
    rec = recommend(make_profile(score=(0.55, 0.45, 0.65)), taps=TAPS)
    r13 = next(h for h in rec.hits if h.id == "R13")
    assert "[0.45, 0.65]" in r13.rationale and "0.50" in r13.rationale
    assert "becomes layer-probe instead of linear-probe" in r13.rationale


def test_straddle_warning_with_tiny_classes_names_the_other_columns_probe():
    # R5 and R18 follow the similarity column, so a tiny class no longer makes the axis irrelevant.
    rec = recommend(make_profile({f"c{i}": 4 for i in range(6)}, score=(0.55, 0.45, 0.65)), taps=TAPS)
    r13 = next(h for h in rec.hits if h.id == "R13")
    assert "becomes layer-probe instead of linear-probe" in r13.rationale


def test_missing_similarity_warning():
    rec = recommend(make_profile(score=None), taps=TAPS)
    assert rec.similarity_class == "similar"
    assert any("could not be measured" in w and "layer-probe" in w for w in rec.warnings)
    assert [b.axis for b in rec.boundaries] == ["size", "size"]


def test_quadrant_rationale_cites_numbers_and_thresholds():
    rec = recommend(make_profile(SMALL, score=DIFFERENT), taps=TAPS)
    text = rec.hits[0].rationale
    assert "50 training images per class, large from 110" in text
    assert "500 in total, large from 175" in text
    assert "similarity score 0.20 [0.10, 0.30] < 0.50" in text
    assert "stage4, stage5, pre_logits" in text


@pytest.mark.parametrize("profile", [make_profile(LARGE, greyscale=0.3, cross_split=1), make_profile(SMALL, score=None)])
def test_every_rationale_formats(profile):
    ctx = build_context(profile, taps=TAPS)
    for rule in RULES:
        text = rule.explain(ctx)
        assert text and not re.search(r"\{\w+", text), (rule.id, text)


def test_rule_ids_unique_strategies_known_and_order_grouped():
    ids = [r.id for r in RULES]
    # IDs are stable: rules added later take new numbers and sit in their kind's group.
    assert ids == ["R1", "R2", "R3", "R4", "R5", "R18", "R6", "R7", "R15", "R16", "R8", "R9", "R10", "R17",
                   *(f"R{i}" for i in range(11, 15)), "R19"]
    order = ["quadrant", "override", "modifier", "warning"]
    kinds = [order.index(r.kind) for r in RULES]
    assert kinds == sorted(kinds)
    for rule in RULES:
        assert (rule.strategy in STRATEGIES) if rule.kind in ("quadrant", "override") else rule.strategy is None
    assert {r.strategy for r in RULES if r.kind == "quadrant"} == set(STRATEGIES)


def test_rule_templates_use_only_context_values():
    names = set(build_context(make_profile(), taps=TAPS).values())
    for rule in RULES:
        used = {field for _, field, _, _ in string.Formatter().parse(rule.rationale) if field}
        assert used <= names, (rule.id, used - names)


def test_retired_budget_rules_keep_their_ids_never_fire_and_say_why():
    retired = {r.id: r for r in RULES if r.retired}
    assert set(retired) == {"R15", "R16"}
    ctx = build_context(make_profile(LARGE, score=DIFFERENT), taps=TAPS, epochs_cap=1)
    assert not any(r.condition(ctx) for r in retired.values())
    rec = recommend(make_profile(LARGE, score=DIFFERENT), taps=TAPS, epochs_cap=4)
    assert rec.strategy == "full-finetune" and rec.epochs_cap == 4
    assert "R16" not in rec.plan.rule_ids
    table = rules_markdown()
    assert "| R16 | override (retired) |" in table and "--budget" in table
    with pytest.raises(AdvisorError, match="at least 1; got 0"):
        recommend(make_profile(LARGE), taps=TAPS, epochs_cap=0)


def test_exactly_one_quadrant_and_at_most_one_override_fire():
    for _, profile, *rest in CASES:
        ctx = build_context(profile, taps=TAPS, epochs_cap=rest[3] if len(rest) > 3 else None)
        assert sum(r.condition(ctx) for r in RULES if r.kind == "quadrant") == 1
        assert sum(r.condition(ctx) for r in RULES if r.kind == "override") <= 1


def test_recommendation_fields_and_json_round_trip():
    rec = recommend(make_profile(score=None, cross_split=1), taps=TAPS)
    assert rec.plan.rule_ids == [h.id for h in rec.hits]
    assert rec.thresholds == Thresholds().model_dump()
    assert rec.evidence_notes == []
    assert Recommendation.model_validate_json(rec.model_dump_json()) == rec


# --------------------------------------------------------------------------- boundaries


# The boundary mechanics are tested under the provisional thresholds, whose round numbers make
# the expected margins easy to read; the calibrated ones are covered by the rule table above.
PROVISIONAL = Thresholds(large_per_class=200, large_total=1000, probe_stages=3, frozen_fraction=0.6)


def test_size_boundary_notes_name_the_flipped_strategy():
    notes = boundaries(make_profile({f"c{i}": 100 for i in range(5)}), thresholds=PROVISIONAL)
    size = [n for n in notes if n.axis == "size"]
    assert [(n.value, n.threshold) for n in size] == [(100, 200), (500, 1000)]
    assert "0.50x the threshold" in size[0].margin
    assert size[0].flip == "with >= 200 training images per class and >= 1000 in total this becomes partial-finetune"


def test_size_boundary_lists_only_the_unmet_criterion():
    notes = boundaries(make_profile({f"c{i}": 333 for i in range(3)}), thresholds=PROVISIONAL)
    assert notes[0].flip == "with >= 1000 in total this becomes partial-finetune"
    assert "1.67x the threshold" in notes[0].margin and "0.50x" not in notes[0].margin


def test_size_boundary_from_large_side():
    notes = boundaries(make_profile(LARGE, score=DIFFERENT), thresholds=PROVISIONAL)
    assert "1.50x the threshold (300 vs 200, at or above)" in notes[0].margin
    assert notes[0].flip.endswith("this becomes layer-probe")


def test_size_boundary_mentions_an_override_that_still_applies():
    notes = boundaries(make_profile({f"c{i}": 4 for i in range(6)}))
    assert "the table says partial-finetune, but R5 would still give linear-probe" in notes[0].flip


def test_size_boundary_says_when_the_strategy_stays():
    # Large and similar, but R6 already falls back to the linear probe that the small side gives.
    notes = boundaries(make_profile(with_class(LARGE, "rare", 19)))
    assert notes[0].flip.endswith("in total this stays linear-probe")


def test_input_shift_rationale_names_the_action_per_strategy():
    def r10(profile, taps=TAPS, thresholds=None):
        return next(h.rationale for h in recommend(profile, taps=taps, thresholds=thresholds).hits if h.id == "R10")

    assert "BatchNorm statistics are not re-estimated" in r10(make_profile(LARGE, greyscale=0.9))
    assert "also sweeps an earlier tap (stage3)" in r10(make_profile(SMALL, score=DIFFERENT, greyscale=0.9))
    assert "also sweeps an earlier tap (stage1)" in r10(make_profile(SMALL, score=DIFFERENT, greyscale=0.9), TAPS_3)
    assert "already sweeps every stage" in r10(make_profile(SMALL, score=DIFFERENT, greyscale=0.9), TAPS_3, PROVISIONAL)
    assert "cannot correct it" in r10(make_profile(SMALL, greyscale=0.9))
    assert "90% of images are greyscale, threshold 50%" in r10(make_profile(SMALL, greyscale=0.9))


def test_similarity_boundary_note():
    note = boundaries(make_profile(LARGE, score=(0.55, 0.45, 0.65)))[-1]
    assert note.axis == "similarity" and (note.value, note.threshold) == (0.55, 0.5)
    assert "straddles" in note.margin
    assert note.flip == "with a score below 0.50 the data is different and this becomes full-finetune"
    clear = boundaries(make_profile(SMALL, score=DIFFERENT))[-1]
    assert "0.30 below the threshold" in clear.margin
    assert clear.flip.endswith("becomes linear-probe")


def test_custom_thresholds_are_used_and_reported():
    t = Thresholds(large_per_class=40, large_total=400)
    rec = recommend(make_profile(SMALL), taps=TAPS, thresholds=t)
    assert rec.strategy == "partial-finetune"
    assert rec.thresholds["large_per_class"] == 40
    assert "large from 40" not in rec.hits[0].rationale and ">= 40" in rec.hits[0].rationale


# --------------------------------------------------------------------------- errors


def test_thresholds_validate():
    with pytest.raises(ValidationError, match="severe_imbalance must be >= imbalance; got severe_imbalance=2.0"):
        Thresholds(severe_imbalance=2.0)
    with pytest.raises(ValidationError):
        Thresholds(similarity=1.5)
    with pytest.raises(ValidationError):
        Thresholds(typo=1)
    with pytest.raises(ValidationError):
        Thresholds().similarity = 0.7  # frozen


def test_recommend_requires_pre_logits_tap():
    with pytest.raises(AdvisorError, match=r"must include 'pre_logits'; got \['stage1'\]"):
        recommend(make_profile(), taps=[TapInfo(name="stage1", channels=8, stride=2)])


# --------------------------------------------------------------------------- docs


def test_docs_list_every_rule_and_threshold():
    doc = DOC.read_text()
    for rule in RULES:
        assert f"| {rule.id} |" in doc, rule.id
    hint = "regenerate the tables with rules_markdown() / thresholds_markdown()"
    assert rules_markdown() in doc, hint
    assert thresholds_markdown() in doc, hint
    assert "## Calibration on ../shared/data" in doc


def test_r19_warns_when_the_validation_split_cannot_resolve_strategies():
    # 10 classes x 2 validation images at a CV of 0.8: the Wilson 95 % half-width is ~16 points.
    small_val = make_profile().model_copy(update={"images_per_split": {"train": 500, "val": 20},
                                                  "probe_cv": {"pre_logits": 0.8}, "split_source": "folders"})
    ctx = build_context(small_val, taps=TAPS)
    assert small_val.val_images == 20 and ctx.val_half_width == pytest.approx(0.16, abs=0.01)
    rec = recommend(small_val, taps=TAPS)
    assert "R19" in [h.id for h in rec.hits]
    text = next(w for w in rec.warnings if "validation images" in w)
    assert "20 validation images pin an accuracy near 80% to +-16." in text and "over +-5" in text
    assert text.endswith("move more images into it.")  # the split of the user's folders
    carved = recommend(small_val.model_copy(update={"split_source": "stratified"}), taps=TAPS)
    assert next(w for w in carved.warnings if "validation images" in w).endswith("raise --val-fraction.")
    # 2,000 validation images resolve a 0.8 to +-1.8 points. A test split does not help: strategies are compared on
    # the validation split (the test split is scored once, at the end of the run).
    big_val = small_val.model_copy(update={"images_per_split": {"train": 500, "val": 2000, "test": 1000}})
    assert big_val.val_images == 2000 and big_val.test_images == 1000
    assert "R19" not in [h.id for h in recommend(big_val, taps=TAPS).hits]
    big_test = small_val.model_copy(update={"images_per_split": {"train": 500, "val": 20, "test": 2000}})
    assert big_test.val_images == 20 and "R19" in [h.id for h in recommend(big_test, taps=TAPS).hits]
    # A perfect CV on 60 images: the interval is one-sided and narrow (Wilson, not +-0): no warning at 0.05.
    sure = small_val.model_copy(update={"images_per_split": {"train": 500, "val": 80}, "probe_cv": {"pre_logits": 1.0}})
    assert build_context(sure, taps=TAPS).val_half_width < 0.05
    # Without a probe CV the level is unknown: no claim is made.
    assert not build_context(make_profile(), taps=TAPS).val_too_small
    # The threshold is the user's to move, like every other.
    loose = Thresholds(val_resolution=0.2)
    assert "R19" not in [h.id for h in recommend(small_val, taps=TAPS, thresholds=loose).hits]


def test_a_plan_switched_to_another_strategy_keeps_the_users_batch_and_scales_its_fresh_recipe():
    from advisor.decide.rules.engine import plan_for_strategy

    rec = recommend(make_profile(SMALL, score=SIMILAR), taps=TAPS)
    assert rec.plan.recipe is None  # a probe: the table's small x similar cell
    rec.plan = rec.plan.with_batch_size(16)
    for name in ("partial-finetune", "full-finetune"):
        plan = plan_for_strategy(rec, name, taps=TAPS)
        # the builder's default recipe (lr 1e-3 for batch 32) moved to batch 16, as --batch-size moves any plan
        assert plan.batch_size == 16 and plan.recipe.lr_head == pytest.approx(1e-3 * 0.5 ** 0.5)
        assert plan.recipe.backbone_lr == pytest.approx(1e-4 * 0.5 ** 0.5)
    assert plan_for_strategy(rec, "layer-probe", taps=TAPS).batch_size == 16
