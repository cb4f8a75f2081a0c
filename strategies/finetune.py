"""``partial-finetune`` and ``full-finetune``: one training loop, two freezing policies.

A fit runs, in order:

1. (``adapt_bn``) AdaBN: every BatchNorm's running statistics are re-estimated on the training
   images (eval transform) before anything else, so that the head warm-up sees the features
   the adapted network produces. Frozen BN layers then keep these statistics (they stay in
   eval mode); trainable ones go on updating theirs as usual.
2. (``head_warmup``) LP-FT (Kumar et al. 2022): the new head starts as a linear probe on the
   pooled ``pre_logits`` features (from the feature cache unless BN was adapted), so early
   gradients do not come from a random head and distort the pretrained features. The feature
   standardiser fitted here (per-feature mean, one shared scale) stays fixed during fine-tuning.
3. Fine-tuning: the stem and the first ``frozen_stages`` stages frozen (their BN in eval
   mode), AdamW with a head and a backbone learning rate, linear warm-up then cosine decay,
   validation and a checkpoint every epoch, early stopping on validation accuracy; the best
   weights are restored at the end.

Runs are exactly resumable: ``checkpoints/last.pt`` (written every epoch, every
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
from pydantic import BaseModel, ConfigDict, Field

from advisor.backbones import PRE_LOGITS, Backbone
from advisor.classifier import TransferClassifier
from advisor.data import Sample
from advisor.errors import AdvisorError
from advisor.features import default_num_workers, extract_features
from advisor.rules import frozen_stages_for
from advisor.models import RunPlan
from strategies.base import (
    RunContext, RunData, RunResult, Strategy, classification_metrics, count_params, register_strategy,
)
from strategies.probe import Standardizer, class_weights_from, fit_logistic, fit_standardizer
from strategies.training import (
    EarlyStopping, EpochBatchSampler, EvalTransform, ImageSamples, TrainTransform, collate_skip, defer_sigint,
    freeze_stages, get_rng_state, load_checkpoint, mix_seed, param_groups, reestimate_bn, save_checkpoint,
    set_rng_state, steps_per_epoch, train_mode, trainable_names, warmup_cosine,
)

CHECKPOINT_FORMAT = "advisor-finetune-checkpoint-v1"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"
# Settings that change how a run executes but not what it computes: a resume may differ in them.
_RESUME_FREE = frozenset({"num_workers", "checkpoint_every_steps"})


class FinetuneConfig(BaseModel):
    """Settings of a fine-tune (see the module docstring for what each stage does)."""

    model_config = ConfigDict(extra="forbid")

    frozen_stages: int | None = Field(default=None, ge=0)  # None: R3's calibrated share of the stages, at least one left trainable
    lr_head: float = Field(default=1e-3, gt=0)
    lr_backbone: float | None = Field(default=None, gt=0)  # None: lr_head / 10
    weight_decay: float = Field(default=1e-4, ge=0)
    epochs: int = Field(default=10, ge=1)
    warmup_epochs: int = Field(default=1, ge=0)
    batch_size: int = Field(default=32, ge=2)
    input_size: int = Field(default=224, gt=0)
    augment: bool = True
    class_weighting: bool = False
    balanced_sampler: bool = False
    adapt_bn: bool = False
    patience: int | None = Field(default=3, ge=1)  # epochs without a better validation result; None: never stop early
    head_warmup: bool = True  # False: a seeded random head on unstandardised features
    head_l2: float = Field(default=1e-3, ge=0)  # L2 of the warm-up probe (mean cross-entropy scale)
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
    curves: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("train_loss", "val_loss", "val_accuracy", "lr")})
    skipped: dict[str, str] = field(default_factory=dict)
    stopped_early: bool = False
    warmup: dict[str, Any] | None = None
    seconds_before: float = 0.0
    resumed: bool = False

    def __post_init__(self) -> None:
        self.dev = torch.device(self.ctx.device)
        self.cuda = self.dev.type == "cuda"
        self.seed = self.ctx.seed
        nw = self.cfg.num_workers if self.cfg.num_workers is not None else self.ctx.num_workers
        self.extract_workers = nw  # None: the feature extractor's own default
        # Unset on a CPU: no loader processes. Training there is compute-bound (decoding a batch is a
        # few % of its forward/backward) and a worker competes with the compute threads for the
        # cores: full fine-tune, EfficientNet-Lite0, 224 px, 2 cores: 3.3 s/epoch with 0, 5.2 with 1.
        self.workers = nw if nw is not None else (default_num_workers() if self.cuda else 0)
        self.lr_backbone = self.cfg.lr_backbone if self.cfg.lr_backbone is not None else self.cfg.lr_head / 10
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), self.cfg.batch_size)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        self.path = self.ctx.run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
        self.stopper = EarlyStopping(self.cfg.patience)
        self.num_classes = len(self.data.classes)
        self.labels = torch.tensor([s.label for s in self.data.train], dtype=torch.long)
        # The loss is class-weighted unless batches are already class-balanced: both would over-correct.
        self.weight_loss = self.cfg.class_weighting and not self.cfg.balanced_sampler
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------ the fit

    def fit(self) -> tuple[RunResult, TransferClassifier]:
        # Per-step reseeding would otherwise leave the caller's global RNG in a seed-dependent state.
        devices = [self.dev.index if self.dev.index is not None else torch.cuda.current_device()] if self.cuda else []
        with torch.random.fork_rng(devices=devices):
            return self._fit()

    def _fit(self) -> tuple[RunResult, TransferClassifier]:
        cfg, ctx = self.cfg, self.ctx
        if len(self.data.train) < 2:
            raise AdvisorError("a fine-tune needs at least 2 training images")
        # Train, validation and the warm-up's cached features all use this input size.
        self.backbone.transform_config = self.backbone.transform_config.with_input_size(cfg.input_size)
        ckpt = self._read_checkpoint()
        model = self._build_model()
        if ckpt is None:
            try:
                if cfg.adapt_bn:
                    self._adapt_bn(model)
                if cfg.head_warmup:
                    self._warm_up_head(model)
            except KeyboardInterrupt:
                ctx.event("interrupted", stage="setup")
                raise
        else:
            model.load_state_dict(ckpt["model"])
        optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_head, self.lr_backbone, cfg.weight_decay))
        warmup_steps = min(cfg.warmup_epochs * self.steps_per_epoch, self.total_steps)
        scheduler = warmup_cosine(optimizer, warmup_steps, self.total_steps)
        if ckpt is not None:
            self._restore(ckpt, model, optimizer, scheduler)

        sampler = EpochBatchSampler(len(self.data.train), cfg.batch_size, seed=self.seed,
                                    weights=self._balanced_weights() if cfg.balanced_sampler else None)
        train_loader = self._loader(ImageSamples(self.data.train, self._train_transform(), seed=self.seed), sampler)
        val_loader = self._eval_loader(self.data.val)
        loss_weights = class_weights_from(self.labels, self.num_classes).to(self.dev) if self.weight_loss else None
        try:
            while self.pos.epoch < cfg.epochs and not self.stopped_early:
                if self.pos.step < self.steps_per_epoch:
                    sampler.set_epoch(self.pos.epoch, self.pos.step)
                    self._train_epoch(model, optimizer, scheduler, train_loader, loss_weights)
                self._end_epoch(model, optimizer, scheduler, val_loader)
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
        # channels_last on CPU too: EfficientNet-Lite0, 2 cores, 224 px, batch 32: a training step took
        # ~1.8 s against ~2.3 s in NCHW, and NCHW backward passes degraded far more under CPU contention.
        model.to(self.dev, memory_format=torch.channels_last)
        return model

    def _finish(self, model: TransferClassifier, val_loader) -> tuple[RunResult, TransferClassifier]:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        logits, y = self._evaluate(model, val_loader)
        metrics = classification_metrics(logits, y, self.data.classes)
        trainable, total = count_params(model)
        seconds = self.seconds_before + time.perf_counter() - self.t0
        selected = {
            "frozen_stages": self.frozen,
            "trainable_stages": self.backbone.num_stages() - self.frozen,
            "epochs_run": self.pos.epoch,
            "best_epoch": self.stopper.best_epoch,
            "steps": self.pos.global_step,
            "lr_head": self.cfg.lr_head,
            "lr_backbone": self.lr_backbone,
            "head_warmup": self.warmup,
            "adapt_bn": self.cfg.adapt_bn,
            "loss_weighting": "class" if self.weight_loss else "none",
            "balanced_sampler": self.cfg.balanced_sampler,
            "skipped_images": len(self.skipped),
            "resumed": self.resumed,
        }
        self.ctx.event("finetune_done", epochs=self.pos.epoch, best_epoch=self.stopper.best_epoch,
                       val_accuracy=metrics.val_accuracy, stopped_early=self.stopped_early)
        result = RunResult(
            strategy=self.name, metrics=metrics, curves={k: list(v) for k, v in self.curves.items()},
            trainable_params=trainable, total_params=total, seconds=round(seconds, 2), device=str(self.dev),
            selected=selected, artifacts={"checkpoint": str(self.path)}, epochs_completed=self.pos.epoch,
            stopped_early=self.stopped_early,
        )
        return result, model.eval()

    # ------------------------------------------------------------------ before training

    def _adapt_bn(self, model: TransferClassifier) -> None:
        loader = self._eval_loader(self.data.train)
        total = len(self.data.train)

        def batches():
            done = 0
            for batch in loader:
                self._note_bad(batch.bad, self.data.train)
                done += len(batch.index) + len(batch.bad)
                if batch.x is not None:
                    yield self._to_device(batch.x)
                self.ctx.report("adapt_bn", done, total)

        with self._autocast():
            seen = reestimate_bn(model.backbone, batches())
        if seen == 0:
            raise AdvisorError("no training image could be decoded")
        self.ctx.event("adapt_bn", images=seen)

    def _warm_up_head(self, model: TransferClassifier) -> None:
        cfg = self.cfg
        # Cached features describe the unadapted network; after AdaBN they must be recomputed.
        fs = extract_features(self.data.train, self.backbone, taps=[PRE_LOGITS], cache_dir=self.ctx.cache_dir,
                              use_cache=not cfg.adapt_bn, device=str(self.dev), batch_size=cfg.batch_size,
                              num_workers=self.extract_workers, progress=lambda d, t: self.ctx.report("features", d, t))
        for f in fs.summary.failed:
            self._note_skipped(f.path, f.reason)
        if fs.labels is None or len(fs.labels) == 0:
            raise AdvisorError("no training image could be decoded")
        x, y = fs.features[PRE_LOGITS], fs.labels
        # One scale shared by all features (their RMS deviation), not one per feature: per-feature
        # scaling blows near-constant features up to unit variance, the probe puts weight on them,
        # and once fine-tuning moves them a little the logits explode. A shared scale keeps the
        # geometry of the features, so the probe's L2 penalty is isotropic in the backbone's space.
        per_feature = fit_standardizer(x)
        std = Standardizer(per_feature.mean, torch.full_like(per_feature.std, float(per_feature.std.pow(2).mean().sqrt())))
        # The probe sees the natural class mix (no sampler), so imbalance is corrected in its loss.
        weights = class_weights_from(y, self.num_classes) if cfg.class_weighting or cfg.balanced_sampler else None
        xs = std.apply(x)
        W, b = fit_logistic(xs, y, num_classes=self.num_classes, l2=cfg.head_l2, class_weights=weights, device=self.dev)
        model.set_head(W, b, std.mean, std.std)
        acc = float(((xs @ W.T + b).argmax(1) == y).float().mean())
        self.warmup = {"l2": cfg.head_l2, "train_accuracy": round(acc, 4), "images": int(len(y)),
                       "features_from_cache": fs.summary.from_cache}
        self.ctx.event("head_warmup", **self.warmup)

    # ------------------------------------------------------------------ training

    def _train_transform(self):
        tc = self.backbone.transform_config
        return TrainTransform(tc, self.cfg.input_size) if self.cfg.augment else EvalTransform(tc)

    def _balanced_weights(self) -> torch.Tensor:
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return 1.0 / counts[self.labels]

    def _train_epoch(self, model, optimizer, scheduler, loader, loss_weights) -> None:
        pos, cfg = self.pos, self.cfg
        train_mode(model)
        for batch in loader:
            self._note_bad(batch.bad, self.data.train)
            # Dropout / drop-path noise is a function of (seed, epoch, step): a resumed run draws the same.
            torch.manual_seed(mix_seed(self.seed, pos.epoch, pos.step))
            loss_value = None
            if batch.x is not None:
                x, y = self._to_device(batch.x), batch.y.to(self.dev, non_blocking=True)
                with self._autocast():
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y, weight=loss_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                loss_value = float(loss.detach())
            with defer_sigint():  # the update and the counters change together or not at all
                if loss_value is not None:
                    optimizer.step()
                    scheduler.step()
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

    def _end_epoch(self, model, optimizer, scheduler, val_loader) -> None:
        logits, y = self._evaluate(model, val_loader)
        accuracy = float((logits.argmax(1) == y).float().mean())
        val_loss = float(F.cross_entropy(logits, y))
        pos = self.pos
        # The lr of the epoch's last step, read off the schedule (valid after a resume too).
        lr = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](pos.global_step - 1)
        with defer_sigint():
            epoch = pos.epoch + 1
            train_loss = pos.loss_sum / pos.seen if pos.seen else math.nan
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_accuracy", accuracy), ("lr", lr)):
                self.curves[key].append(value)
            if self.stopper.update(epoch, accuracy, val_loss):
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            pos.epoch, pos.step, pos.loss_sum, pos.seen = epoch, 0, 0.0, 0
            self.stopped_early = self.stopper.should_stop and epoch < self.cfg.epochs
        self._save(model, optimizer, scheduler)
        self.ctx.event("epoch", epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=accuracy, lr=lr,
                       best_epoch=self.stopper.best_epoch, seconds=round(time.perf_counter() - self.t0, 2))
        if self.stopped_early:
            self.ctx.event("early_stop", epoch=epoch, best_epoch=self.stopper.best_epoch, patience=self.cfg.patience)

    # ------------------------------------------------------------------ evaluation and data

    def _loader(self, dataset: ImageSamples, batches) -> torch.utils.data.DataLoader:
        # Persistent workers, forked once: with a DataLoader per epoch, re-forking the grown training
        # process slowed the forward passes epoch after epoch (1.0 -> 4.7 s per batch over 5 epochs, CPU).
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.workers,
                                           collate_fn=collate_skip, pin_memory=self.cuda,
                                           persistent_workers=self.workers > 0)

    def _eval_loader(self, samples: list[Sample]) -> torch.utils.data.DataLoader:
        keys = [(0, i) for i in range(len(samples))]
        batches = [keys[i:i + self.cfg.batch_size] for i in range(0, len(keys), self.cfg.batch_size)]
        return self._loader(ImageSamples(samples, EvalTransform(self.backbone.transform_config), seed=self.seed), batches)

    @torch.inference_mode()
    def _evaluate(self, model: TransferClassifier, loader) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        logits, labels = [], []
        for batch in loader:
            self._note_bad(batch.bad, self.data.val)
            if batch.x is None:
                continue
            with self._autocast():
                out = model(self._to_device(batch.x))
            logits.append(out.float().cpu())
            labels.append(batch.y)
        if not logits:
            raise AdvisorError("no validation image could be decoded")
        return torch.cat(logits), torch.cat(labels)

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
            "early_stopping": self.stopper.state_dict(),
            "best_model": self.best_state,
            "stopped_early": self.stopped_early,
            "curves": {k: list(v) for k, v in self.curves.items()},
            "skipped": dict(self.skipped),
            "head_warmup": self.warmup,
            "rng": get_rng_state(),
            "seconds": self.seconds_before + time.perf_counter() - self.t0,
        }
        return save_checkpoint(self.path, state)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if not self.ctx.resume or not self.path.exists():
            return None
        ckpt = load_checkpoint(self.path)
        tc = self.backbone.transform_config.model_dump(mode="json")
        checks = [
            ("format", ckpt.get("format"), CHECKPOINT_FORMAT),
            ("strategy", ckpt.get("strategy"), self.name),
            ("seed", ckpt.get("seed"), self.seed),
            ("backbone", ckpt.get("backbone"), {"name": self.backbone.name, "weights_digest": self.backbone.weights_digest,
                                                "transform": tc}),
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
        self.best_state = ckpt["best_model"]
        self.stopped_early = bool(ckpt["stopped_early"])
        self.curves = {k: list(v) for k, v in ckpt["curves"].items()}
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
        return dict(
            lr_head=plan.lr_head,
            lr_backbone=plan.lr_backbone if plan.lr_backbone is not None else plan.lr_head / 10,
            weight_decay=plan.weight_decay, epochs=plan.epochs, warmup_epochs=plan.warmup_epochs,
            batch_size=plan.batch_size, input_size=plan.input_size, augment=plan.augment,
            class_weighting=plan.class_weighting, balanced_sampler=plan.balanced_sampler, adapt_bn=plan.adapt_bn,
        )

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
