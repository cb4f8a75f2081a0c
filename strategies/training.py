"""Reusable pieces of a fine-tune, independent of any one training loop: what trains and how.

* freezing: :func:`freeze`, :func:`unfreeze`, :func:`freeze_stages` (by backbone depth);
* BatchNorm: :func:`set_bn_eval`, :func:`train_mode` (frozen BN layers stay in eval mode, so
  their running statistics never move), :func:`reestimate_bn` (AdaBN);
* optimisation: :func:`param_groups` (head vs backbone learning rate, optional layer-wise
  decay, no weight decay on 1-D parameters), :func:`warmup_cosine`, :class:`WeightEMA`,
  :func:`set_drop_path`, :class:`EarlyStopping` (on a :func:`holdout_split` of the training data).

The data order and checkpoints are in ``strategies.resume``, the image transforms in ``strategies.transforms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from advisor.backbones.classifier import TransferClassifier, stage_parameters
from advisor.core.errors import AdvisorError

# --------------------------------------------------------------------------- freezing


def freeze(module: nn.Module) -> None:
    """``requires_grad = False`` on every parameter of ``module`` (BN modes: see :func:`train_mode`)."""
    for p in module.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """``requires_grad = True`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(True)


def freeze_stages(model: TransferClassifier, frozen: int) -> None:
    """Freeze the input side of the backbone: ``frozen`` stages plus the stem.

    ``frozen = k >= 1`` freezes the stem (depth 0) and stages 1..k; deeper stages, the
    backbone's head layers (depth S+1) and the new head train. ``frozen = 0`` trains every
    backbone layer, stem included (a full fine-tune). The ImageNet classifier is always frozen:
    its output is never used, so it would only collect weight decay.
    """
    stages = model.backbone.num_stages()
    if not 0 <= frozen <= stages:
        raise AdvisorError(f"frozen_stages must be between 0 and {stages} for {model.backbone.name}, got {frozen}")
    last_frozen_depth = frozen if frozen > 0 else -1
    freeze(model.backbone)
    for depth, params in stage_parameters(model.backbone).items():
        if depth > last_frozen_depth:
            for _, p in params:
                p.requires_grad_(True)
    unfreeze(model.head)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that currently require gradients (the freeze state)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- BatchNorm


def _bn_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def _is_frozen_bn(bn: _BatchNorm) -> bool:
    # A BN without affine parameters has nothing to train, so it counts as frozen too.
    return not any(p.requires_grad for p in bn.parameters(recurse=False))


def set_bn_eval(module: nn.Module) -> None:
    """Put every BatchNorm layer inside ``module`` in eval mode (running statistics are used, not updated)."""
    for bn in _bn_layers(module):
        bn.eval()


def trainable_bn_layers(module: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers whose affine parameters train (the ones batch statistics would reach)."""
    return [bn for bn in _bn_layers(module) if not _is_frozen_bn(bn)]


def train_mode(model: nn.Module, *, bn_train: bool = True) -> None:
    """``model.train()``, except that frozen parts go to eval mode (and every BN with ``bn_train=False``).

    Explicitly: every BatchNorm layer whose parameters are frozen is put in eval mode. A frozen
    layer must compute the function it had when frozen; in train mode a BN normalises with
    batch statistics and overwrites its running statistics, so a "frozen" stage would drift
    (and be noisy at small batch sizes). Likewise every module whose parameters are all frozen
    (a frozen block or stage) goes to eval mode, which also turns off dropout / drop-path
    inside it: a frozen part then computes during training exactly what it computes at inference.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            if _is_frozen_bn(m) or not bn_train:
                m.eval()
            continue
        flags = [p.requires_grad for p in m.parameters()]
        if flags and not any(flags):
            m.eval()


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[torch.Tensor], *, forward: Callable | None = None,
                  layers: Sequence[_BatchNorm] | None = None) -> int:
    """AdaBN (Li et al. 2016): replace BatchNorm running statistics by those of ``batches``.

    ``layers`` (default: every BN of ``model``) run in train mode with ``momentum=None``, so
    their running mean/var become the plain average over the batches (per-batch statistics,
    equally weighted) instead of an exponential average that would still remember ImageNet;
    the rest of the model runs in eval mode (no dropout, other BN layers keep their statistics).
    While the pass runs, the re-estimated layers normalise with batch statistics: what
    ``forward`` sees is what a train-mode step sees. Weights are untouched. Returns the number
    of images seen; the model is left in eval mode.
    """
    layers = [bn for bn in (_bn_layers(model) if layers is None else layers) if bn.track_running_stats]
    momenta = [bn.momentum for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for x in batches:
            (forward or model)(x)
            seen += x.shape[0]
    finally:
        for bn, m in zip(layers, momenta):
            bn.momentum = m
        model.eval()
    return seen


# --------------------------------------------------------------------------- optimisation


def param_groups(
    model: TransferClassifier, lr_head: float, lr_backbone: float, weight_decay: float, *, layer_decay: float = 1.0
) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: head / backbone, each split by weight decay.

    Biases and normalisation weights (every 1-D parameter) get no weight decay: decaying a BN
    scale towards 0 shrinks activations rather than regularising. With ``layer_decay < 1`` the
    backbone's learning rate falls by that factor per depth below the top (stem, stages, head
    layers: depth 0..S+1), so generic early layers move least. Empty groups are left out; each
    group carries a ``name`` (``head``, ``head_no_decay``, ``backbone``/``backbone_no_decay``,
    with ``@depth`` appended under layer decay).
    """
    head = {id(p) for p in model.head.parameters()}
    depth_of: dict[int, int] = {}
    top = 0
    if layer_decay != 1.0:
        for depth, params in stage_parameters(model.backbone).items():
            top = max(top, depth)
            depth_of.update({id(p): depth for _, p in params})
    groups: dict[str, dict[str, Any]] = {}
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head else "backbone"
        decay = p.ndim > 1
        key = part if decay else f"{part}_no_decay"
        lr = lr_head
        if part == "backbone":
            lr = lr_backbone
            if id(p) in depth_of:
                key += f"@{depth_of[id(p)]}"
                lr = lr_backbone * layer_decay ** (top - depth_of[id(p)])
        group = groups.setdefault(key, {"name": key, "params": [], "lr": lr, "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    order = {"head": 0, "head_no_decay": 1}
    return sorted(groups.values(), key=lambda g: (order.get(g["name"], 2), g["name"]))


class WeightEMA:
    """Exponential moving average of a model's floating-point state (parameters and BN statistics).

    ``update`` after every optimiser step: ``ema = d * ema + (1 - d) * current``, with the decay
    warmed up as ``min(decay, (1 + t) / (10 + t))`` so the first steps do not keep the start
    weights for a whole window. Integer buffers are copied. The state is plain tensors, so it
    checkpoints with ``weights_only=True``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = float(decay), 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.model = model
        # The model's tensors, paired once (state_dict() per step costs more than the update on a GPU).
        # Integer buffers (BN batch counters) are copied when the state is read: the same values.
        live = model.state_dict()
        self._floats = [(self.state[k], live[k]) for k in self.state if live[k].is_floating_point()]
        self._ints = [(self.state[k], live[k]) for k in self.state if not live[k].is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if model is not self.model:
            raise ValueError("WeightEMA.update got another model than the one it averages")
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema, live = [e for e, _ in self._floats], [v.detach() for _, v in self._floats]
        torch._foreach_lerp_(ema, live, 1.0 - d)  # one fused kernel per dtype/device group on CUDA

    def _sync_ints(self) -> None:
        for e, v in self._ints:
            e.copy_(v)

    def averaged(self) -> dict[str, torch.Tensor]:
        """The averaged state, ready for ``load_state_dict``."""
        self._sync_ints()
        return self.state

    def state_dict(self) -> dict[str, Any]:
        self._sync_ints()
        return {"decay": self.decay, "updates": self.updates, "state": {k: v.cpu() for k, v in self.state.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.decay, self.updates = float(saved["decay"]), int(saved["updates"])
        for k, v in saved["state"].items():
            self.state[k].copy_(v)


def set_drop_path(model: TransferClassifier, rate: float, *, min_depth: int = 0) -> int:
    """Stochastic depth in the backbone's residual blocks, rising linearly with block order to ``rate``.

    Only blocks at depth >= ``min_depth`` (the trainable ones) get it: a frozen block must compute
    what it did when frozen. Works on timm blocks (a ``drop_path`` attribute) and torchvision's
    ``StochasticDepth``. Returns how many blocks were set (0 for a backbone without either).
    """
    from timm.layers import DropPath
    from torchvision.ops import StochasticDepth

    blocks = [(n, m) for n, m in model.backbone.model.named_modules()
              if isinstance(getattr(m, "drop_path", None), (nn.Identity, DropPath)) or isinstance(m, StochasticDepth)]
    count = 0
    for i, (name, m) in enumerate(blocks):
        if model.backbone.stage_of(name)[1] < min_depth:
            continue
        r = rate * i / max(1, len(blocks) - 1)
        if isinstance(m, StochasticDepth):
            m.p = r
        else:
            m.drop_path = DropPath(r) if r > 0 else nn.Identity()
        count += 1
    return count


def holdout_split(labels: Sequence[int], fraction: float, *, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, hold-out positions): ``round(fraction * n)`` of each class held out, one at least
    where the class has 2 or more images (a class of one stays in training). Seeded and stratified."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train, held = [], []
    for _, idx in sorted(by_class.items()):
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        k = 0 if len(idx) < 2 else min(len(idx) - 1, max(1, round(fraction * len(idx))))
        held += order[:k]
        train += order[k:]
    return sorted(train), sorted(held)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to each group's lr over ``warmup_steps``, then cosine decay to 0 at ``total_steps``.

    The factor at step ``s`` (0-based; the scheduler is stepped after every optimizer step) is
    ``(s + 1) / (warmup_steps + 1)`` during warm-up, so no step is spent at lr 0, then
    ``0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))``. The factor is a
    pure function of the step, so ``state_dict()`` / ``load_state_dict()`` restore it exactly.
    """
    warmup_steps, total_steps = max(0, int(warmup_steps)), max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EarlyStopping:
    """Early stopping on validation accuracy; ties on accuracy are broken by lower validation loss.

    ``patience`` epochs without improvement stop the run (``None``: never stop). The tie-break
    matters on small validation sets, where accuracy saturates while the loss still tells
    better models apart.
    """

    patience: int | None = None
    best_accuracy: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, epoch: int, accuracy: float, loss: float) -> bool:
        """Record an epoch's validation result; True when it is the new best."""
        improved = accuracy > self.best_accuracy or (accuracy == self.best_accuracy and loss < self.best_loss)
        if improved:
            self.best_accuracy, self.best_loss, self.best_epoch, self.bad_epochs = accuracy, loss, epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best_accuracy": self.best_accuracy, "best_loss": self.best_loss,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_accuracy = float(state["best_accuracy"])
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
