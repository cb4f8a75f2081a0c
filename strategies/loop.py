"""The fine-tune's training loop (:class:`FinetuneLoop`) and its settings (:class:`FinetuneConfig`).

The loop only trains, evaluates and keeps its position; BatchNorm set-up, the head's warm start,
the EMA, hold-out selection and checkpoints are small callbacks (``strategies/callbacks.py``);
where batches come from is ``strategies/loop_data.py``. What a fit does, in order, is told in
``strategies/finetune.py``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from advisor.backbones import PRE_LOGITS, Backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.core import distributed
from advisor.core.distributed import default_num_workers
from advisor.core.errors import AdvisorError
from advisor.core.machine import env_switch
from advisor.data.loading import mix_seed
from advisor.decide.recipe import FinetuneRecipe
from advisor.decide.rules import frozen_stages_for
from advisor.measure.logistic import class_weights_from
from strategies.base import RunContext, RunData, confidence_of, count_params, predictions_of
from strategies.callbacks import (
    Callback,
    Checkpointing,
    HoldoutSelection,
    WarmStart,
    WeightAveraging,
    run_hooks,
)
from strategies.loop_data import LoopData
from strategies.results import RunResult, classification_metrics
from strategies.resume import EpochBatchSampler, defer_sigint, set_rng_state, steps_per_epoch
from strategies.training import (
    freeze_stages,
    holdout_split,
    param_groups,
    set_drop_path,
    train_mode,
    trainable_names,
    warmup_cosine,
)

COMPILE_ENV = "ADVISOR_COMPILE"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.safetensors"


class FinetuneConfig(FinetuneRecipe):
    """A fine-tune's settings: the recipe plus what the run's data and machine decide."""

    model_config = ConfigDict(extra="forbid")

    frozen_stages: int | None = Field(default=None, ge=0)  # None: R3's calibrated share of the stages, at least one left trainable
    batch_size: int = Field(default=32, ge=2)
    input_size: int = Field(default=224, ge=16)
    class_weighting: bool = False
    balanced_sampler: bool = False
    checkpoint_every_steps: int = Field(default=50, ge=0)  # 0: only at epoch ends (and on Ctrl-C)
    checkpoint_min_seconds: float = Field(default=30.0, ge=0)  # step checkpoints at most this often (epoch ends always)
    num_workers: int | None = Field(default=None, ge=0)  # None: the run context's, else 0 on CPU, one per spare core on CUDA
    # Decode each image once into the cache folder (advisor.data.decoded) when the run has several epochs
    # and the disk has room; False decodes every file every time it is used.
    decoded_cache: bool = True
    # Where flips and TrivialAugment run (the random resized crop stays with the loader): "device" batched on the
    # training device (strategies/device_augment.py), "workers" per image in the loader. "auto" is the device:
    # on a GPU the workers starve it; on the CPU both cost the same (stage profile, 224 px: 25 vs 28 ms per
    # batch of 32, ~1 % of a step), so one path serves both.
    augment_on: Literal["auto", "workers", "device"] = "auto"
    # torch.compile the training forward/backward (CUDA: fewer, fused kernels; the first steps pay the
    # compilation). Also switched on for every run by ADVISOR_COMPILE=on. Not under DDP.
    compile: bool = False
    # Validation images the learning curve evaluates each epoch (a stratified, seeded subset); None: the whole
    # split unless it outweighs the training split (advisor.decide.recipe.curve_images). The reported metrics
    # always come from the whole split, once at the end.
    curve_images: int | None = Field(default=None, ge=1)


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


class EpochResult(NamedTuple):
    """One epoch's evaluation, as the callbacks see it at ``on_epoch_end``."""

    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_accuracy: float
    holdout_accuracy: float  # nan without a hold-out slice
    holdout_loss: float
    lr: float


_CURVES = ("train_loss", "val_loss", "val_accuracy", "holdout_accuracy", "lr")


def _no_buffer_sync() -> dict[str, bool]:
    import inspect

    params = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


