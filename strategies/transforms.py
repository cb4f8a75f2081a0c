"""The fine-tune's image transforms on uint8 tensors: a seeded random resized crop, flips and
TrivialAugment for training (:class:`TrainTransform`), the backbone's eval transform (:class:`EvalTransform`),
for ``advisor.data.loading.ImageDataset``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from advisor.backbones import TransformConfig

# --------------------------------------------------------------------------- images


def random_resized_crop_params(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
                               generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop, torchvision's algorithm with an explicit generator."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    # Fallback: the largest centred crop within the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class TrainTransform:
    """RandomResizedCrop(size, scale) [+ horizontal flip] [+ TrivialAugmentWide], as 8-bit pixels.

    Every random draw comes from ``generator`` (TrivialAugment's own draws run in a forked torch
    RNG seeded from it), so an image's augmentation is a function of its seed alone. Takes a PIL
    image or a ``[3, H, W]`` uint8 tensor (:class:`~advisor.data.decoded.DecodedImages`); gives the
    uint8 crop, normalised on the device by ``TransformConfig.normalize`` (ToTensor + Normalize's
    arithmetic, a quarter of the bytes to move).
    """

    def __init__(self, transform: TransformConfig, size: int, *, scale: tuple[float, float] = (0.25, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True, trivial: bool = False) -> None:
        self.size, self.scale, self.ratio, self.flip, self.trivial = size, scale, ratio, flip, trivial
        self.interpolation = transform.interpolation

    def __call__(self, img: Any, generator: torch.Generator) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode, TrivialAugmentWide
        from torchvision.transforms import functional as TF

        stored = isinstance(img, torch.Tensor)
        if not stored and img.mode != "RGB":
            img = img.convert("RGB")
        width, height = (img.shape[-1], img.shape[-2]) if stored else (img.width, img.height)
        top, left, h, w = random_resized_crop_params(width, height, self.scale, self.ratio, generator)
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=InterpolationMode(self.interpolation), antialias=True)
        if self.flip and torch.rand(1, generator=generator).item() < 0.5:
            img = TF.hflip(img)
        if self.trivial:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only (what TrivialAugment draws from): torch.manual_seed also seeds
                # every accelerator, and in a DataLoader worker, where CUDA is not initialised, it queues
                # that with a formatted stack trace, ~1 ms per image (a quarter of the augmentation).
                torch.default_generator.manual_seed(seed)
                img = TrivialAugmentWide(interpolation=InterpolationMode.BILINEAR)(img)
        return img.contiguous() if stored else TF.pil_to_tensor(img)


class EvalTransform:
    """The backbone's eval transform at ``transform.input_size`` as 8-bit pixels (normalised on the device);
    takes (and ignores) a generator like :class:`TrainTransform`.

    A ``[3, H, W]`` uint8 tensor stored at the eval resize size (``DecodedImages``) is only centre
    cropped: the same pixels the eval transform takes from the PIL image.
    """

    def __init__(self, transform: TransformConfig) -> None:
        self.size = transform.input_size
        self.transform = transform.eval_transform(uint8=True)

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            from torchvision.transforms import functional as TF

            return TF.center_crop(img, [self.size, self.size]).contiguous()
        return self.transform(img)
