"""Evaluate the rule table on a profile: the recommendation, its plan, its boundaries, and forced strategies."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from advisor.backbones import PRE_LOGITS, TapInfo
from advisor.core.errors import AdvisorError
from advisor.decide.models import BoundaryNote, Recommendation, RuleHit, RunPlan
from advisor.decide.recipe import BATCH_SIZE
from advisor.decide.rules.context import RuleContext, _greyscale_share, _low_resolution, _similarity_class, _size_class
from advisor.decide.rules.plans import (
    _full_finetune_plan,
    _layer_probe_plan,
    _linear_probe_plan,
    _partial_finetune_plan,
)
from advisor.decide.rules.table import RULES, Rule
from advisor.decide.rules.thresholds import Thresholds
from advisor.measure.models import DatasetProfile


def _resolve(ctx: RuleContext) -> tuple[Rule, str, Rule | None]:
    """(quadrant rule, final strategy, override rule or None): the strategy-setting rules only."""
    quadrant = next(r for r in RULES if r.kind == "quadrant" and r.condition(ctx))
    override = next((r for r in RULES if r.kind == "override" and r.condition(ctx)), None)
    chosen = override or quadrant
    assert chosen.strategy is not None
    return quadrant, chosen.strategy, override





def _fmt(x: float) -> str:
    return f"{x:g}" if x >= 100 or float(x).is_integer() else f"{x:.1f}"


def boundaries(profile: DatasetProfile, thresholds: Thresholds | None = None) -> list[BoundaryNote]:
    """How far the placement is from each boundary of the table, and what would flip it.

    Size gives two notes (per-class median and total, both needed for 'large'); similarity gives
    one when it was measured.
    """
    return _boundaries(build_context(profile, taps=(), thresholds=thresholds))


def _boundaries(ctx: RuleContext) -> list[BoundaryNote]:
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
    ``epochs_cap`` is the epoch cap the plan will run under, if the user set one (recorded; R15 and R16, which weighed it, are retired).
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


_STRATEGY_PLANS: dict[str, Callable[[RuleContext, dict[str, Any]], dict[str, Any]]] = {
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
    # The builders' recipes are set for the default batch: built there, then moved to the plan's batch (its lr scaled).
    fields = {**rec.plan.model_dump(), "strategy": strategy, "notes": [], "batch_size": BATCH_SIZE}
    fields.update(_STRATEGY_PLANS[strategy](ctx, dict(fields)))
    notes = [f"strategy forced to {strategy} by the user (the rules advised {rec.strategy})", *fields.pop("notes", [])]
    fired = set(rec.plan.rule_ids)
    for rule in RULES:
        if rule.kind == "modifier" and rule.id in fired and rule.plan is not None:
            update = rule.plan(ctx, dict(fields))
            notes += update.pop("notes", [])
            fields.update(update)
    plan = RunPlan(**{**fields, "rule_ids": [*rec.plan.rule_ids, "user"], "notes": notes})
    return plan.with_batch_size(rec.plan.batch_size)


def build_context(
    profile: DatasetProfile, *, taps: Sequence[TapInfo], thresholds: Thresholds | None = None,
    epochs_cap: int | None = None,
) -> RuleContext:
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
    ctx = RuleContext(
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
        strategy=_resolve(ctx)[1],
        similarity_flip_strategy=_resolve(dataclasses.replace(ctx, similarity_class=flip_sim))[1],
        size_flip_strategy=_resolve(dataclasses.replace(ctx, size_class=flip_size))[1],
    )
