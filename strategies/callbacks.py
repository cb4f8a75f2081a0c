"""Small callbacks the fine-tune loop calls (Lightning's pattern): each owns one concern and its checkpointed state.

The loop (``strategies/finetune.py``) only trains, evaluates and keeps its position; around it:

* :class:`WarmStart`: BatchNorm set-up by the recipe's policy, then the LP-FT head (fresh fits only);
* :class:`WeightAveraging`: the EMA of the weights, swapped in for every evaluation;
* :class:`HoldoutSelection`: early stopping and best-epoch selection on the hold-out slice of
  the training split (never on the reported validation split);
* :class:`Checkpointing`: ``checkpoints/last.safetensors`` every ``every_steps`` steps, every
  epoch and on Ctrl-C; on resume it checks that the checkpoint belongs to this run.

Hooks run in list order, ``on_validation_end`` in reverse (like nested context managers: what a
start hook swapped in is still there for the later callbacks' end hooks). ``state_dict`` entries are merged into the checkpoint at top level
under stable keys, so resume restores the whole state.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from advisor.backbones import PRE_LOGITS
from advisor.backbones.classifier import TransferClassifier
from advisor.core import distributed
from advisor.core.errors import AdvisorError
from advisor.data.loading import mix_seed
from advisor.measure.features import extract_features
from advisor.measure.logistic import class_weights_from, cv_select_l2, fit_logistic, fit_standardizer
from strategies.resume import get_rng_state, load_checkpoint, save_checkpoint
from strategies.training import EarlyStopping, WeightEMA, reestimate_bn, trainable_bn_layers, trainable_names

# The loop (strategies.loop.FinetuneLoop) is not imported: it imports its callbacks, and a hook
# only reads the loop's attributes (duck typing), so the annotation names it without an import.
FinetuneLoop = Any

CHECKPOINT_FORMAT = "advisor-finetune-checkpoint-v3"
# Settings that change how a run executes but not what it computes: a resume may differ in them.
_RESUME_FREE = frozenset({"num_workers", "checkpoint_every_steps", "checkpoint_min_seconds", "compile"})


class Callback:
    """A hook into the fine-tune loop; every method is optional."""

    def on_fit_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """A fresh fit (not a resume), before the optimiser exists."""

    def on_train_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """The model holds its starting weights (fresh or resumed); the optimiser exists."""

    def on_optimizer_step(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """Right after an optimiser update (Ctrl-C deferred)."""

    def on_step_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """A training step is complete and counted."""

    def on_validation_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """Before the epoch's evaluations."""

    def on_validation_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """After the epoch's evaluations, in reverse list order (so what a start hook swapped in is still there)."""

    def on_epoch_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """The epoch is counted and its results are in ``loop.last_epoch`` (Ctrl-C deferred)."""

    def on_interrupt(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        """Ctrl-C during training."""

    @property
    def should_stop(self) -> bool:
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# --------------------------------------------------------------------------- warm start


class WarmStart(Callback):
    """BatchNorm set-up by the recipe's ``bn`` policy, then the warm-up head on the features training starts from."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] | None = None

    def on_fit_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        bn = loop.cfg.bn
        features = None
        if bn == "adapt":
            self._bn_pass(loop, model, layers=None, collect=False)  # every BN re-estimated, then frozen
        elif bn == "train":
            # One pass both re-estimates the trainable BN layers and, since they normalise with batch
            # statistics while it runs, yields exactly the features a training step's forward sees.
            features = self._bn_pass(loop, model, layers=trainable_bn_layers(model.backbone), collect=loop.cfg.head_warmup)
        if loop.cfg.head_warmup:
            self._warm_up_head(loop, model, features)

    def _bn_pass(self, loop: FinetuneLoop, model: TransferClassifier, *, layers,
                 collect: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        # Shuffled like training batches: in file order a batch holds one class, batch statistics then
        # subtract the class's own mean, and the features lose exactly what the head must learn
        # (measured: a cross-validated probe on such features scored 0.16 on a 2-class set).
        samples = loop.train_samples
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(mix_seed(loop.seed, -2)))
        loader = loop.eval_loader(samples, order=order.tolist(), shard=False)  # every rank needs the same statistics
        feats, labels = [], []

        def forward(x: torch.Tensor) -> None:
            out = model.backbone.forward_taps(x, [PRE_LOGITS])[PRE_LOGITS]
            if collect:
                feats.append(out.float().cpu())

        def batches():
            done = 0
            for batch in loader:
                loop.note_bad(batch.bad, samples)
                done += len(batch.y) + len(batch.bad)
                if batch.x is not None:
                    # Train-mode BN cannot normalise a batch of one; its statistics would be noise anyway.
                    if len(batch.y) > 1:
                        labels.append(batch.y)
                        yield loop.to_device(batch.x)
                loop.ctx.report("adapt_bn", done, len(samples))

        with loop.autocast():
            seen = reestimate_bn(model.backbone, batches(), forward=forward, layers=layers)
        if seen == 0:
            raise AdvisorError("no training image could be decoded")
        loop.ctx.event("adapt_bn", images=seen, layers="all" if layers is None else len(layers))
        return (torch.cat(feats), torch.cat(labels)) if collect else None

    def _warm_up_head(self, loop: FinetuneLoop, model: TransferClassifier,
                      features: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = loop.cfg
        if features is None:
            # Eval-mode features of the network as training starts: cached unless BN was re-estimated.
            feature_set = extract_features(loop.train_samples, loop.backbone, taps=[PRE_LOGITS], cache_dir=loop.ctx.cache_dir,
                                           use_cache=cfg.bn == "frozen", device=str(loop.dev), batch_size=cfg.batch_size,
                                           num_workers=loop.extract_workers,
                                           progress=lambda d, t: loop.ctx.report("features", d, t))
            for f in feature_set.summary.failed:
                loop.note_skipped(f.path, f.reason)
            if feature_set.labels is None or len(feature_set.labels) == 0:
                raise AdvisorError("no training image could be decoded")
            features = (feature_set.features[PRE_LOGITS], feature_set.labels)
        x, y = features
        # One scale shared by all features (fit_standardizer): per-feature scaling blows near-constant
        # features up to unit variance, the head puts weight on them, and once fine-tuning moves them
        # a little the logits explode.
        std = fit_standardizer(x)
        # The probe sees the natural class mix (no sampler), so imbalance is corrected in its loss.
        weights = class_weights_from(y, loop.num_classes) if cfg.class_weighting or cfg.balanced_sampler else None
        xs = std.apply(x)
        l2, how = cfg.head_l2, "set in the recipe"
        if l2 is None:
            # Cross-validated like the probes: a head fitted at a tiny L2 memorises the training set
            # (top probability ~1 on every image), so its gradients at the start of fine-tuning are ~0.
            l2, _ = cv_select_l2(xs, y, num_classes=loop.num_classes, class_weights=weights, seed=loop.seed,
                                 device=loop.dev, standardize=False)
            how = "cross-validated on the training split"
        W, b = fit_logistic(xs, y, num_classes=loop.num_classes, l2=l2, class_weights=weights, device=loop.dev)
        model.set_head(W, b, std.mean, std.std)
        logits = xs @ W.T + b
        self.summary = {"l2": l2, "l2_choice": how, "train_accuracy": round(float((logits.argmax(1) == y).float().mean()), 4),
                        "train_loss": round(float(F.cross_entropy(logits, y)), 4), "images": int(len(y)), "bn": cfg.bn}
        loop.ctx.event("head_warmup", **self.summary)

    def state_dict(self) -> dict[str, Any]:
        return {"head_warmup": self.summary}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.summary = state["head_warmup"]


# --------------------------------------------------------------------------- weight averaging


class WeightAveraging(Callback):
    """An EMA of the weights, updated after every optimiser step and swapped in for every evaluation."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: WeightEMA | None = None
        self._training: dict[str, torch.Tensor] | None = None

    def on_train_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        self.ema = WeightEMA(model, self.decay)

    def on_optimizer_step(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        self.ema.update(model)

    def on_validation_start(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        # Evaluate the weights that would be reported, then put the training weights back.
        self._training = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.load_into(model)

    def on_validation_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        model.load_state_dict(self._training)
        self._training = None

    def load_into(self, model: TransferClassifier) -> TransferClassifier:
        """Put the averaged weights into ``model`` (what a result reports)."""
        model.load_state_dict(self.ema.averaged())
        return model

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])


# --------------------------------------------------------------------------- selection on the hold-out slice


class HoldoutSelection(Callback):
    """Early stopping and best-epoch selection on the hold-out slice of the training split.

    Keeps the weights evaluated at the best hold-out epoch: the EMA's when there is one, since this
    callback comes after :class:`WeightAveraging` in the list and end hooks run in reverse order.
    """

    def __init__(self, patience: int | None, epochs: int) -> None:
        self.stopper = EarlyStopping(patience)
        self.epochs = epochs
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self._evaluated: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        self._evaluated = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def on_epoch_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        e = loop.last_epoch
        if self.stopper.update(e.epoch, e.holdout_accuracy, e.holdout_loss):
            self.best_state = self._evaluated
        self._evaluated = None
        self.stopped_early = self.stopper.should_stop and e.epoch < self.epochs

    @property
    def should_stop(self) -> bool:
        return self.stopped_early

    def state_dict(self) -> dict[str, Any]:
        return {"early_stopping": self.stopper.state_dict(), "best_model": self.best_state, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopper.load_state_dict(state["early_stopping"])
        self.best_state = state["best_model"]
        self.stopped_early = bool(state["stopped_early"])


# --------------------------------------------------------------------------- checkpoints


class Checkpointing(Callback):
    """The loop's whole state in one atomic file; a resume checks that it belongs to this run."""

    def __init__(self, path: Path, *, every_steps: int, min_seconds: float = 0.0) -> None:
        self.path, self.every_steps, self.min_seconds = path, every_steps, min_seconds
        self.last_save = time.monotonic()

    def on_step_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        # Every `every_steps` steps, but not more often than every `min_seconds`: on a GPU 50 steps can take
        # a second, and a full state (model, AdamW moments, EMA) is tens of MB written and synced each time.
        if (self.every_steps and loop.pos.global_step % self.every_steps == 0 and loop.pos.step < loop.steps_per_epoch
                and time.monotonic() - self.last_save >= self.min_seconds):
            self.save(loop, model)

    def on_epoch_end(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        self.save(loop, model)

    def on_interrupt(self, loop: FinetuneLoop, model: TransferClassifier) -> None:
        self.save(loop, model)

    def identity(self, loop: FinetuneLoop) -> dict[str, Any]:
        """What a checkpoint must share with the run that resumes it."""
        return {
            "format": CHECKPOINT_FORMAT,
            "strategy": loop.name,
            "config": loop.cfg.model_dump(mode="json"),
            "seed": loop.seed,
            "backbone": {"name": loop.backbone.name, "weights_digest": loop.backbone.weights_digest,
                         "transform": loop.backbone.transform_config.model_dump(mode="json")},
            "data": _fingerprint(loop),
            "frozen_stages": loop.frozen,
        }

    def save(self, loop: FinetuneLoop, model: TransferClassifier) -> Path:
        loop.settle_loss()
        if not distributed.is_main():  # every rank holds the same state; rank 0 writes it
            return self.path
        pos = loop.pos
        state = {
            **self.identity(loop),
            "trainable": trainable_names(model),
            "epoch": pos.epoch,
            "step_in_epoch": pos.step,
            "global_step": pos.global_step,
            "epoch_loss_sum": pos.loss_sum,
            "epoch_seen": pos.seen,
            "steps_per_epoch": loop.steps_per_epoch,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": loop.optimizer.state_dict(),
            "scheduler": loop.scheduler.state_dict(),
            "ema": None,
            **{k: v for cb in loop.callbacks for k, v in cb.state_dict().items()},
            "curves": {k: list(v) for k, v in loop.curves.items()},
            "skipped": dict(loop.skipped),
            "first_loss": loop.first_loss,
            "rng": get_rng_state(),
            "seconds": loop.seconds_before + time.perf_counter() - loop.t0,
        }
        saved = save_checkpoint(self.path, state)
        self.last_save = time.monotonic()
        return saved

    def read(self, loop: FinetuneLoop) -> dict[str, Any] | None:
        """The checkpoint to resume from (None on a fresh run); a foreign one is a clear error."""
        if not loop.ctx.resume or not self.path.exists():
            return None
        if not self.path.is_file():  # a FIFO or device would block the read
            raise AdvisorError(f"checkpoint {self.path} is not a regular file", hint="start over without resuming")
        ckpt = load_checkpoint(self.path)
        now = self.identity(loop)
        for what, key in (("format", "format"), ("strategy", "strategy"), ("seed", "seed"), ("backbone", "backbone"),
                          ("dataset", "data"), ("frozen_stages", "frozen_stages"), ("config", "config")):
            saved, expected = ckpt.get(key), now[key]
            if key == "config":
                saved, expected = _compared_config(saved or {}), _compared_config(expected)
            if saved != expected:
                detail = ""
                if key == "config":
                    diff = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
                    detail = f" ({', '.join(f'{k}: {saved.get(k)!r} then, {expected.get(k)!r} now' for k in diff)})"
                raise AdvisorError(f"checkpoint {self.path} is from a different run: its {what} differs{detail}",
                                   hint="resume with the same settings, or start over without resuming")
        return ckpt


def _fingerprint(loop: FinetuneLoop) -> str:
    data = loop.data
    rows = [data.classes, [(s.path, s.label) for s in data.train], [(s.path, s.label) for s in data.val]]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _compared_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUME_FREE}


def run_hooks(callbacks: Sequence[Callback], hook: str, loop: FinetuneLoop, model: TransferClassifier) -> None:
    """Call ``hook`` on every callback: in list order, ``on_validation_end`` in reverse."""
    ordered = reversed(callbacks) if hook == "on_validation_end" else callbacks
    for cb in ordered:
        getattr(cb, hook)(loop, model)
