"""``partial-finetune`` and ``full-finetune``: one training loop, two freezing policies.

How a fine-tune trains is its :class:`~advisor.recipe.FinetuneRecipe` (one source, saved in the
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

Runs are exactly resumable: ``checkpoints/last.safetensors`` (written every epoch, every
``checkpoint_every_steps`` steps and on Ctrl-C) holds everything the loop depends on, and the
data order, augmentation and dropout noise are functions of ``(seed, epoch, step/index)``. On
CPU a resumed run ends with the same weights and metrics as an uninterrupted one.

Precision: float32 on CPU, bfloat16 autocast on CUDA; channels_last memory format on both.
The caller's torch RNG state is left as it was (the fit runs in a forked RNG).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from advisor.backbones import PRE_LOGITS, Backbone
from advisor.classifier import TransferClassifier
from advisor.data import Sample
from advisor.errors import AdvisorError
from advisor.features import default_num_workers, extract_features
from advisor.images import ImageDataset, collate_skip, mix_seed
from advisor.logistic import Standardizer, class_weights_from, cv_select_l2, fit_logistic, fit_standardizer
from advisor.models import RunPlan
from advisor.recipe import FinetuneRecipe
from advisor.results import RunResult, classification_metrics
from advisor.rules import frozen_stages_for
from strategies.base import RunContext, RunData, Strategy, count_params, predictions_of, register_strategy
from strategies.training import (
    EarlyStopping,
    EpochBatchSampler,
    EvalTransform,
    TrainTransform,
    WeightEMA,
    defer_sigint,
    freeze_stages,
    get_rng_state,
    holdout_split,
    load_checkpoint,
    param_groups,
    reestimate_bn,
    save_checkpoint,
    set_drop_path,
    set_rng_state,
    steps_per_epoch,
    train_mode,
    trainable_bn_layers,
    trainable_names,
    warmup_cosine,
)

CHECKPOINT_FORMAT = "advisor-finetune-checkpoint-v3"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.safetensors"
# Settings that change how a run executes but not what it computes: a resume may differ in them.
_RESUME_FREE = frozenset({"num_workers", "checkpoint_every_steps"})


class FinetuneConfig(FinetuneRecipe):
    """A fine-tune's settings: the recipe plus what the run's data and machine decide."""

    model_config = ConfigDict(extra="forbid")

    frozen_stages: int | None = Field(default=None, ge=0)  # None: R3's calibrated share of the stages, at least one left trainable
    batch_size: int = Field(default=32, ge=2)
    input_size: int = Field(default=224, ge=16)
    class_weighting: bool = False
    balanced_sampler: bool = False
    checkpoint_every_steps: int = Field(default=50, ge=0)  # 0: only at epoch ends (and on Ctrl-C)
    num_workers: int | None = Field(default=None, ge=0)  # None: the run context's, else 0 on CPU, one per spare core on CUDA


class FullFinetuneConfig(FinetuneConfig):
    frozen_stages: Literal[0] = 0


def default_frozen_stages(stages: int) -> int:
    """The advisor's rule R3: round(frozen_fraction * stages), half up, at least one stage trainable."""
    return frozen_stages_for(stages)


