"""The measurements behind the fine-tune recipe: the flip check (R17) and the layer probe's one-SE guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_rules import DIFFERENT, LARGE, SMALL, TAPS, make_profile

from advisor.data.scan import scan_dataset
from advisor.decide.recipe import FinetuneRecipe, default_recipe, finetune_schedule
from advisor.decide.rules import plan_for_strategy, recommend
from advisor.measure.logistic import CVResult
from advisor.measure.models import FlipCheck
from advisor.measure.profiler import flip_check, thumbnails
from strategies.probe import _one_standard_error


def _halves(root, n: int, *, symmetric: bool):
    """Two classes: a bright left half vs a bright right half (mirroring swaps them), or red vs blue (it does not)."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            if symmetric:
                arr[..., 0 if ci == 0 else 2] += 150
            else:
                arr[:, :16] += 150 if ci == 0 else 0
                arr[:, 16:] += 150 if ci == 1 else 0
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("symmetric", [False, True])
def test_flip_check_tells_handed_classes_from_symmetric_ones(tmp_path, symmetric):
    scan = scan_dataset(_halves(tmp_path / "d", 20, symmetric=symmetric))
    pixels, mirrored = thumbnails(scan.samples)
    assert pixels.shape == (40, 3 * 16 * 16) and not torch.equal(pixels, mirrored)
    fc = flip_check(pixels, mirrored, torch.tensor([s.label for s in scan.samples]), num_classes=2)
    assert fc.accuracy == 1.0 and fc.images == 40
    if symmetric:
        assert fc.flipped_accuracy == 1.0 and fc.drop == 0
    else:
        assert fc.flipped_accuracy == 0.0 and fc.drop == 1.0  # every mirrored image shows the other class


def test_flip_check_needs_two_classes_and_one_with_two_images():
    x = torch.rand(3, 12)
    assert flip_check(x, x, torch.tensor([0, 1, 2]), num_classes=3) is None  # no class can be held out and trained
    assert flip_check(x, x, torch.tensor([0, 0, 0]), num_classes=3) is None  # one class: nothing to tell apart
    # a rare class is dealt into fewer folds, as in the profile's other cross-validation
    checked = flip_check(x, x, torch.tensor([0, 0, 1]), num_classes=2)
    assert checked is not None and checked.folds == 2 and checked.drop == 0.0  # mirrored pixels = the same here


def _with_flips(profile, drop: float, se: float):
    fc = FlipCheck(images=300, folds=5, accuracy=0.8, flipped_accuracy=0.8 - drop, drop=drop, drop_se=se)
    return profile.model_copy(update={"flip_check": fc})


def test_r17_turns_flips_off_for_fine_tunes_only_when_the_drop_is_real():
    large = make_profile(LARGE, score=DIFFERENT)
    handed = recommend(_with_flips(large, 0.4, 0.03), taps=TAPS)
    assert "R17" in handed.plan.rule_ids and handed.plan.recipe.hflip is False
    assert any(h.id == "R17" and "40.0 points" in h.rationale for h in handed.hits)
    for drop, se in ((0.01, 0.001), (0.05, 0.03)):  # below the threshold, or within two standard errors
        plan = recommend(_with_flips(large, drop, se), taps=TAPS).plan
        assert "R17" not in plan.rule_ids and plan.recipe.hflip is True
    probe = recommend(_with_flips(make_profile(SMALL), 0.4, 0.03), taps=TAPS).plan
    assert "R17" in probe.rule_ids and probe.recipe is None  # reported; probes do not augment
    # A fine-tune forced onto a probe's advice still gets the modifier.
    rec = recommend(_with_flips(make_profile(SMALL), 0.4, 0.03), taps=TAPS)
    forced = plan_for_strategy(rec, "full-finetune", taps=TAPS)
    assert forced.recipe.hflip is False and forced.strategy == "full-finetune"


def test_default_recipe_follows_the_schedule():
    r = default_recipe(5000, full=True)
    assert r.epochs == finetune_schedule(5000)[1] and r.drop_path > 0 and r.bn == "frozen" and r.head_l2 is None
    assert default_recipe(5000, full=False).drop_path == 0
    assert r.early_stopping.policy == "none" and r.ema is not None and r.label_smoothing > 0
    with pytest.raises(ValueError, match="warmup_epochs"):
        FinetuneRecipe(epochs=3, warmup_epochs=3)
    assert FinetuneRecipe(ema=0.1).ema_decay(1000) == pytest.approx(0.99)


def _cand(taps, dim, hits):
    held = torch.tensor(hits, dtype=torch.float64)
    return (taps, torch.zeros(len(hits), dim), CVResult(0.1, [(0.1, float(held.mean()))], 5, None, held), float(held.mean()))


def test_one_standard_error_rule_keeps_the_top_layer_unless_the_gain_is_real():
    base = [1.0] * 35 + [0.0] * 15  # pre_logits: 35 of 50
    # one image more on balance, from 4 won and 3 lost: within one standard error of the paired difference
    slightly = [1.0] * 32 + [0.0] * 3 + [1.0] * 4 + [0.0] * 11
    clearly = [1.0] * 48 + [0.0] * 2  # 13 more
    pre = _cand(["pre_logits"], 1280, base)
    taps, _, _, note = _one_standard_error([_cand(["stage5"], 320, slightly), pre])
    assert taps == ["pre_logits"] and "one-standard-error" in note
    taps, _, _, note = _one_standard_error([_cand(["stage5"], 320, clearly), pre])
    assert taps == ["stage5"] and note is None


def test_a_forced_fine_tune_gets_the_flip_check_too(tmp_path):
    # `run --strategy` skips the similarity measurement, but not the flip check: digits forced into a fine-tune were
    # trained with mirror images before.
    from advisor.decide.advise import recommend_once

    rec = recommend_once(_halves(tmp_path / "d", 20, symmetric=False), backbone="test/tiny-cnn", similarity=False,
                         force_strategy="full-finetune", input_size=32)
    assert rec.profile.flip_check is not None and rec.profile.flip_check.drop > 0.5
    assert "R17" in rec.plan.rule_ids and rec.plan.recipe.hflip is False
