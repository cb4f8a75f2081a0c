"""The fine-tune loop's callbacks, each alone and in the order the loop runs them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from strategies.callbacks import HoldoutSelection, WeightAveraging, run_hooks
from strategies.loop import EpochResult


def _epoch(epoch: int, holdout_accuracy: float, holdout_loss: float = 1.0) -> EpochResult:
    return EpochResult(epoch, 0.5, 0.5, 0.5, holdout_accuracy, holdout_loss, 1e-3)


def test_weight_averaging_swaps_the_ema_in_for_validation_and_the_training_weights_back():
    model = nn.Linear(3, 2)
    ema = WeightAveraging(decay=0.5)
    ema.on_train_start(None, model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.on_optimizer_step(None, model)  # warmed-up decay min(0.5, 2/11): the EMA moved part of the way
    trained = model.weight.detach().clone()
    ema.on_validation_start(None, model)
    averaged = model.weight.detach().clone()
    assert not torch.equal(averaged, trained) and not torch.equal(averaged, start)
    assert torch.allclose(averaged, start + (1 - 2 / 11), atol=1e-6)
    ema.on_validation_end(None, model)
    assert torch.equal(model.weight, trained)


def test_holdout_selection_snapshots_the_evaluated_weights_and_stops_after_patience():
    model = nn.Linear(3, 2)
    ema = WeightAveraging(decay=0.9)
    selection = HoldoutSelection(patience=2, epochs=10)
    callbacks = [ema, selection]  # the loop's order: end hooks run in reverse, so the snapshot sees the EMA
    loop = SimpleNamespace(last_epoch=None)
    ema.on_train_start(loop, model)
    snapshots = []
    for epoch, acc in enumerate([0.6, 0.8, 0.7, 0.75], start=1):
        with torch.no_grad():
            model.weight.add_(float(epoch))
        run_hooks(callbacks, "on_optimizer_step", loop, model)
        run_hooks(callbacks, "on_validation_start", loop, model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})  # what was evaluated
        run_hooks(callbacks, "on_validation_end", loop, model)
        loop.last_epoch = _epoch(epoch, acc)
        run_hooks(callbacks, "on_epoch_end", loop, model)
        if selection.should_stop:
            break
    assert selection.stopper.best_epoch == 2 and epoch == 4 and selection.should_stop
    assert all(torch.equal(selection.best_state[k], snapshots[1][k]) for k in snapshots[1])
    # its state round-trips through a checkpoint
    restored = HoldoutSelection(patience=2, epochs=10)
    restored.load_state_dict(selection.state_dict())
    assert restored.stopper.best_epoch == 2 and restored.should_stop


def test_holdout_selection_never_stops_on_the_last_epoch_or_without_patience():
    selection = HoldoutSelection(patience=1, epochs=2)
    loop = SimpleNamespace(last_epoch=None)
    model = nn.Linear(2, 2)
    for epoch, acc in ((1, 0.9), (2, 0.1)):
        selection.on_validation_end(loop, model)
        loop.last_epoch = _epoch(epoch, acc)
        selection.on_epoch_end(loop, model)
    assert not selection.should_stop  # the schedule ended anyway: not an early stop
    never = HoldoutSelection(patience=None, epochs=5)
    for epoch in range(1, 5):
        never.on_validation_end(loop, model)
        loop.last_epoch = _epoch(epoch, math.nan if epoch > 1 else 0.5)
        never.on_epoch_end(loop, model)
    assert not never.should_stop