class FinetuneLoop(LoopData):
    """One fit: trains, evaluates each epoch and keeps its position; callbacks do the rest.

    What the loop itself checkpoints: its position, curves, skipped files, the first batch's
    loss, the optimiser, the schedule and the RNG; each callback adds its own state.
    """

    def __init__(self, name: str, data: RunData, backbone: Backbone, cfg: FinetuneConfig, frozen: int, ctx: RunContext) -> None:
        self.name, self.data, self.backbone, self.cfg, self.frozen, self.ctx = name, data, backbone, cfg, frozen, ctx
        self.dev = torch.device(ctx.device)
        self.cuda = self.dev.type == "cuda"
        self.seed = ctx.seed
        nw = cfg.num_workers if cfg.num_workers is not None else ctx.num_workers
        self.extract_workers = nw  # None: the feature extractor's own default
        # Unset on a CPU: no loader processes. Training there is compute-bound (decoding a batch is a
        # few % of its forward/backward) and a worker competes with the compute threads for the
        # cores: full fine-tune, EfficientNet-Lite0, 224 px, 2 cores: 3.3 s/epoch with 0, 5.2 with 1.
        self.workers = nw if nw is not None else (default_num_workers() if self.cuda else 0)
        self.lr_backbone = cfg.backbone_lr
        # Early stopping decides on a stratified slice of the training split, never on the reported split.
        stop = cfg.early_stopping
        self.train_samples, self.holdout = list(data.train), []
        if stop.policy == "holdout":
            keep, held = holdout_split([s.label for s in data.train], stop.holdout_fraction, seed=stop.holdout_seed)
            if not held:
                raise AdvisorError("early stopping on a hold-out slice needs a class with at least 2 training images",
                                   hint="set the recipe's early_stopping.policy to none")
            self.train_samples = [data.train[i] for i in keep]
            self.holdout = [data.train[i] for i in held]
        self.steps_per_epoch = steps_per_epoch(len(self.train_samples), cfg.batch_size)
        self.curve_val = self.curve_samples(cfg.curve_images)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.num_classes = len(data.classes)
        self.labels = torch.tensor([s.label for s in self.train_samples], dtype=torch.long)
        # The loss is class-weighted unless batches are already class-balanced: both would over-correct.
        self.weight_loss = cfg.class_weighting and not cfg.balanced_sampler
        self.bn_train = cfg.bn == "train"
        decay = cfg.ema_decay(self.total_steps)
        self.warm_start = WarmStart()
        self.averaging = WeightAveraging(decay) if decay is not None else None
        self.selection = HoldoutSelection(stop.patience, cfg.epochs) if self.holdout else None
        self.checkpointing = Checkpointing(ctx.run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE, every_steps=cfg.checkpoint_every_steps,
                                          min_seconds=cfg.checkpoint_min_seconds)
        # Order matters: end-of-validation hooks run in reverse, so the selection's snapshot sees the EMA.
        self.callbacks: list[Callback] = [cb for cb in (self.warm_start, self.averaging, self.selection, self.checkpointing)
                                          if cb is not None]
        self.pos = _Position()
        self.curves: dict[str, list[float]] = {k: [] for k in _CURVES}
        self.skipped: dict[str, str] = {}
        self.first_loss: float | None = None
        self._unsettled: list[tuple[torch.Tensor, int]] = []  # (loss on the device, images) per step
        self.last_epoch: EpochResult | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.seconds_before = 0.0
        self.resumed = False
        self.rank = distributed.rank() if distributed.active() else None  # None: one process
        self.ddp: torch.nn.Module | None = None
        self.compiled: torch.nn.Module | None = None
        self.decoded_train = self.decoded_eval = None
        self.whole_split_eval = None  # the last epoch's pass, when its curve read the whole split
        self.decoded_note = "off"
        self.t0 = time.perf_counter()

    @property
    def path(self):
        return self.checkpointing.path

    @property
    def stopped_early(self) -> bool:
        return any(cb.should_stop for cb in self.callbacks)

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
        self.decoded_train, self.decoded_eval, self.decoded_note = self._decoded_stores()
        ckpt = self.checkpointing.read(self)
        model = self._build_model()
        if ckpt is None:
            try:
                run_hooks(self.callbacks, "on_fit_start", self, model)
            except KeyboardInterrupt:
                ctx.event("interrupted", stage="setup")
                raise
        else:
            model.load_state_dict(ckpt["model"])
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.lr_head, self.lr_backbone, cfg.weight_decay,
                                                        layer_decay=cfg.layer_decay))
        warmup_steps = min(cfg.warmup_epochs * self.steps_per_epoch, self.total_steps)
        self.scheduler = warmup_cosine(self.optimizer, warmup_steps, self.total_steps)
        run_hooks(self.callbacks, "on_train_start", self, model)
        if ckpt is not None:
            self._restore(ckpt, model)
        if self.rank is not None:
            if self.rank.world > cfg.batch_size:
                raise AdvisorError(f"{self.rank.world} processes cannot split a batch of {cfg.batch_size} images",
                                   hint="use at most as many processes as the batch has images")
            # DDP broadcasts rank 0's weights at construction and averages gradients in backward.
            # Buffers (BatchNorm statistics) are synced once at construction, not every forward: they are
            # frozen, or re-estimated identically on every rank, or synchronised by SyncBatchNorm.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dev.index] if self.cuda else None, **_no_buffer_sync())

        if (self.cfg.compile or env_switch(COMPILE_ENV)) and self.ddp is None:
            # Training steps only: evaluation switches the graph to eval mode and is a small share.
            self.compiled = torch.compile(model)
        sampler = EpochBatchSampler(len(self.train_samples), cfg.batch_size, seed=self.seed,
                                    weights=self._balanced_weights() if cfg.balanced_sampler else None,
                                    rank=self.rank.rank if self.rank else 0, world=self.rank.world if self.rank else 1)
        self._device_augment = self.device_augment()
        train_loader = self._loader(self.train_dataset(), sampler)
        curve_loader = self.eval_loader(self.curve_val)
        holdout_loader = self.eval_loader(self.holdout) if self.holdout else None
        loss_weights = class_weights_from(self.labels, self.num_classes).to(self.dev) if self.weight_loss else None
        try:
            while self.pos.epoch < cfg.epochs and not self.stopped_early:
                # (start, images seen so far, end of training): this process's share of the epoch, for its images/s
                self._epoch_clock = (time.perf_counter(), self.pos.seen, None)
                if self.pos.step < self.steps_per_epoch:
                    sampler.set_epoch(self.pos.epoch, self.pos.step)
                    self._train_epoch(model, train_loader, loss_weights)
                    self._epoch_clock = (*self._epoch_clock[:2], time.perf_counter())
                self._end_epoch(model, curve_loader, holdout_loader)
        except KeyboardInterrupt:
            run_hooks(self.callbacks, "on_interrupt", self, model)
            ctx.event("interrupted", stage="train", epoch=self.pos.epoch, step_in_epoch=self.pos.step,
                      global_step=self.pos.global_step, checkpoint=str(self.path))
            raise
        return self._finish(model)

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
        if self.bn_train and self.cuda and distributed.active():
            # BatchNorm that trains sees the global batch, as in one process (NCCL only: gloo has no SyncBatchNorm).
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.dev, memory_format=torch.channels_last)
        return model

    def _finish(self, model: TransferClassifier) -> tuple[RunResult, TransferClassifier]:
        best = self.selection.best_state if self.selection is not None else None
        if best is not None:  # early stopping on the hold-out slice kept its best epoch
            model.load_state_dict(best)
        elif self.averaging is not None:
            self.averaging.load_into(model)
        # No best epoch: the last epoch's pass evaluated the reported weights; over the whole split it is the result.
        done = self.whole_split_eval if best is None else None
        logits, y, paths = done or self.evaluate(model, self.eval_loader(self.data.val), self.data.val)
        metrics = classification_metrics(logits, y, self.data.classes)
        trainable, total = count_params(model)
        seconds = self.seconds_before + time.perf_counter() - self.t0
        cfg = self.cfg
        selected = {
            "frozen_stages": self.frozen,
            "trainable_stages": self.backbone.num_stages() - self.frozen,
            "epochs_run": self.pos.epoch,
            "best_epoch": self.selection.stopper.best_epoch if self.selection is not None else None,
            "reported_weights": ("best hold-out epoch" if best is not None
                                 else "EMA" if self.averaging is not None else "final"),
            "holdout_images": len(self.holdout),
            "curve_images": len(self.curve_val),
            "steps": self.pos.global_step,
            "lr_head": cfg.lr_head,
            "lr_backbone": self.lr_backbone,
            "bn": cfg.bn,
            "head_warmup": self.warm_start.summary,
            "first_batch_loss": self.first_loss,
            "loss_weighting": "class" if self.weight_loss else "none",
            "balanced_sampler": cfg.balanced_sampler,
            "skipped_images": len(self.skipped),
            "decoded_cache": self.decoded_note,
            "augment_on": self.augment_site(),
            # stored decoded images that failed their checks and were decoded again (this process's loaders)
            "decoded_cache_invalid": sum({id(s): s.invalid for s in (self.decoded_train, self.decoded_eval) if s}.values()),
            "compiled": self.compiled is not None,
            "resumed": self.resumed,
        }
        self.ctx.event("finetune_done", epochs=self.pos.epoch, best_epoch=selected["best_epoch"],
                       val_accuracy=metrics.val_accuracy, stopped_early=self.stopped_early)
        result = RunResult(
            strategy=self.name, metrics=metrics, curves={k: list(v) for k, v in self.curves.items() if v},
            trainable_params=trainable, total_params=total, seconds=round(seconds, 2), device=str(self.dev),
            selected=selected, artifacts={"checkpoint": str(self.path)}, epochs_completed=self.pos.epoch,
            stopped_early=self.stopped_early, predictions=predictions_of(logits, y, paths),
            confidence=confidence_of(logits), val_logits=logits, val_labels=y,  # the runner calibrates on them
        )
        return result, model.eval()

    # ------------------------------------------------------------------ training

    def _balanced_weights(self) -> torch.Tensor:
        counts = torch.bincount(self.labels, minlength=self.num_classes).double()
        return 1.0 / counts[self.labels]

    def _train_epoch(self, model, loader, loss_weights) -> None:
        pos, cfg, optimizer, scheduler = self.pos, self.cfg, self.optimizer, self.scheduler
        train_mode(model, bn_train=self.bn_train)
        for batch in loader:
            self.note_bad(batch.bad, self.train_samples)
            # Dropout / drop-path noise is a function of (seed, epoch, step): a resumed run draws the same.
            torch.manual_seed(mix_seed(self.seed, pos.epoch, pos.step))
            loss_value = None
            if self.ddp is not None:
                loss_value, seen = self._ddp_step(batch, loss_weights)
            elif batch.x is not None:
                seen = len(batch.y)
                x, y = self.train_input(batch), batch.y.to(self.dev, non_blocking=True)
                with self.autocast():
                    logits = (model if self.compiled is None else self.compiled)(x)
                loss = F.cross_entropy(logits.float(), y, weight=loss_weights, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
                # Kept on the device until the epoch's end or a checkpoint (settle_loss): reading it here
                # would make the host wait for every step, and on a GPU the next step's launches then stall.
                loss_value = loss.detach()
                if self.first_loss is None:
                    self.first_loss = round(float(loss_value), 4)
            with defer_sigint():  # the update and the counters change together or not at all
                if loss_value is not None:
                    optimizer.step()
                    scheduler.step()
                    run_hooks(self.callbacks, "on_optimizer_step", self, model)
                    if isinstance(loss_value, torch.Tensor):
                        self._unsettled.append((loss_value, seen))
                    else:
                        pos.loss_sum += loss_value * seen
                    pos.seen += seen
                else:  # every image of the batch was bad: the schedule still advances
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                pos.step += 1
                pos.global_step += 1
            self.ctx.report("train", pos.global_step, self.total_steps)
            run_hooks(self.callbacks, "on_step_end", self, model)

    def settle_loss(self) -> None:
        """Add the losses still on the device to the epoch's sum, in step order (one host sync)."""
        if self._unsettled:
            values = torch.stack([t for t, _ in self._unsettled]).tolist()
            for value, (_, seen) in zip(values, self._unsettled):
                self.pos.loss_sum += value * seen
            self._unsettled.clear()

    def _ddp_step(self, batch, loss_weights) -> tuple[float | None, int]:
        """Forward/backward of this rank's share of the global batch; (global mean loss, global images).

        The loss is normalised by the global batch (images, or their class weights), times the
        world size because DDP averages gradients: the update equals one process's on the whole
        batch. A rank whose share failed to decode still joins the gradient average with zeros.
        """
        cfg, ddp = self.cfg, self.ddp
        if batch.x is not None:
            x, y = self.train_input(batch), batch.y.to(self.dev, non_blocking=True)
        else:
            size = self.backbone.transform_config.input_size
            x = torch.zeros(1, 3, size, size, device=self.dev).contiguous(memory_format=torch.channels_last)
            y = torch.zeros(1, dtype=torch.long, device=self.dev)
        with self.autocast():
            logits = ddp(x)
        per = F.cross_entropy(logits.float(), y, weight=loss_weights, label_smoothing=cfg.label_smoothing, reduction="none")
        norm = (loss_weights[y] if loss_weights is not None else torch.ones_like(per)).sum()
        if batch.x is None:
            per, norm = per * 0.0, norm * 0.0
        totals = torch.stack([per.detach().sum(), norm.detach(), torch.tensor(float(len(y) if batch.x is not None else 0),
                                                                                device=self.dev)])
        torch.distributed.all_reduce(totals)
        global_sum, global_norm, global_n = totals.tolist()
        self.optimizer.zero_grad(set_to_none=True)
        (per.sum() * (self.rank.world / max(global_norm, 1e-12))).backward()
        if global_norm <= 0:  # every image of the global batch was bad
            return None, 0
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in ddp.module.parameters() if p.requires_grad], cfg.grad_clip)
        loss_value = global_sum / global_norm
        if self.first_loss is None:
            self.first_loss = round(loss_value, 4)
        return loss_value, int(global_n)

    def _end_epoch(self, model, curve_loader, holdout_loader) -> None:
        pos = self.pos
        run_hooks(self.callbacks, "on_validation_start", self, model)
        logits, y, paths = self.evaluate(model, curve_loader, self.curve_val)
        self.whole_split_eval = (logits, y, paths) if len(self.curve_val) == len(self.data.val) else None
        accuracy = float((logits.argmax(1) == y).float().mean())
        val_loss = float(F.cross_entropy(logits, y))
        held_acc = held_loss = math.nan
        if holdout_loader is not None:
            h_logits, h_y, _ = self.evaluate(model, holdout_loader, self.holdout)
            held_acc, held_loss = float((h_logits.argmax(1) == h_y).float().mean()), float(F.cross_entropy(h_logits, h_y))
        run_hooks(self.callbacks, "on_validation_end", self, model)
        # The lr of the epoch's last step, read off the schedule (valid after a resume too).
        lr = self.scheduler.base_lrs[0] * self.scheduler.lr_lambdas[0](pos.global_step - 1)
        lr_groups = {g.get("name", str(i)): base * fn(pos.global_step - 1) for i, (g, base, fn)
                     in enumerate(zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas))}
        t_start, seen_start, t_trained = self._epoch_clock
        images, train_seconds = pos.seen - seen_start, (t_trained or time.perf_counter()) - t_start
        with defer_sigint():
            self.settle_loss()
            epoch = pos.epoch + 1
            train_loss = pos.loss_sum / pos.seen if pos.seen else math.nan
            self.last_epoch = EpochResult(epoch, train_loss, val_loss, accuracy, held_acc, held_loss, lr)
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_accuracy", accuracy),
                               ("holdout_accuracy", held_acc), ("lr", lr)):
                if key != "holdout_accuracy" or self.holdout:
                    self.curves[key].append(value)
            pos.epoch, pos.step, pos.loss_sum, pos.seen = epoch, 0, 0.0, 0
            # Selection (on the hold-out slice of the training split only), then the checkpoint.
            run_hooks(self.callbacks, "on_epoch_end", self, model)
        self.ctx.event("epoch", epoch=epoch, train_loss=train_loss, val_loss=val_loss, val_accuracy=accuracy,
                       holdout_accuracy=None if math.isnan(held_acc) else held_acc, lr=lr,
                       seconds=round(time.perf_counter() - self.t0, 2), step=pos.global_step,
                       lr_groups=lr_groups,
                       images=images, curve_images=len(self.curve_val), val_images=len(self.data.val),
                       epoch_seconds=round(time.perf_counter() - t_start, 3),
                       train_seconds=round(train_seconds, 3))
        if self.stopped_early:
            stopper = self.selection.stopper
            self.ctx.event("early_stop", epoch=epoch, best_epoch=stopper.best_epoch, patience=stopper.patience)

    # ------------------------------------------------------------------ resume

    def _restore(self, ckpt: dict[str, Any], model: TransferClassifier) -> None:
        if ckpt["trainable"] != trainable_names(model):
            raise AdvisorError(f"checkpoint {self.path} trained other parameters than this run would",
                               hint="start over without resuming")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        try:  # read back like input: a position this run can be at, or a clear error
            pos = _Position(int(ckpt["epoch"]), int(ckpt["step_in_epoch"]), int(ckpt["global_step"]),
                            float(ckpt["epoch_loss_sum"]), int(ckpt["epoch_seen"]))
            valid = (0 <= pos.epoch <= self.cfg.epochs and 0 <= pos.step <= self.steps_per_epoch
                     and pos.global_step == pos.epoch * self.steps_per_epoch + pos.step
                     and math.isfinite(pos.loss_sum) and 0 <= pos.seen)
        except (KeyError, TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise AdvisorError(f"checkpoint {self.path} holds a position this run cannot be at",
                               hint="delete it to start the run over")
        self.pos = pos
        for cb in self.callbacks:
            cb.load_state_dict(ckpt)
        self.first_loss = ckpt.get("first_loss")
        self.curves = {k: list(ckpt["curves"].get(k, [])) for k in _CURVES}
        self.skipped = dict(ckpt["skipped"])
        self.seconds_before = float(ckpt["seconds"])
        self.resumed = True
        set_rng_state(ckpt["rng"])  # last: nothing after it may draw
        self.ctx.event("resumed", checkpoint=str(self.path), epoch=self.pos.epoch, step_in_epoch=self.pos.step,
                       global_step=self.pos.global_step)
