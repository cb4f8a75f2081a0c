"""JPEG decoding on the accelerator for feature extraction, with a per-image CPU fallback.

On a GPU the backbone of a feature extraction outruns CPU decoding many times over. Here the
DataLoader workers only read file bytes and parse JPEG headers (:class:`EncodedImages`); the
main process decodes the batch's plain RGB JPEGs in one call to ``torchvision.io.decode_jpeg``
on the device (nvJPEG on CUDA) and applies the eval transform there (:class:`DeviceEvalTransform`:
resize of the shorter side with the backbone's interpolation, antialiased, rounded to 8 bits as
PIL does; centre crop; normalisation). Everything else (PNG, greyscale or CMYK JPEGs, EXIF
rotations, a JPEG the device decoder rejects) goes through the CPU path, :func:`~advisor.data.imagefile.load_image`
and the backbone's PIL eval transform, image by image.

The device path's pixels differ from the CPU path's by rounding: another IDCT and chroma
upsampling, and torch's antialiased resize instead of PIL's (same kernels). Measured on the test
photo at 224 px: mean |difference| under one 8-bit level; pooled features agree to a cosine above
0.999 (tests/test_device_decode.py states the bounds it checks).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from advisor.backbones import TransformConfig
from advisor.core.errors import ImageLoadError
from advisor.core.machine import env_switch
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, load_image, plain_jpeg_bytes

DECODE_ENV = "ADVISOR_DEVICE_DECODE"  # "off": decode on the CPU even on a GPU


# Measured on an H200 host with 16 cores (benchmarks/extract_throughput.py, 224 px JPEGs): the device
# path ran 1466 images/s, bound by the host side of nvJPEG in the main process; 8 CPU workers ran 1791.
# One worker decodes ~220/s there, so the device pays when fewer than ~6 workers decode.
DEVICE_DECODE_MAX_WORKERS = 5


def device_decode_default(device: torch.device, workers: int) -> bool:
    """Decode on the device on CUDA when few CPU workers would decode (``DEVICE_DECODE_MAX_WORKERS``);
    ``ADVISOR_DEVICE_DECODE=on`` / ``off`` forces it either way."""
    if device.type != "cuda":
        return False
    forced = env_switch(DECODE_ENV)
    return forced if forced is not None else workers <= DEVICE_DECODE_MAX_WORKERS


class EncodedImages(torch.utils.data.Dataset):
    """Item ``i``: ``(i, ("jpeg", bytes as uint8 tensor) or ("pixels", uint8 crop), failure reason or None)``."""

    def __init__(self, paths: Sequence[str], transform: TransformConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths, self.max_pixels = list(paths), max_pixels
        self.transform = transform.eval_transform(uint8=True)
        self.min_side = transform.resize_size  # a JPEG twice this decodes at a reduced scale, on the CPU

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            data = plain_jpeg_bytes(path, max_pixels=self.max_pixels, min_side=self.min_side)
            if data is not None:
                return i, ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)), None
            return i, ("pixels", self.transform(load_image(path, max_pixels=self.max_pixels, min_side=self.min_side))), None
        except ImageLoadError as err:
            return i, None, err.reason
        except Exception as err:  # a transform failing on one odd image must not end the run
            return i, None, f"{type(err).__name__}: {err}"


class EncodedBatch(NamedTuple):
    jpeg_index: list[int]
    jpegs: list[torch.Tensor]
    pixel_index: list[int]
    pixels: torch.Tensor | None
    bad: list[tuple[int, str]]


def collate_encoded(items) -> EncodedBatch:
    jpeg = [(i, p[1]) for i, p, _ in items if p is not None and p[0] == "jpeg"]
    pix = [(i, p[1]) for i, p, _ in items if p is not None and p[0] == "pixels"]
    bad = [(i, r) for i, p, r in items if p is None]
    return EncodedBatch([i for i, _ in jpeg], [d for _, d in jpeg], [i for i, _ in pix],
                        torch.stack([x for _, x in pix]) if pix else None, bad)


class DeviceEvalTransform:
    """The backbone's eval transform on decoded ``[3, H, W]`` uint8 tensors, on their device, batched by size."""

    def __init__(self, transform: TransformConfig) -> None:
        self.config = transform
        self.size, self.resize, self.mode = transform.input_size, transform.resize_size, transform.interpolation

    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        # torchvision's rule for an int size: the shorter side becomes `resize`, the longer is truncated.
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, img in enumerate(images):
            groups.setdefault(tuple(img.shape[-2:]), []).append(k)
        for (h, w), members in groups.items():
            x = torch.stack([images[k] for k in members]).float()
            nh, nw = self._resized_shape(h, w)
            if (nh, nw) != (h, w):
                if self.mode == "nearest":
                    x = F.interpolate(x, size=(nh, nw), mode="nearest")
                else:
                    x = F.interpolate(x, size=(nh, nw), mode=self.mode, antialias=True, align_corners=False)
                x = x.round_().clamp_(0, 255)  # PIL resizes to 8 bits; so does the CPU path
            top, left = int(round((nh - self.size) / 2.0)), int(round((nw - self.size) / 2.0))
            x = x[:, :, top:top + self.size, left:left + self.size]
            for row, k in enumerate(members):
                out[k] = x[row]
        x = torch.stack(out)  # type: ignore[arg-type]  # rounded 8-bit values, as float
        return self.config.normalize(x)


def decode_on_device(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors to ``[3, H, W]`` uint8 on ``device``; None where the decoder refuses one."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    with warnings.catch_warnings():
        # torchvision >= 0.29 announces that its decoders move to TorchCodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass  # one bad stream fails the whole batched call: retry one by one
        decoded: list[torch.Tensor | None] = []
        for data in jpegs:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded
