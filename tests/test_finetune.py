"""Fine-tuning: freezing and BatchNorm, optimiser pieces, deterministic data, exact resume."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_class_images
from torch import nn

from advisor.backbones import create_backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.core.errors import AdvisorError
from advisor.data.imagefile import load_image
from advisor.data.loading import ImageDataset, collate_skip, mix_seed
from advisor.data.scan import scan_dataset
from advisor.decide.models import RunPlan
from advisor.decide.recipe import FinetuneRecipe
from strategies import get_strategy
from strategies.base import RunContext, RunData
from strategies.loop import FinetuneConfig, FullFinetuneConfig, default_frozen_stages
from strategies.resume import EpochBatchSampler, defer_sigint, load_checkpoint, save_checkpoint, steps_per_epoch
from strategies.training import (
    EarlyStopping,
    WeightEMA,
    freeze_stages,
    holdout_split,
    param_groups,
    reestimate_bn,
    train_mode,
    warmup_cosine,
)
from strategies.transforms import EvalTransform, TrainTransform

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 6  # 24 training images, batch 4


def tiny_backbone():
    return create_backbone("test/tiny-cnn", pretrained=False, seed=0)


def tiny_model(frozen: int) -> TransferClassifier:
    torch.manual_seed(0)
    model = TransferClassifier(tiny_backbone(), ["pre_logits"], 2)
    freeze_stages(model, frozen)
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finetune-data")
    write_class_images(root / "train", {"red": 12, "blue": 12}, seed=0)
    write_class_images(root / "val", {"red": 4, "blue": 4}, seed=1)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("finetune-cache")


def fit(strategy: str, root: Path, run_dir: Path, cache: Path, *, resume: bool = False, progress=None, **config):
    s = get_strategy(strategy)
    cfg = s.Config(**{"epochs": 3, "batch_size": 4, "input_size": 32, "num_workers": 0, **config})
    data = RunData.from_scan(scan_dataset(root))
    ctx = RunContext(run_dir=run_dir, device=torch.device("cpu"), seed=0, cache_dir=cache, num_workers=0,
                     resume=resume, progress=progress)
    return s.fit(data, tiny_backbone(), cfg, ctx)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def stage_params(model: TransferClassifier, prefix: str) -> list[nn.Parameter]:
    return [p for n, p in model.backbone.model.named_parameters() if n.startswith(prefix)]


# --------------------------------------------------------------------------- freezing and BatchNorm


def test_partial_freeze_trains_only_the_deep_stage_and_the_head():
    model = tiny_model(2)
    net = model.backbone.model
    assert all(not p.requires_grad for p in stage_params(model, "stages.0") + stage_params(model, "stages.1"))
    assert all(p.requires_grad for p in stage_params(model, "stages.2"))
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(not p.requires_grad for p in net.fc.parameters())  # the ImageNet classifier

    train_mode(model)
    assert model.training and model.head.training and net.stages[2][1].training
    assert not net.stages[0][1].training and not net.stages[1][1].training  # frozen BN: eval mode

    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(model, 1e-2, 1e-2, 1e-2))
    x = torch.randn(8, 3, 32, 32) * 2 + 1  # far from the init statistics: train-mode BN would move
    F.cross_entropy(model(x), torch.tensor([0, 1] * 4)).backward()
    opt.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(("backbone.model.stages.0.", "backbone.model.stages.1.", "backbone.model.fc.")):
            assert torch.equal(before[key], after[key]), key  # weights and running statistics alike
    for key in ("backbone.model.stages.2.1.running_mean", "backbone.model.stages.2.0.weight", "head.weight"):
        assert not torch.equal(before[key], after[key]), key


def test_full_freeze_trains_every_backbone_layer_but_the_imagenet_classifier():
    model = tiny_model(0)
    for name, p in model.backbone.model.named_parameters():
        assert p.requires_grad == (not name.startswith("fc.")), name
    train_mode(model)
    assert all(m.training for m in model.backbone.model.stages.modules())
    with pytest.raises(AdvisorError, match="between 0 and 3"):
        freeze_stages(model, 4)


def test_reestimate_bn_replaces_running_statistics_by_the_data_average():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Dropout(0.5))
    batches = [torch.randn(6, 3, 5, 5) * 3 + 2 for _ in range(2)]
    seen = reestimate_bn(net, batches)
    bn = net[1]
    with torch.no_grad():
        acts = [net[0](b) for b in batches]
    mean = torch.stack([a.mean((0, 2, 3)) for a in acts]).mean(0)
    var = torch.stack([a.var((0, 2, 3), unbiased=True) for a in acts]).mean(0)
    assert seen == 12 and not net.training and bn.momentum == 0.1
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)


# --------------------------------------------------------------------------- optimiser pieces


def test_param_groups_split_lr_and_weight_decay():
    model = tiny_model(2)
    groups = {g["name"]: g for g in param_groups(model, 1e-2, 1e-4, 0.05)}
    assert set(groups) == {"head", "head_no_decay", "backbone", "backbone_no_decay"}
    assert groups["head"]["params"] == [model.head.weight] and groups["head_no_decay"]["params"] == [model.head.bias]
    assert groups["head"]["lr"] == groups["head_no_decay"]["lr"] == 1e-2
    assert groups["backbone"]["lr"] == groups["backbone_no_decay"]["lr"] == 1e-4
    for g in groups.values():
        assert all((p.ndim > 1) == (g["weight_decay"] == 0.05) for p in g["params"])
        assert all(p.requires_grad for p in g["params"])
    assert all(p.ndim == 1 for p in groups["backbone_no_decay"]["params"])
    grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_layer_decay_lowers_the_lr_of_earlier_depths():
    model = tiny_model(0)
    groups = param_groups(model, 1e-2, 1e-3, 0.05, layer_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in groups}
    # tiny-cnn: stem absent, stages at depths 1..3, no head layers: the top stage keeps lr_backbone.
    assert lrs["head"] == 1e-2 and lrs["backbone@3"] == pytest.approx(1e-3)
    assert lrs["backbone@2"] == pytest.approx(5e-4) and lrs["backbone@1"] == pytest.approx(2.5e-4)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_weight_ema_averages_and_restores():
    net = nn.Linear(2, 1)
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    start = ema.state["weight"].clone()
    ema.update(net)  # warm-up decay min(0.5, 2/11)
    d = 2 / 11
    torch.testing.assert_close(ema.state["weight"], d * start + (1 - d) * torch.ones_like(start))
    again = WeightEMA(nn.Linear(2, 1), decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.decay == 0.5 and again.updates == 1 and torch.equal(again.state["weight"], ema.state["weight"])


def test_holdout_split_is_stratified_seeded_and_disjoint():
    labels = [0] * 10 + [1] * 20 + [2]
    train, held = holdout_split(labels, 0.1, seed=3)
    assert sorted(train + held) == list(range(31)) and not set(train) & set(held)
    assert [labels[i] for i in held].count(0) == 1 and [labels[i] for i in held].count(1) == 2
    assert 30 in train  # a class of one image stays in training
    assert holdout_split(labels, 0.1, seed=3) == (train, held) and holdout_split(labels, 0.1, seed=4) != (train, held)


def test_warmup_cosine_values_and_restore():
    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        return opt, warmup_cosine(opt, warmup_steps=4, total_steps=14)

    opt, sched = make()
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[3] == pytest.approx(0.8)  # linear warm-up, never 0
    assert lrs[4] == pytest.approx(1.0) and lrs[9] == pytest.approx(0.5)  # cosine: peak, half-way
    assert lrs[13] == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 10)))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)  # reaches 0 at total_steps

    opt, sched = make()
    for _ in range(6):
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for _ in range(5):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()


def test_early_stopping_on_accuracy_with_loss_tiebreak():
    stop = EarlyStopping(patience=2)
    assert stop.update(1, 0.5, 1.0)
    assert stop.update(2, 0.5, 0.8)  # same accuracy, lower loss: better
    assert not stop.update(3, 0.4, 0.1)
    assert not stop.should_stop
    assert not stop.update(4, 0.5, 0.9)
    assert stop.should_stop and stop.best_epoch == 2
    again = EarlyStopping(patience=2)
    again.load_state_dict(stop.state_dict())
    assert again == stop


# --------------------------------------------------------------------------- deterministic data


def test_epoch_batch_sampler_is_a_seeded_permutation_resumable_at_any_batch():
    full = list(EpochBatchSampler(10, 3, seed=7, epoch=2))
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100003 + 2)).tolist()
    assert len(full) == steps_per_epoch(10, 3) == 3  # a final batch of one image is dropped
    assert [i for batch in full for _, i in batch] == expected[:9]
    assert all(e == 2 for batch in full for e, _ in batch)
    assert list(EpochBatchSampler(10, 3, seed=7, epoch=2, start=1)) == full[1:]
    assert list(EpochBatchSampler(10, 3, seed=7, epoch=3)) != full
    weights = torch.tensor([1.0] * 8 + [4.0] * 2)
    balanced = list(EpochBatchSampler(10, 5, seed=0, epoch=0, weights=weights))
    assert balanced == list(EpochBatchSampler(10, 5, seed=0, epoch=0, weights=weights))
    assert sum(len(b) for b in balanced) == 10


def test_augmentation_depends_on_seed_epoch_index_not_on_workers(dataset):
    samples = scan_dataset(dataset).split("train")
    tc = tiny_backbone().transform_config
    ds = ImageDataset.from_samples(samples, TrainTransform(tc, 32), seed=3)
    _, x, label, reason = ds[(1, 5)]
    assert reason is None and x.shape == (3, 32, 32) and label == samples[5].label
    assert torch.equal(ds[(1, 5)][1], x) and not torch.equal(ds[(2, 5)][1], x)

    def batches(workers):
        sampler = EpochBatchSampler(len(samples), 4, seed=3, epoch=1)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_skip)
        return [(b.index, b.x) for b in loader]

    for (i0, x0), (i2, x2) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(i0, i2) and torch.equal(x0, x2)
    evaluated = ImageDataset.from_samples(samples, EvalTransform(tc))[(0, 5)][1]
    assert evaluated.dtype == torch.uint8  # normalised on the device, to the bit what the float transform gives
    assert torch.equal(tc.normalize(evaluated[None])[0], tc.eval_transform()(load_image(samples[5].path)))


def test_ctrl_c_waits_for_the_end_of_a_deferred_block():
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: Ctrl-C is this test's subject, so it sets Python's own for its span.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with defer_sigint():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("after the signal")
        assert done == ["after the signal"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_checkpoint_is_atomic_and_loads_weights_only(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "lr": [1e-3, 1e-4], "name": "x", "best": None,
             "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, "inf": -math.inf}
    state["optimizer"] = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"params": [0], "lr": 0.1}]}
    path = save_checkpoint(tmp_path / "ck" / "last.safetensors", state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.safetensors"]
    with open(path, "rb") as f:  # safetensors: an 8-byte header length, then JSON; never a pickle
        assert f.read(9)[8:] == b"{"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["rng"]["python"] == state["rng"]["python"]
    assert loaded["lr"] == [1e-3, 1e-4] and loaded["inf"] == -math.inf and loaded["best"] is None
    assert list(loaded["optimizer"]["state"]) == [0]  # int keys survive (an optimizer needs them)
    path.write_bytes(b"garbage")
    with pytest.raises(AdvisorError, match="checkpoint .* is damaged"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- the strategies


def test_config_from_plan():
    plan = RunPlan(dataset="d", backbone="test/tiny-cnn", strategy="partial-finetune", rule_ids=[], batch_size=8,
                   input_size=64, recipe=FinetuneRecipe(epochs=4, lr_head=1e-3, bn="adapt", label_smoothing=0.2))
    partial = get_strategy("partial-finetune").config_from_plan(plan)
    assert isinstance(partial, FinetuneConfig) and partial.frozen_stages is None  # resolved per backbone in fit
    assert partial.backbone_lr == pytest.approx(1e-4) and partial.bn == "adapt" and partial.input_size == 64
    assert partial.label_smoothing == 0.2 and partial.epochs == 4 and partial.batch_size == 8
    # A version-1 plan (recipe fields at the top level) is read into a recipe.
    old = RunPlan.model_validate({"version": 1, "dataset": "d", "backbone": "b", "strategy": "full-finetune", "rule_ids": [],
                                  "lr_head": 2e-3, "epochs": 7, "adapt_bn": True, "augment": False})
    assert old.version == 2 and old.recipe.epochs == 7 and old.recipe.lr_head == 2e-3
    assert old.recipe.bn == "adapt" and old.recipe.augment == "none"
    assert get_strategy("partial-finetune").config_from_plan(plan.model_copy(update={"frozen_stages": 1})).frozen_stages == 1
    full = get_strategy("full-finetune").config_from_plan(plan)
    assert isinstance(full, FullFinetuneConfig) and full.frozen_stages == 0
    assert [default_frozen_stages(s) for s in (1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2]  # round(0.4 s), one stage trainable
    with pytest.raises(ValueError):
        FullFinetuneConfig(frozen_stages=2)


@pytest.mark.parametrize("strategy", ["partial-finetune", "full-finetune"])
def test_finetune_trains(strategy, dataset, cache_dir, tmp_path):
    initial = tiny_backbone().model.state_dict()
    rng = torch.get_rng_state()
    # No augmentation: on 24 images a TrivialAugment draw moves an epoch's loss more than training does
    # (seen: 0.63, 0.34, 1.19, 0.27), so a falling loss is only a test of training on a fixed objective.
    result, model = fit(strategy, dataset, tmp_path / "run", cache_dir, epochs=4, head_warmup=False,
                        lr_head=1e-2, lr_backbone=1e-2, augment="none")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    losses = result.curves["train_loss"]
    assert len(losses) == 4 and losses[-1] < losses[0] and min(losses[1:]) < 0.8 * losses[0]
    assert result.metrics.val_accuracy > 0.5 and result.metrics.n_val == 8
    assert result.epochs_completed == 4 and not result.stopped_early
    assert result.selected["epochs_run"] == 4 and result.selected["best_epoch"] is None  # no selection: full schedule
    assert result.selected["reported_weights"] == "EMA"
    assert not model.training
    final = model.backbone.model.state_dict()
    moved = {k for k in initial if not torch.equal(initial[k], final[k])}
    if strategy == "partial-finetune":
        assert result.selected["frozen_stages"] == 1  # round(0.4 * 3)
        assert not any(k.startswith(("stages.0.", "fc.")) for k in moved)  # incl. BN running stats
        assert {"stages.1.0.weight", "stages.2.0.weight"} <= moved
    else:
        assert result.selected["frozen_stages"] == 0
        assert {"stages.0.0.weight", "stages.1.0.weight", "stages.2.0.weight"} <= moved
        assert not any(k.startswith("fc.") for k in moved)
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)  # the default BN policy: frozen
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert result.trainable_params == trainable < result.total_params == sum(p.numel() for p in model.parameters())
    kinds = [e["event"] for e in events(tmp_path / "run")]
    assert kinds.count("epoch") == 4 and kinds[-1] == "finetune_done"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors")
    assert ckpt["epoch"] == 4 and ckpt["step_in_epoch"] == 0 and ckpt["frozen_stages"] == result.selected["frozen_stages"]
    assert {k: v for k, v in ckpt["curves"].items() if v} == result.curves and set(ckpt["trainable"]) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_learning_curve_reads_a_stratified_subset_of_a_large_validation_split_and_the_result_all_of_it(
        dataset, cache_dir, tmp_path, monkeypatch):
    from strategies.loop import FinetuneLoop

    seen = []
    evaluate = FinetuneLoop.evaluate

    def counting(self, model, loader, samples):
        out = evaluate(self, model, loader, samples)
        seen.append(sorted(out[2]))
        return out

    monkeypatch.setattr(FinetuneLoop, "evaluate", counting)
    result, _ = fit("full-finetune", dataset, tmp_path / "run", cache_dir, epochs=2, head_warmup=False, curve_images=4)
    every_val = sorted(str(p) for p in (dataset / "val").rglob("*.png"))
    curve, final = seen[:2], seen[-1]
    assert len(seen) == 3 and curve[0] == curve[1]  # the same 4 images each epoch, then the whole split once
    assert len(curve[0]) == 4 and set(curve[0]) < set(every_val)
    assert {Path(p).parent.name for p in curve[0]} == {"red", "blue"}  # stratified: both classes
    assert final == every_val and result.metrics.n_val == 8 and result.selected["curve_images"] == 4
    assert len(result.curves["val_accuracy"]) == 2
    # The curve reading the whole split: the last epoch's pass (the EMA weights, as reported) is the result
    seen.clear()
    whole, _ = fit("full-finetune", dataset, tmp_path / "whole", cache_dir, epochs=2, head_warmup=False)
    assert len(seen) == 2 and seen[-1] == every_val and whole.selected["curve_images"] == 8
    assert whole.metrics.val_accuracy == whole.curves["val_accuracy"][-1]


def test_curve_images_is_the_whole_split_unless_it_outweighs_training():
    from advisor.decide.recipe import CURVE_MIN_IMAGES, curve_images

    assert curve_images(200, 800) == 200  # the usual 20 % split: every image, every epoch
    assert curve_images(864, 10) == CURVE_MIN_IMAGES  # 2 images per class against a whole validation split
    assert curve_images(5000, 1000) == 1000 and curve_images(0, 10) == 0


def test_head_warmup_and_adapt_bn(dataset, cache_dir, tmp_path):
    progress = []
    result, model = fit("partial-finetune", dataset, tmp_path / "run", cache_dir, epochs=1, bn="adapt", frozen_stages=2,
                        progress=lambda stage, done, total: progress.append(stage))
    assert {"adapt_bn", "features", "train"} <= set(progress)
    warm = result.selected["head_warmup"]
    assert warm["train_accuracy"] == 1.0 and warm["bn"] == "adapt" and warm["l2_choice"].startswith("cross-validated")
    # Frozen BN layers hold exactly the AdaBN estimate on the training images: training left them alone.
    reference = TransferClassifier(tiny_backbone(), ["pre_logits"], 2).to(memory_format=torch.channels_last)
    samples = scan_dataset(dataset).split("train")
    ds = ImageDataset.from_samples(samples, EvalTransform(reference.backbone.transform_config))
    # The same shuffled batches as the run's BN pass (a permutation seeded by (seed, -2)).
    order = torch.randperm(24, generator=torch.Generator().manual_seed(mix_seed(0, -2))).tolist()
    tc = reference.backbone.transform_config
    batches = [tc.normalize(torch.stack([ds[(0, i)][1] for i in order[j:j + 4]])) for j in range(0, 24, 4)]
    reestimate_bn(reference.backbone, (b.contiguous(memory_format=torch.channels_last) for b in batches))
    for name in ("stages.0.1", "stages.1.1", "stages.2.1"):  # under 'adapt' the trainable stage's BN is frozen too
        ours, ref = model.backbone.model.get_submodule(name), reference.backbone.model.get_submodule(name)
        assert torch.equal(ours.running_mean, ref.running_mean) and torch.equal(ours.running_var, ref.running_var)
    assert not torch.equal(ref.running_mean, torch.zeros_like(ref.running_mean))


def test_frozen_bn_never_moves_running_statistics(dataset, cache_dir, tmp_path):
    initial = tiny_backbone().model.state_dict()
    result, model = fit("full-finetune", dataset, tmp_path / "run", cache_dir, epochs=2, bn="frozen", ema=None,
                        lr_head=1e-2, lr_backbone=1e-2)
    final = model.backbone.model.state_dict()
    stats = [k for k in initial if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(initial[k], final[k]) for k in stats)
    assert not torch.equal(initial["stages.0.0.weight"], final["stages.0.0.weight"])  # the weights did train


@pytest.mark.parametrize("bn", ["frozen", "adapt", "train"])
def test_first_training_batch_starts_where_the_warm_head_left_off(bn, dataset, cache_dir, tmp_path):
    # Without augmentation or label smoothing the first step sees the features the head was fitted on
    # (same BatchNorm state): its loss must be close to the warm head's, not the 0.0016 -> 0.41 jump
    # a head fitted on eval-mode features meets under train-mode BatchNorm.
    result, _ = fit("full-finetune", dataset, tmp_path / "run", cache_dir, epochs=1, bn=bn, augment="none",
                    label_smoothing=0.0, drop_path=0.0, head_l2=1.0)
    warm, first = result.selected["head_warmup"]["train_loss"], result.selected["first_batch_loss"]
    assert warm > 0.01  # an L2 of 1 keeps the head from memorising
    assert first <= 2 * warm, (first, warm)


def test_corrupt_training_image_is_skipped(tmp_path, cache_dir):
    root = write_class_images(tmp_path / "data" / "train", {"red": 6, "blue": 6}).parent
    write_class_images(root / "val", {"red": 2, "blue": 2}, seed=1)
    scan = scan_dataset(root)
    bad = scan.split("train")[3].path
    Path(bad).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # broken after the scan looked at it
    s = get_strategy("full-finetune")
    ctx = RunContext(run_dir=tmp_path / "run", device=torch.device("cpu"), cache_dir=cache_dir, num_workers=0)
    result, _ = s.fit(RunData.from_scan(scan), tiny_backbone(), s.Config(epochs=2, batch_size=4, input_size=32), ctx)
    assert result.epochs_completed == 2 and result.selected["skipped_images"] == 1
    assert result.selected["head_warmup"]["images"] == 11
    assert [e["path"] for e in events(tmp_path / "run") if e["event"] == "skipped_image"] == [bad]


# --------------------------------------------------------------------------- exact resume

RESUME_CONFIG = {"epochs": 3, "bn": "adapt", "head_l2": 1.0, "lr_head": 1e-2, "lr_backbone": 1e-2, "checkpoint_every_steps": 4,
                 "checkpoint_min_seconds": 0}

KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from advisor.backbones import create_backbone
    from advisor.data.imagefile import load_image
    from advisor.data.scan import scan_dataset
    from strategies import get_strategy
    from strategies.base import RunContext, RunData

    args = json.loads(sys.argv[1])
    strategy = get_strategy("partial-finetune")

    def progress(stage, done, total):
        if stage == "train" and done == args["at_step"]:
            os.kill(os.getpid(), getattr(signal, args["signal"]))

    ctx = RunContext(run_dir=Path(args["run_dir"]), device=torch.device("cpu"), seed=0, cache_dir=Path(args["cache"]),
                     num_workers=0, progress=progress)
    config = strategy.Config(**args["config"])
    strategy.fit(RunData.from_scan(scan_dataset(args["root"])), create_backbone("test/tiny-cnn", pretrained=False, seed=0),
                 config, ctx)
""")


