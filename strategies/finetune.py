"""``partial-finetune`` and ``full-finetune``: one training loop, two freezing policies.

How a fine-tune trains is its :class:`~advisor.decide.recipe.FinetuneRecipe` (one source, saved in the
plan). A fit runs, in order:

1. BatchNorm set-up by the recipe's ``bn`` policy:
   ``frozen``: every BN keeps ImageNet's running statistics and runs in eval mode throughout;
   ``adapt``: every BN's statistics are re-estimated on the training images (AdaBN), then frozen;
   ``train``: the BN layers of trainable stages normalise with batch statistics during training,
   as usual; their running statistics are re-estimated on the training images first, so that
   evaluation and the warm-up see the same normalisation the first training steps use.
2. (``head_warmup``) LP-FT (Kumar et al. 2022): the new head starts as a linear probe on the
   pooled ``pre_logits`` features that the network *as training starts* produces (ImageNet BN
   statistics under ``frozen``, from the cache; re-estimated ones otherwise, in the same pass
   that re-estimates them under ``train``), at an L2 chosen by cross-validation on the
   training split. The feature standardiser fitted here (per-feature mean, one shared scale)
   stays fixed during fine-tuning.
3. Fine-tuning: the stem and the first ``frozen_stages`` stages frozen, AdamW with head and
   backbone learning rates (optionally layer-wise decayed), linear warm-up then cosine to zero,
   label smoothing, gradient clipping, drop-path, augmentation by the recipe, and an EMA of the
   weights. The schedule runs to its end and the final (EMA) weights are reported, unless the
   recipe asks for early stopping: then a stratified hold-out slice of the *training* split
   (seed recorded) picks the epoch. The validation split is evaluated every epoch for the
   learning curve only; nothing is selected on it.

The loop (:class:`strategies.loop.FinetuneLoop`) only trains, evaluates and keeps its position; steps 1-2, the
EMA, hold-out selection and checkpoints are small callbacks (``strategies/callbacks.py``).

Runs are exactly resumable: ``checkpoints/last.safetensors`` (written every epoch, every
``checkpoint_every_steps`` steps and on Ctrl-C) holds everything the loop depends on, and the
data order, augmentation and dropout noise are functions of ``(seed, epoch, step/index)``. On
CPU a resumed run ends with the same weights and metrics as an uninterrupted one.

Data: batches travel as uint8 and are normalised on the device; with several epochs each image
is decoded once into the cache folder (``advisor.data.decoded``) and read back. Training
crops come from the stored copy (shorter side up to twice the input size), evaluation crops
equal the eval transform's to the bit.

Precision: float32 on CPU, bfloat16 autocast on CUDA; channels_last memory format on both.
The caller's torch RNG state is left as it was (the fit runs in a forked RNG).
"""

from __future__ import annotations

from typing import Any

from advisor.backbones import Backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.decide.models import RunPlan
from strategies.base import RunContext, RunData, Strategy, register_strategy
from strategies.loop import FinetuneConfig, FinetuneLoop, FullFinetuneConfig, default_frozen_stages
from strategies.results import RunResult

__all__ = ["FinetuneConfig", "FullFinetune", "FullFinetuneConfig", "PartialFinetune", "default_frozen_stages"]


class _Finetune(Strategy):
    Config = FinetuneConfig

    def _frozen(self, config: FinetuneConfig, backbone: Backbone) -> int:
        stages = backbone.num_stages()
        return default_frozen_stages(stages) if config.frozen_stages is None else config.frozen_stages

    def _config_fields(self, plan: RunPlan) -> dict[str, Any]:
        recipe = plan.recipe.model_dump() if plan.recipe is not None else {}
        return dict(**recipe, batch_size=plan.batch_size, input_size=plan.input_size,
                    class_weighting=plan.class_weighting, balanced_sampler=plan.balanced_sampler)

    def fit(self, data: RunData, backbone: Backbone, config: FinetuneConfig, ctx: RunContext) -> tuple[RunResult, TransferClassifier]:
        config = self.Config.model_validate(config.model_dump()) if not isinstance(config, self.Config) else config
        return FinetuneLoop(self.name, data, backbone, config, self._frozen(config, backbone), ctx).fit()


@register_strategy("partial-finetune")
class PartialFinetune(_Finetune):
    """Fine-tune the deeper stages and a new head; the stem and the first ``frozen_stages`` stages stay frozen."""

    Config = FinetuneConfig

    def config_from_plan(self, plan: RunPlan) -> FinetuneConfig:
        # None stays None: the default depends on the backbone, which fit() sees.
        return FinetuneConfig(frozen_stages=plan.frozen_stages, **self._config_fields(plan))


@register_strategy("full-finetune")
class FullFinetune(_Finetune):
    """Fine-tune every backbone layer (stem included) and a new head."""

    Config = FullFinetuneConfig

    def config_from_plan(self, plan: RunPlan) -> FullFinetuneConfig:
        return FullFinetuneConfig(**self._config_fields(plan))