@dataclass
class _Position:
    """Where the loop is: the epoch in progress and the optimizer steps done in it."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # training loss x images over the steps done in this epoch
    seen: int = 0


_CURVES = ("train_loss", "val_loss", "val_accuracy", "holdout_accuracy", "lr")


@dataclass
class _Run:
    """One fit: the loop and every piece of state a checkpoint must capture."""

    name: str
    data: RunData
    backbone: Backbone
    cfg: FinetuneConfig
    frozen: int
    ctx: RunContext
    pos: _Position = field(default_factory=_Position)
    stopper: EarlyStopping = field(default_factory=EarlyStopping)
    best_state: dict[str, torch.Tensor] | None = None
    curves: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in _CURVES})
    skipped: dict[str, str] = field(default_factory=dict)
    stopped_early: bool = False
    warmup: dict[str, Any] | None = None
    first_loss: float | None = None
    seconds_before: float = 0.0
    resumed: bool = False

    def __post_init__(self) -> None:
        cfg = self.cfg
        self.dev = torch.device(self.ctx.device)
        self.cuda = self.dev.type == "cuda"
        self.seed = self.ctx.seed
        nw = cfg.num_workers if cfg.num_workers is not None else self.ctx.num_workers
        self.extract_workers = nw  # None: the feature extractor's own default
        # Unset on a CPU: no loader processes. Training there is compute-bound (decoding a batch is a
        # few % of its forward/backward) and a worker competes with the compute threads for the
        # cores: full fine-tune, EfficientNet-Lite0, 224 px, 2 cores: 3.3 s/epoch with 0, 5.2 with 1.
        self.workers = nw if nw is not None else (default_num_workers() if self.cuda else 0)
        self.lr_backbone = cfg.backbone_lr
        # Early stopping decides on a stratified slice of the training split, never on the reported split.
        stop = cfg.early_stopping
        self.train_samples, self.holdout = list(self.data.train), []
        if stop.policy == "holdout":
            keep, held = holdout_split([s.label for s in self.data.train], stop.holdout_fraction, seed=stop.holdout_seed)
            if not held:
                raise AdvisorError("early stopping on a hold-out slice needs a class with at least 2 training images",
                                   hint="set the recipe's early_stopping.policy to none")
            self.train_samples = [self.data.train[i] for i in keep]
            self.holdout = [self.data.train[i] for i in held]
        self.steps_per_epoch = steps_per_epoch(len(self.train_samples), cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.path = self.ctx.run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
        self.stopper = EarlyStopping(stop.patience if stop.policy == "holdout" else None)
        self.num_classes = len(self.data.classes)
        self.labels = torch.tensor([s.label for s in self.train_samples], dtype=torch.long)
        # The loss is class-weighted unless batches are already class-balanced: both would over-correct.
        self.weight_loss = cfg.class_weighting and not cfg.balanced_sampler
        self.bn_train = cfg.bn == "train"
        self.ema: WeightEMA | None = None
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ the fit

    def fit(self) -> tuple[RunResult, TransferClassifier]:
        # Per-step reseeding would otherwise leave the caller's global RNG in a seed-dependent state.
        devices = [self.dev.index if self.dev.index is not None else torch.cuda.current_device()] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            return self._fit()

    def _fit(self) -> tuple[RunResult, TransferClassifier]:
        cfg, ctx = self.cfg, self.ctx
        if len(self.train_samples) < 2:
            raise AdvisorError("a fine-tune needs at least 2 training images")
        # Train, validation and the warm-up's features all use this input size.
        self.backbone = self.backbone.with_input_size(cfg.input_size)
        ckpt = self._read_checkpoint()
        model = self._build_model()
        if ckpt is None:
            try:
                self._prepare(model)
            except KeyboardInterrupt:
                ctx.event("interrupted", stage="setup")
                raise
        else:
            model.load_state_dict(ckpt["model"])
        optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_head, self.lr_backbone, cfg.weight_decay,
                                                   layer_decay=cfg.layer_decay))
        warmup_steps = min(cfg.warmup_epochs * self.steps_per_epoch, self.total_steps)
        scheduler = warmup_cosine(optimizer, warmup_steps, self.total_steps)
        decay = cfg.ema_decay(self.total_steps)
        self.ema = WeightEMA(model, decay) if decay is not None else None
        if ckpt is not None:
            self._restore(ckpt, model, optimizer, scheduler)

        sampler = EpochBatchSampler(len(self.train_samples), cfg.batch_size, seed=self.seed,
                                    weights=self._balanced_weights() if cfg.balanced_sampler else None)
        train_loader = self._loader(ImageDataset.from_samples(self.train_samples, self._train_transform(), seed=self.seed), sampler)
        val_loader = self._eval_loader(self.data.val)
        holdout_loader = self._eval_loader(self.holdout) if self.holdout else None
        loss_weights = class_weights_from(self.labels, self.num_classes).to(self.dev) if self.weight_loss else None
        try:
            while self.pos.epoch < cfg.epochs and not self.stopped_early:
                if self.pos.step < self.steps_per_epoch:
                    sampler.set_epoch(self.pos.epoch, self.pos.step)
                    self._train_epoch(model, optimizer, scheduler, train_loader, loss_weights)
                self._end_epoch(model, optimizer, scheduler, val_loader, holdout_loader)
        except KeyboardInterrupt:
            path = self._save(model, optimizer, scheduler)
            ctx.event("interrupted", stage="train", epoch=self.pos.epoch, step_in_epoch=self.pos.step,
                      global_step=self.pos.global_step, checkpoint=str(path))
            raise
        return self._finish(model, val_loader)

    def _build_model(self) -> TransferClassifier:
        # The head's initial weights depend on the seed only, not on the caller's RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, -1))
            model = TransferClassifier(self.backbone, [PRE_LOGITS], self.num_classes)
        freeze_stages(model, self.frozen)
        if self.cfg.drop_path > 0:
            set_drop_path(model, self.cfg.drop_path, min_depth=self.frozen + 1 if self.frozen else 0)
        # channels_last on CPU too: EfficientNet-Lite0, 2 cores, 224 px, batch 32: a training step took
        # ~1.8 s against ~2.3 s in NCHW, and NCHW backward passes degraded far more under CPU contention.
        model.to(self.dev, memory_format=torch.channels_last)
        return model

    def _reported(self, model: TransferClassifier) -> TransferClassifier:
        """The weights a result reports: the EMA's when there is one (loaded into ``model``)."""
        if self.ema is not None:
            model.load_state_dict(self.ema.state)
        return model

    def _finish(self, model: TransferClassifier, val_loader) -> tuple[RunResult, TransferClassifier]:
        if self.best_state is not None:  # early stopping on the hold-out slice kept its best epoch
            model.load_state_dict(self.best_state)
        else:
            self._reported(model)
        logits, y, paths = self._evaluate(model, val_loader, self.data.val)
        metrics = classification_metrics(logits, y, self.data.classes)
        trainable, total = count_params(model)
        seconds = self.seconds_before + time.perf_counter() - self.t0
        cfg = self.cfg
        selected = {
            "frozen_stages": self.frozen,
            "trainable_stages": self.backbone.num_stages() - self.frozen,
            "epochs_run": self.pos.epoch,
            "best_epoch": self.stopper.best_epoch if self.holdout else None,
            "reported_weights": ("best hold-out epoch" if self.best_state is not None
                                 else "EMA" if self.ema is not None else "final"),
            "holdout_images": len(self.holdout),
            "steps": self.pos.global_step,
            "lr_head": cfg.lr_head,
            "lr_backbone": self.lr_backbone,
            "bn": cfg.bn,
            "head_warmup": self.warmup,
            "first_batch_loss": self.first_loss,
            "loss_weighting": "class" if self.weight_loss else "none",
            "balanced_sampler": cfg.balanced_sampler,
            "skipped_images": len(self.skipped),
            "resumed": self.resumed,
        }
        self.ctx.event("finetune_done", epochs=self.pos.epoch, best_epoch=selected["best_epoch"],
                       val_accuracy=metrics.val_accuracy, stopped_early=self.stopped_early)
        result = RunResult(
            strategy=self.name, metrics=metrics, curves={k: list(v) for k, v in self.curves.items() if v},
            trainable_params=trainable, total_params=total, seconds=round(seconds, 2), device=str(self.dev),
            selected=selected, artifacts={"checkpoint": str(self.path)}, epochs_completed=self.pos.epoch,
            stopped_early=self.stopped_early, predictions=predictions_of(logits, y, paths),
        )
        return result, model.eval()

    # ------------------------------------------------------------------ before training

    def _prepare(self, model: TransferClassifier) -> None:
        """BatchNorm set-up by policy, then the warm-up head on the features training starts from."""
        bn = self.cfg.bn
        features = None
        if bn == "adapt":
            self._bn_pass(model, layers=None, collect=False)  # every BN re-estimated, then frozen
        elif bn == "train":
            # One pass both re-estimates the trainable BN layers and, since they normalise with batch
            # statistics while it runs, yields exactly the features a training step's forward sees.
            features = self._bn_pass(model, layers=trainable_bn_layers(model.backbone), collect=self.cfg.head_warmup)
        if self.cfg.head_warmup:
            self._warm_up_head(model, features)

    def _bn_pass(self, model: TransferClassifier, *, layers, collect: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        # Shuffled like training batches: in file order a batch holds one class, batch statistics then
        # subtract the class's own mean, and the features lose exactly what the head must learn
        # (measured: a cross-validated probe on such features scored 0.16 on a 2-class set).
        order = torch.randperm(len(self.train_samples), generator=torch.Generator().manual_seed(mix_seed(self.seed, -2)))
        loader = self._eval_loader(self.train_samples, order=order.tolist())
        total = len(self.train_samples)
        feats, labels = [], []

        def forward(x: torch.Tensor) -> None:
            out = model.backbone.forward_taps(x, [PRE_LOGITS])[PRE_LOGITS]
            if collect:
                feats.append(out.float().cpu())

        def batches():
            done = 0
            for batch in loader:
                self._note_bad(batch.bad, self.train_samples)
                done += len(batch.y) + len(batch.bad)
                if batch.x is not None:
                    # Train-mode BN cannot normalise a batch of one; its statistics would be noise anyway.
                    if len(batch.y) > 1:
                        labels.append(batch.y)
                        yield self._to_device(batch.x)
                self.ctx.report("adapt_bn", done, total)

        with self._autocast():
            seen = reestimate_bn(model.backbone, batches(), forward=forward, layers=layers)
        if seen == 0:
            raise AdvisorError("no training image could be decoded")
        self.ctx.event("adapt_bn", images=seen, layers="all" if layers is None else len(layers))
        return (torch.cat(feats), torch.cat(labels)) if collect else None

    def _warm_up_head(self, model: TransferClassifier, features: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = self.cfg
        if features is None:
            # Eval-mode features of the network as training starts: cached unless BN was re-estimated.
            feature_set = extract_features(self.train_samples, self.backbone, taps=[PRE_LOGITS], cache_dir=self.ctx.cache_dir,
                                  use_cache=cfg.bn == "frozen", device=str(self.dev), batch_size=cfg.batch_size,
                                  num_workers=self.extract_workers, progress=lambda d, t: self.ctx.report("features", d, t))
            for f in feature_set.summary.failed:
                self._note_skipped(f.path, f.reason)
            if feature_set.labels is None or len(feature_set.labels) == 0:
                raise AdvisorError("no training image could be decoded")
            features = (feature_set.features[PRE_LOGITS], feature_set.labels)
        x, y = features
        # One scale shared by all features (their RMS deviation), not one per feature: per-feature
        # scaling blows near-constant features up to unit variance, the probe puts weight on them,
        # and once fine-tuning moves them a little the logits explode. A shared scale keeps the
        # geometry of the features, so the probe's L2 penalty is isotropic in the backbone's space.
        per_feature = fit_standardizer(x)
        std = Standardizer(per_feature.mean, torch.full_like(per_feature.std, float(per_feature.std.pow(2).mean().sqrt())))
        # The probe sees the natural class mix (no sampler), so imbalance is corrected in its loss.
        weights = class_weights_from(y, self.num_classes) if cfg.class_weighting or cfg.balanced_sampler else None
        xs = std.apply(x)
        l2, how = cfg.head_l2, "set in the recipe"
        if l2 is None:
            # Cross-validated like the probes: a head fitted at a tiny L2 memorises the training set
            # (top probability ~1 on every image), so its gradients at the start of fine-tuning are ~0.
            l2, _ = cv_select_l2(xs, y, num_classes=self.num_classes, class_weights=weights, seed=self.seed,
                                 device=self.dev, standardize=False)
            how = "cross-validated on the training split"
        W, b = fit_logistic(xs, y, num_classes=self.num_classes, l2=l2, class_weights=weights, device=self.dev)
        model.set_head(W, b, std.mean, std.std)
        logits = xs @ W.T + b
        self.warmup = {"l2": l2, "l2_choice": how, "train_accuracy": round(float((logits.argmax(1) == y).float().mean()), 4),
                       "train_loss": round(float(F.cross_entropy(logits, y)), 4), "images": int(len(y)), "bn": cfg.bn}
        self.ctx.event("head_warmup", **self.warmup)

    # ------------------------------------------------------------------ training

    def _train_transform(self):
        transform, cfg = self.backbone.transform_config, self.cfg
        if cfg.augment == "none":
            return EvalTransform(transform)
        return TrainTransform(transform, cfg.input_size, scale=(cfg.crop_scale, 1.0), flip=cfg.hflip, trivial=cfg.augment == "trivial")

    def _balanced_weights(self) -> torch.Tensor:
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return 1.0 / counts[self.labels]

    def _train_epoch(self, model, optimizer, scheduler, loader, loss_weights) -> None:
        pos, cfg = self.pos, self.cfg
        train_mode(model, bn_train=self.bn_train)
        for batch in loader:
            self._note_bad(batch.bad, self.train_samples)
            # Dropout / drop-path noise is a function of (seed, epoch, step): a resumed run draws the same.
            torch.manual_seed(mix_seed(self.seed, pos.epoch, pos.step))
            loss_value = None
            if batch.x is not None:
                x, y = self._to_device(batch.x), batch.y.to(self.dev, non_blocking=True)
                with self._autocast():
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, weight=loss_weights, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                loss_value = float(loss.detach())
                if self.first_loss is None:
                    self.first_loss = round(loss_value, 4)
            with defer_sigint():  # the update and the counters change together or not at all
                if loss_value is not None:
                    optimizer.step()
                    scheduler.step()
                    if self.ema is not None:
                        self.ema.update(model)
                    pos.loss_sum += loss_value * len(batch.y)
                    pos.seen += len(batch.y)
                else:  # every image of the batch was bad: the schedule still advances
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                pos.step += 1
                pos.global_step += 1
            self.ctx.report("train", pos.global_step, self.total_steps)
            every = cfg.checkpoint_every_steps
            if every and pos.global_step % every == 0 and pos.step < self.steps_per_epoch:
                self._save(model, optimizer, scheduler)

    def _end_epoch(self, model, optimizer, scheduler, val_loader, holdout_loader) -> None:
        pos = self.pos
        # Evaluate the weights that would be reported (the EMA's), then put the training weights back.
        current = {k: v.detach().clone() for k, v in model.state_dict().items()} if self.ema is not None else None
        self._reported(model)
        logits, y, _ = self._evaluate(model, val_loader, self.data.val)
        accuracy = float((logits.argmax(1) == y).float().mean())
        val_loss = float(F.cross_entropy(logits, y))
        held_acc = held_loss = math.nan
        if holdout_loader is not None:
            h_logits, h_y, _ = self._evaluate(model, holdout_loader, self.holdout)
            held_acc, held_loss = float((h_logits.argmax(1) == h_y).float().mean()), float(F.cross_entropy(h_logits, h_y))
        evaluated = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if self.holdout else None
        if current is not None:
            model.load_state_dict(current)
        # The lr of the epoch's last step, read off the schedule (valid after a resume too).
        lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](pos.global_step - 1)
        with defer_sigint():
            epoch = pos.epoch + 1
            train_loss = pos.loss_sum / pos.seen if pos.seen else math.nan
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_accuracy", accuracy),
                               ("holdout_accuracy", held_acc), ("lr", lr)):
                if key != "holdout_accuracy" or self.holdout:
                    self.curves[key].append(value)
            # Selection reads the hold-out slice of the training split only.
            if self.holdout and self.stopper.update(epoch, held_acc, held_loss):
                self.best_state = evaluated
            pos.epoch, pos.step, pos.loss_sum, pos.seen = epoch, 0, 0.0, 0
            self.stopped_early = self.stopper.should_stop and epoch < self.cfg.epochs
        self._save(model, optimizer, scheduler)
        self.ctx.event("epoch", epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=accuracy,
                       holdout_accuracy=None if math.isnan(held_acc) else held_acc, lr=lr,
                       seconds=round(time.perf_counter() - self.t0, 2))
        if self.stopped_early:
            self.ctx.event("early_stop", epoch=epoch, best_epoch=self.stopper.best_epoch, patience=self.stopper.patience)

    # ------------------------------------------------------------------ evaluation and data

    def _loader(self, dataset: ImageDataset, batches) -> torch.utils.data.DataLoader:
        # Persistent workers, forked once: with a DataLoader per epoch, re-forking the grown training
        # process slowed the forward passes epoch after epoch (1.0 -> 4.7 s per batch over 5 epochs, CPU).
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.workers,
                                           collate_fn=collate_skip, pin_memory=self.cuda,
                                           persistent_workers=self.workers > 0)

    def _eval_loader(self, samples: list[Sample], order: list[int] | None = None) -> torch.utils.data.DataLoader:
        keys = [(0, i) for i in (range(len(samples)) if order is None else order)]
        batches = [keys[i:i + self.cfg.batch_size] for i in range(0, len(keys), self.cfg.batch_size)]
        return self._loader(ImageDataset.from_samples(samples, EvalTransform(self.backbone.transform_config), seed=self.seed), batches)

    @torch.inference_mode()
    def _evaluate(self, model: TransferClassifier, loader, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        model.eval()
        logits, labels, paths = [], [], []
        for batch in loader:
            self._note_bad(batch.bad, samples)
            if batch.x is None:
                continue
            with self._autocast():
                out = model(self._to_device(batch.x))
            logits.append(out.float().cpu())
            labels.append(batch.y)
            paths += [samples[i].path for i in batch.index.tolist()]
        if not logits:
            raise AdvisorError("no validation image could be decoded")
        return torch.cat(logits), torch.cat(labels), paths

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dev, non_blocking=True).contiguous(memory_format=torch.channels_last)

    def _autocast(self):
        return torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.cuda)

    def _note_bad(self, bad: list[tuple[int, str]], samples: list[Sample]) -> None:
        for i, reason in bad:
            self._note_skipped(samples[i].path, reason)

    def _note_skipped(self, path: str, reason: str) -> None:
        if path not in self.skipped:  # each bad file is reported once per run, however often it is drawn
            self.skipped[path] = reason
            self.ctx.event("skipped_image", path=path, reason=reason)

    # ------------------------------------------------------------------ checkpoints

    def _fingerprint(self) -> str:
        rows = [self.data.classes, [(s.path, s.label) for s in self.data.train], [(s.path, s.label) for s in self.data.val]]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def _compared_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in config.items() if k not in _RESUME_FREE}

    def _save(self, model, optimizer, scheduler):
        pos = self.pos
        state = {
            "format": CHECKPOINT_FORMAT,
            "strategy": self.name,
            "config": self.cfg.model_dump(mode="json"),
            "seed": self.seed,
            "backbone": {"name": self.backbone.name, "weights_digest": self.backbone.weights_digest,
                         "transform": self.backbone.transform_config.model_dump(mode="json")},
            "data": self._fingerprint(),
            "frozen_stages": self.frozen,
            "trainable": trainable_names(model),
            "epoch": pos.epoch,
            "step_in_epoch": pos.step,
            "global_step": pos.global_step,
            "epoch_loss_sum": pos.loss_sum,
            "epoch_seen": pos.seen,
            "steps_per_epoch": self.steps_per_epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "early_stopping": self.stopper.state_dict(),
            "best_model": self.best_state,
            "stopped_early": self.stopped_early,
            "curves": {k: list(v) for k, v in self.curves.items()},
            "skipped": dict(self.skipped),
            "head_warmup": self.warmup,
            "first_loss": self.first_loss,
            "rng": get_rng_state(),
            "seconds": self.seconds_before + time.perf_counter() - self.t0,
        }
        return save_checkpoint(self.path, state)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not self.ctx.resume or not self.path.exists():
            return None
        ckpt = load_checkpoint(self.path)
        transform = self.backbone.transform_config.model_dump(mode="json")
        checks = [
            ("format", ckpt.get("format"), CHECKPOINT_FORMAT),
            ("strategy", ckpt.get("strategy"), self.name),
            ("seed", ckpt.get("seed"), self.seed),
            ("backbone", ckpt.get("backbone"), {"name": self.backbone.name, "weights_digest": self.backbone.weights_digest,
                                                "transform": transform}),
            ("dataset", ckpt.get("data"), self._fingerprint()),
            ("frozen_stages", ckpt.get("frozen_stages"), self.frozen),
            ("config", self._compared_config(ckpt.get("config") or {}), self._compared_config(self.cfg.model_dump(mode="json"))),
        ]
        for what, saved, now in checks:
            if saved != now:
                detail = ""
                if what == "config":
                    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
                    detail = f" ({', '.join(f'{k}: {saved.get(k)!r} then, {now.get(k)!r} now' for k in diff)})"
                raise AdvisorError(f"checkpoint {self.path} is from a different run: its {what} differs{detail}",
                                   hint="resume with the same settings, or start over without resuming")
        return ckpt

    def _restore(self, ckpt: dict[str, Any], model, optimizer, scheduler) -> None:
        if ckpt["trainable"] != trainable_names(model):
            raise AdvisorError(f"checkpoint {self.path} trained other parameters than this run would",
                               hint="start over without resuming")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        self.pos = _Position(int(ckpt["epoch"]), int(ckpt["step_in_epoch"]), int(ckpt["global_step"]),
                             float(ckpt["epoch_loss_sum"]), int(ckpt["epoch_seen"]))
        self.stopper.load_state_dict(ckpt["early_stopping"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.first_loss = ckpt.get("first_loss")
        self.best_state = ckpt["best_model"]
        self.stopped_early = bool(ckpt["stopped_early"])
        self.curves = {k: list(ckpt["curves"].get(k, [])) for k in _CURVES}
        self.skipped = dict(ckpt["skipped"])
        self.warmup = ckpt["head_warmup"]
        self.seconds_before = float(ckpt["seconds"])
        self.resumed = True
        set_rng_state(ckpt["rng"])
        self.ctx.event("resumed", checkpoint=str(self.path), epoch=self.pos.epoch, step_in_epoch=self.pos.step,
                       global_step=self.pos.global_step)


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
        return _Run(self.name, data, backbone, config, self._frozen(config, backbone), ctx).fit()


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
