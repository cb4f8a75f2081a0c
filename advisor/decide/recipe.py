"""The fine-tune recipe: every training choice of a fine-tune, in one pydantic model.

The rules choose a strategy and its modifiers; the recipe says how a fine-tune trains. It is
stored in the plan (``plan.json`` shows every value that ran), built by :func:`default_recipe`
and nowhere else, so a value changes in one place.

Defaults follow current public fine-tuning practice (timm's and torchvision's reference
recipes, LP-FT), adjusted where a measurement on the shared datasets said so
(``docs/finetune.md`` gives the measurements):

* AdamW, head learning rate 1e-3, backbone a tenth of it, weight decay 0.05 on weights only
  (none on norms and biases), linear warm-up then cosine to zero, gradient norm clipped at 1;
* label smoothing 0.1; RandomResizedCrop + TrivialAugmentWide; horizontal flips unless the
  profiler measured that they change labels (R17);
* an exponential moving average of the weights (EMA), whose weights are the ones reported;
* drop-path (stochastic depth) 0.1 in trainable blocks of a full fine-tune;
* BatchNorm: ``frozen`` by default (ImageNet statistics, eval mode; the affine weights still
  train), ``adapt`` (re-estimated on the new data once, then frozen) or ``train`` (batch
  statistics in trainable stages, re-estimated first). Measured on EuroSAT at 64 px, 5 epochs of
  a full fine-tune: frozen 0.924, train 0.840; mnist-small, 3 epochs: frozen 0.903, adapt 0.780
  (docs/finetune.md);
* no early stopping by default: the schedule runs to its end. Early stopping, when asked for,
  watches a stratified hold-out slice of the training split, never the reported validation split.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from advisor.core.errors import AdvisorError

BNPolicy = Literal["frozen", "adapt", "train"]
AugmentPolicy = Literal["none", "crop", "trivial"]
StopPolicy = Literal["none", "holdout"]

# The schedule: optimiser steps grow like sqrt(N); epochs follow from them (see finetune_schedule).
BATCH_SIZE = 32
STEPS_PER_SQRT_IMAGE = 40
MIN_STEPS, MAX_STEPS = 300, 3000
MIN_EPOCHS, MAX_EPOCHS = 3, 30


class EarlyStopping(BaseModel):
    """When a fine-tune may stop before its schedule ends, and on which data it decides."""

    model_config = ConfigDict(extra="forbid")

    policy: StopPolicy = "none"
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5)  # of each training class, stratified
    holdout_seed: int = 0
    patience: int | None = Field(None, ge=1)  # epochs without a better hold-out result; None: run to the end


EPOCHS_LIMIT = 1000  # the command line's --epochs limit, and a plan file's
MIN_BATCH, MAX_BATCH = 2, 4096  # --batch-size's limits, and a plan file's (BatchNorm needs two images)


class FinetuneRecipe(BaseModel):
    """How a fine-tune trains. Every field is saved in ``plan.json`` and in the checkpoint."""

    # A plan file is input: the command line's limits hold for it too (no NaN or infinity anywhere).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(10, ge=1, le=EPOCHS_LIMIT)
    warmup_epochs: int = Field(1, ge=0, le=EPOCHS_LIMIT)
    lr_head: float = Field(1e-3, gt=0, le=10)
    lr_backbone: float | None = Field(None, gt=0, le=10)  # None: lr_head / 10
    layer_decay: float = Field(1.0, gt=0, le=1)  # backbone lr x layer_decay ** (depth below the top)
    weight_decay: float = Field(0.05, ge=0, le=10)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment: AugmentPolicy = "trivial"
    crop_scale: float = Field(0.25, gt=0, le=1)  # RandomResizedCrop's smallest area share
    hflip: bool = True
    bn: BNPolicy = "frozen"
    ema: float | None = Field(0.1, gt=0, le=1)  # EMA window as a share of all steps; None: no EMA
    drop_path: float = Field(0.0, ge=0, lt=1)
    grad_clip: float | None = Field(1.0, gt=0, le=1e6)
    head_warmup: bool = True  # LP-FT: the head starts as a probe on the features training starts from
    head_l2: float | None = Field(None, ge=0, le=1e9)  # None: chosen by cross-validation on the training split
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)

    @model_validator(mode="after")
    def _warmup_fits(self) -> FinetuneRecipe:
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs must be below epochs; got warmup_epochs={self.warmup_epochs}, epochs={self.epochs}")
        return self

    @property
    def backbone_lr(self) -> float:
        return self.lr_backbone if self.lr_backbone is not None else self.lr_head / 10

    def ema_decay(self, total_steps: int) -> float | None:
        """Per-step decay for an averaging window of ``ema x total_steps`` steps (None: no EMA)."""
        if self.ema is None:
            return None
        window = max(1.0, self.ema * total_steps)
        return 1.0 - 1.0 / window


def finetune_schedule(train_images: int, *, batch_size: int = BATCH_SIZE) -> tuple[int, int]:
    """(optimizer steps, epochs) of a fine-tune: steps grow like sqrt(N), epochs follow from them.

    steps = clamp(40 * sqrt(N), 300, 3000); epochs = clamp(ceil(steps * batch / N), 3, 30).
    """
    if train_images < 1:
        raise AdvisorError(f"a fine-tune schedule needs at least 1 training image; got {train_images}")
    steps = int(min(MAX_STEPS, max(MIN_STEPS, round(STEPS_PER_SQRT_IMAGE * math.sqrt(train_images)))))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(steps * batch_size / train_images)))
    return steps, epochs


# The learning curve's validation pass each epoch reads at most this many images more than the
# training split has (see curve_images): about 2.5 points of binomial error at 80 % accuracy.
CURVE_MIN_IMAGES = 256


def curve_images(val_images: int, train_images: int) -> int:
    """Validation images a fine-tune's learning curve evaluates each epoch: the whole split unless it outweighs training.

    A training image costs about three forward passes (forward and backward), so a curve pass over
    at most ``max(train_images, CURVE_MIN_IMAGES)`` images costs at most about a quarter of the
    epoch (more only at the floor, which keeps the curve readable). With 10 training images and
    864 validation images, every epoch otherwise spent nine tenths of its time on the curve. The
    reported accuracy always comes from the whole split, evaluated once at the end; nothing is
    selected on the curve.
    """
    return max(0, min(val_images, max(train_images, CURVE_MIN_IMAGES)))


def default_recipe(train_images: int, *, full: bool, hflip: bool = True, bn: BNPolicy = "frozen") -> FinetuneRecipe:
    """The recipe the rules put in a fine-tune's plan: the schedule for ``train_images`` plus the defaults.

    ``full`` adds drop-path (every stage trains); ``hflip`` is False when flips change labels (R17);
    ``bn`` is the BatchNorm policy (R10 may ask for re-estimated statistics).
    """
    _, epochs = finetune_schedule(train_images) if train_images > 0 else (0, 10)
    return FinetuneRecipe(epochs=epochs, warmup_epochs=1 if epochs > 1 else 0, drop_path=0.1 if full else 0.0,
                          hflip=hflip, bn=bn)
