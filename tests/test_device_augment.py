"""Batched device augmentation: torchvision's ops reproduced, seeded per sample, independent of the batch."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from strategies.device_augment import OP_NAMES, DeviceAugment, apply_ops, draw


@pytest.fixture
def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 24, 32), generator=g, dtype=torch.uint8)
    x[1] = (x[1] // 4) + 40  # a low-contrast image: autocontrast and equalize have work to do
    x[2, :, :, :16] = 17  # flat regions
    return x


COLOUR = [
    ("Brightness", 0.4, lambda im, m: TF.adjust_brightness(im, 1 + m)),
    ("Brightness", -0.7, lambda im, m: TF.adjust_brightness(im, 1 + m)),
    ("Color", 0.5, lambda im, m: TF.adjust_saturation(im, 1 + m)),
    ("Color", -0.9, lambda im, m: TF.adjust_saturation(im, 1 + m)),
    ("Contrast", 0.66, lambda im, m: TF.adjust_contrast(im, 1 + m)),
    ("Contrast", -0.5, lambda im, m: TF.adjust_contrast(im, 1 + m)),
    ("Sharpness", 0.9, lambda im, m: TF.adjust_sharpness(im, 1 + m)),
    ("Sharpness", -0.6, lambda im, m: TF.adjust_sharpness(im, 1 + m)),
    ("Posterize", 3.0, lambda im, m: TF.posterize(im, int(m))),
    ("Posterize", 8.0, lambda im, m: TF.posterize(im, int(m))),
    ("Solarize", 128.0, lambda im, m: TF.solarize(im, m)),
    ("AutoContrast", 0.0, lambda im, m: TF.autocontrast(im)),
    ("Equalize", 0.0, lambda im, m: TF.equalize(im)),
]


@pytest.mark.parametrize("op,magnitude,reference", COLOUR, ids=[f"{c[0]}{c[1]:+g}" for c in COLOUR])
def test_colour_ops_match_torchvision_on_uint8(batch, op, magnitude, reference):
    ours = apply_ops(batch, [op] * len(batch), [magnitude] * len(batch))
    theirs = torch.stack([reference(im, magnitude) for im in batch])
    assert torch.equal(ours, theirs)


def test_integer_translation_shifts_exactly_and_fills_with_zero(batch):
    out = apply_ops(batch, ["TranslateX", "TranslateY", "TranslateX", "Identity"], [5.0, -3.0, -7.0, 0.0])
    assert torch.equal(out[0, :, :, 5:], batch[0, :, :, :-5]) and (out[0, :, :, :5] == 0).all()
    assert torch.equal(out[1, :, :-3, :], batch[1, :, 3:, :]) and (out[1, :, -3:, :] == 0).all()
    assert torch.equal(out[2, :, :, :-7], batch[2, :, :, 7:])
    assert torch.equal(out[3], batch[3])


def test_rotation_matches_torchvision_up_to_resampling(batch):
    smooth = torch.nn.functional.avg_pool2d(batch.float(), 5, 1, 2).to(torch.uint8)  # bilinear differences stay small
    for angle in (30.0, -75.0):
        ours = apply_ops(smooth, ["Rotate"] * 4, [angle] * 4)
        theirs = torch.stack([TF.rotate(im, angle, interpolation=InterpolationMode.BILINEAR) for im in smooth])
        inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
        assert (ours[inner].float() - theirs[inner].float()).abs().mean() < 3.0, angle


def test_zero_geometric_magnitudes_are_the_identity(batch):
    for op in ("ShearX", "ShearY", "Rotate", "TranslateX"):
        assert torch.equal(apply_ops(batch, [op] * 4, [0.0] * 4), batch), op


def test_each_image_gets_its_own_draw_whatever_the_batch(batch):
    aug = DeviceAugment(seed=3, flip=True, trivial=True)
    together = aug(batch, [10, 11, 12, 13], epoch=2)
    alone = torch.cat([aug(batch[k:k + 1], [10 + k], epoch=2) for k in range(4)])
    assert torch.equal(together, alone)
    reordered = aug(batch.flip(0), [13, 12, 11, 10], epoch=2)
    assert torch.equal(reordered.flip(0), together)
    assert not torch.equal(aug(batch, [10, 11, 12, 13], epoch=3), together)  # another epoch, other draws


def test_draws_follow_trivial_augment_wide():
    draws = [draw(0, 0, i, flip=True, trivial=True) for i in range(2800)]
    ops = Counter(d[1] for d in draws)
    assert set(ops) == set(OP_NAMES)
    assert max(ops.values()) / min(ops.values()) < 1.5  # uniform over the 14 ops
    assert 0.45 < sum(d[0] for d in draws) / len(draws) < 0.55
    rot = [d[2] for d in draws if d[1] == "Rotate"]
    assert min(rot) < -60 and max(rot) > 60 and all(abs(r) <= 135 for r in rot)
    post = {d[2] for d in draws if d[1] == "Posterize"}
    assert post <= {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}


def test_flip_only_and_bad_input(batch):
    aug = DeviceAugment(seed=0, flip=True, trivial=False)
    out = aug(batch, list(range(4)), epoch=0)
    for k in range(4):
        assert torch.equal(out[k], batch[k]) or torch.equal(out[k], batch[k].flip(-1))
    with pytest.raises(ValueError, match="uint8"):
        aug(batch.float(), list(range(4)), epoch=0)