@pytest.fixture(scope="module")
def uninterrupted(dataset, cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run-a")
    return fit("partial-finetune", dataset, run_dir, cache_dir, **RESUME_CONFIG), run_dir


def run_killed(signal_name: str, at_step: int, root: Path, run_dir: Path, cache: Path, *,
               extra: dict | None = None) -> subprocess.CompletedProcess:
    config = {"batch_size": 4, "input_size": 32, "num_workers": 0, **RESUME_CONFIG, **(extra or {})}
    args = {"signal": signal_name, "at_step": at_step, "root": str(root), "run_dir": str(run_dir),
            "cache": str(cache), "config": config}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SIGINT's default disposition in the child, whatever this process inherited (a background job of a
    # non-interactive shell starts with it ignored, and Python then installs no KeyboardInterrupt handler).
    return subprocess.run([sys.executable, "-c", KILL_SCRIPT, json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def assert_same_run(a, b):
    (ra, ma), (rb, mb) = a, b
    assert ra.metrics == rb.metrics and ra.curves == rb.curves
    assert ra.selected["best_epoch"] == rb.selected["best_epoch"] and ra.epochs_completed == rb.epochs_completed
    sa, sb = ma.state_dict(), mb.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("signal_name, at_step, resumes_at", [
    ("SIGKILL", 10, (1, 2)),  # kill -9: the step-8 periodic checkpoint is all there is; steps 9-10 are redone
    ("SIGINT", 9, (1, 3)),  # Ctrl-C: a checkpoint of exactly the steps done is written on the way out
])
def test_interrupted_run_resumes_to_identical_result(signal_name, at_step, resumes_at, uninterrupted, dataset,
                                                     cache_dir, tmp_path):
    run_dir = tmp_path / "run-b"
    proc = run_killed(signal_name, at_step, dataset, run_dir, cache_dir)
    assert proc.returncode != 0, proc.stderr
    if signal_name == "SIGKILL":
        assert proc.returncode == -9
    else:
        assert "KeyboardInterrupt" in proc.stderr
        interrupted = [e for e in events(run_dir) if e["event"] == "interrupted"]
        assert interrupted and interrupted[0]["global_step"] == at_step
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.safetensors")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == resumes_at  # mid-epoch
    assert ckpt["global_step"] == resumes_at[0] * STEPS_PER_EPOCH + resumes_at[1]

    resumed = fit("partial-finetune", dataset, run_dir, cache_dir, resume=True, **RESUME_CONFIG)
    assert resumed[0].selected["resumed"]
    assert_same_run(uninterrupted[0], resumed)
    kinds = [e["event"] for e in events(run_dir)]
    assert kinds.count("head_warmup") == 1 and kinds.count("resumed") == 1 and kinds.count("epoch") == 3


def test_per_image_augmentation_in_the_workers_resumes_to_identical_result(uninterrupted, dataset, cache_dir, tmp_path):
    """The other augmentation path (per image, in the loader): kill -9 and resume give the same model too."""
    cfg = {**RESUME_CONFIG, "augment_on": "workers"}
    whole = fit("partial-finetune", dataset, tmp_path / "a", cache_dir, **cfg)
    assert whole[0].selected["augment_on"] == "workers" and uninterrupted[0][0].selected["augment_on"] == "device"
    assert whole[0].curves != uninterrupted[0][0].curves  # the switch took effect: other draws, another run
    proc = run_killed("SIGKILL", 10, dataset, tmp_path / "b", cache_dir, extra={"augment_on": "workers"})
    assert proc.returncode == -9, proc.stderr
    resumed = fit("partial-finetune", dataset, tmp_path / "b", cache_dir, resume=True, **cfg)
    assert resumed[0].selected["resumed"]
    assert_same_run(whole, resumed)


def test_resume_checks_the_settings_and_finished_runs_resume_to_their_result(uninterrupted, dataset, cache_dir):
    first, run_dir = uninterrupted
    with pytest.raises(AdvisorError, match="lr_head"):
        fit("partial-finetune", dataset, run_dir, cache_dir, resume=True, **{**RESUME_CONFIG, "lr_head": 1e-3})
    again = fit("partial-finetune", dataset, run_dir, cache_dir, resume=True,
                **{**RESUME_CONFIG, "checkpoint_every_steps": 0})  # how often to save is not part of the run
    assert_same_run(first, again)
    assert [e["event"] for e in events(run_dir)][-2:] == ["resumed", "finetune_done"]


def test_result_does_not_depend_on_the_number_of_workers(uninterrupted, dataset, cache_dir, tmp_path):
    with_workers = fit("partial-finetune", dataset, tmp_path / "run", cache_dir, **{**RESUME_CONFIG, "num_workers": 2})
    assert_same_run(uninterrupted[0], with_workers)


def test_step_checkpoints_are_spaced_by_a_minimum_time(dataset, tmp_path, cache_dir, monkeypatch):
    import strategies.callbacks as callbacks

    saves: list[int] = []
    real = callbacks.save_checkpoint
    monkeypatch.setattr(callbacks, "save_checkpoint", lambda path, state: saves.append(state["global_step"]) or real(path, state))
    fit("partial-finetune", dataset, tmp_path / "a", cache_dir, epochs=1, checkpoint_every_steps=1, checkpoint_min_seconds=0)
    assert saves == list(range(1, STEPS_PER_EPOCH)) + [STEPS_PER_EPOCH]  # each step, then the epoch's end
    saves.clear()
    fit("partial-finetune", dataset, tmp_path / "b", cache_dir, epochs=2, checkpoint_every_steps=1, checkpoint_min_seconds=3600)
    assert saves == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]  # epoch ends only
