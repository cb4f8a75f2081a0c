"""What each rule writes into the plan: the strategy's fields and the modifiers' changes."""

from __future__ import annotations

from typing import Any

from advisor.backbones import PRE_LOGITS
from advisor.decide.recipe import BATCH_SIZE, MAX_STEPS, MIN_STEPS, default_recipe, finetune_schedule
from advisor.decide.rules.context import RuleContext

_FINETUNE_NOTE = (
    "recipe (advisor/decide/recipe.py): the head starts as a cross-validated probe on the features training starts from; "
    "AdamW, backbone lr a tenth of the head's so pretrained weights move less; warm-up then cosine to zero; "
    "label smoothing, RandomResizedCrop + TrivialAugment, EMA weights reported; the schedule runs to its end"
)


def _schedule_note(ctx: RuleContext) -> str:
    steps, epochs = finetune_schedule(ctx.profile.train_images)
    return (
        f"schedule: {steps} optimizer steps = clamp(40*sqrt({ctx.profile.train_images}), "
        f"{MIN_STEPS}, {MAX_STEPS}), i.e. {epochs} epochs at batch {BATCH_SIZE}"
    )


def _probe_fields() -> dict[str, Any]:
    # Probes train on frozen cached features: no stage split, no training recipe.
    return {"frozen_stages": None, "trainable_stages": None, "recipe": None}


def _linear_probe_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        **_probe_fields(),
        "taps": [PRE_LOGITS],
        "notes": ["train a linear classifier on frozen pre_logits features"],
    }


def _layer_probe_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return {
        **_probe_fields(),
        "taps": list(ctx.layer_probe_taps),
        "notes": ["fit one linear classifier per tap on frozen features; keep the best on validation"],
    }


def _finetune_plan(ctx: RuleContext, frozen: int) -> dict[str, Any]:
    recipe = default_recipe(ctx.profile.train_images, full=frozen == 0)
    return {
        "taps": [],
        "frozen_stages": frozen,
        "trainable_stages": len(ctx.stage_taps) - frozen,
        "recipe": recipe.model_dump(),
        "notes": [_FINETUNE_NOTE, _schedule_note(ctx)],
    }


def _partial_finetune_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return _finetune_plan(ctx, ctx.frozen_stages)


def _full_finetune_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return _finetune_plan(ctx, 0)



def _input_shift_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
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


def _no_flip_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    if plan.get("recipe") is None:
        return {"notes": ["probes train on unaugmented features: nothing to change"]}
    return {"recipe": {**dict(plan["recipe"]), "hflip": False},
            "notes": ["no horizontal flips in the fine-tune's augmentation: they change labels here"]}


def _imbalance_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return {"class_weighting": True}


def _severe_imbalance_plan(ctx: RuleContext, plan: dict[str, Any]) -> dict[str, Any]:
    return {"balanced_sampler": True}
