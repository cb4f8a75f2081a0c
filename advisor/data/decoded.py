"""Decoded images on disk: each image decoded and resized once, then read back every epoch.

A fine-tune of E epochs decodes every training JPEG E times, plus its evaluation passes; on a
GPU that CPU work caps the step rate, on a CPU it takes a share of every step. A
:class:`DecodedImages` folder holds each image as RGB ``uint8`` (``.npy``, height x width x 3),
its shorter side resized to ``side`` by PIL exactly as the backbone's eval transform resizes,
so decoding is paid once per image and size (and shared by every run that uses the same cache
folder, ``compare`` included). Entries are keyed by the file's content digest: an edited image
gets a new entry, and a file that fails to decode is never stored (it is reported as before).

Two uses (:func:`eval_side`, :func:`train_side`):
* evaluation: ``side`` = the eval transform's resize size, so the centre crop of a stored image
  is, to the bit, what the eval transform gives (the normalisation moves to the device, with the
  same float32 arithmetic);
* training: ``side`` large enough that the smallest random crop is not upsampled more than it
  would be from the original (``input_size / sqrt(min crop scale)``, at most twice the input
  size); images already smaller are stored at their own size (``upscale=False``).

Workers and DDP ranks fill the folder concurrently: each entry is written to a temporary file
and renamed, so a reader sees a whole entry or none. An entry is read back like input: a regular
file only (a FIFO would block ``open``), of a bounded size, ending in a checksum of its key and
bytes; one that fails (torn, changed, foreign, a different image's) is counted in ``invalid``,
decoded again and replaced.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path

import numpy as np
import torch

from advisor.core.machine import env_switch
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, MAX_ASPECT_RATIO, load_image

DECODED_CACHE_ENV = "ADVISOR_DECODED_CACHE"  # "off": decode every file every time (a machine-wide switch)

# v2: each entry ends in a blake2b-128 of its key and bytes (v1 entries are not read); v3: large JPEGs decoded at a
# reduced scale (advisor.data.imagefile.DECODE_RULE), so v2 entries of the same image hold other pixels
FORMAT = "v3"
_DIGEST = 16


def _checksum(key: str, payload: bytes) -> bytes:
    return hashlib.blake2b(key.encode() + b"\0" + payload, digest_size=_DIGEST).digest()


def store_off_reason(epochs: int, *, enabled: bool = True) -> str | None:
    """Why a run of ``epochs`` epochs decodes every file every time instead of once into the store, or None when
    it keeps decoded images (the disk-room check aside): what the loop decides and the time forecast counts."""
    if not enabled:
        return "off (decoded_cache=False)"
    if env_switch(DECODED_CACHE_ENV) is False:
        return f"off ({DECODED_CACHE_ENV}={os.environ[DECODED_CACHE_ENV]})"
    if epochs < 2:
        return "off (one epoch: each training image is read once)"
    return None


def eval_side(resize_size: int) -> int:
    """Stored shorter side for evaluation passes: the eval transform's own resize size."""
    return resize_size


def train_side(input_size: int, min_crop_scale: float) -> int:
    """Stored shorter side for training crops: no extra upsampling of the smallest crop, capped at 2x the input."""
    return min(2 * input_size, math.ceil(input_size / math.sqrt(max(min_crop_scale, 1e-6))))


class DecodedImages:
    """A folder of decoded images at one (side, interpolation); ``get`` decodes and stores on a miss."""

    def __init__(self, root: str | os.PathLike, *, side: int, interpolation: str, upscale: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.side, self.interpolation, self.upscale, self.max_pixels = side, interpolation, upscale, max_pixels
        self.dir = Path(root) / "decoded" / f"{FORMAT}-{interpolation}-s{side}{'' if upscale else '-noup'}"
        # The largest entry possible: the shorter side at `side`, the longer at most MAX_ASPECT_RATIO times it.
        self.max_bytes = int(side * side * MAX_ASPECT_RATIO * 3) + 4096 + _DIGEST
        self.invalid = 0  # entries found damaged or foreign, decoded again (this process's count)

    def entry(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str, path: str) -> torch.Tensor:
        """The image as a ``[3, H, W]`` uint8 tensor (a view of the stored HWC array).

        Raises :class:`~advisor.core.errors.ImageLoadError` when the file cannot be decoded.
        """
        entry = self.entry(key)
        arr = self._read(entry, key)
        if arr is None:
            arr = self._store(entry, path, key)
        return torch.from_numpy(arr).permute(2, 0, 1)

    def _read(self, entry: Path, key: str) -> np.ndarray | None:
        """The stored array, or None when there is none or it fails a check (then counted in ``invalid``)."""
        try:
            st = os.stat(entry, follow_symlinks=False)
        except OSError:
            return None  # not stored yet
        try:
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if not _DIGEST < st.st_size <= self.max_bytes:
                raise ValueError(f"{st.st_size} bytes")
            with open(entry, "rb") as f:
                data = f.read(self.max_bytes + 1)
            payload, digest = data[:-_DIGEST], data[-_DIGEST:]
            if _checksum(key, payload) != digest:
                raise ValueError("checksum mismatch")
            arr = np.load(io.BytesIO(payload), allow_pickle=False)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
                raise ValueError(f"unexpected entry {arr.dtype} {arr.shape}")
            return arr
        except (OSError, ValueError, EOFError):
            self.invalid += 1
            try:
                if not stat.S_ISDIR(st.st_mode):
                    entry.unlink()  # replaced by the fresh decode below
            except OSError:
                pass
            return None

    def _store(self, entry: Path, path: str, key: str) -> np.ndarray:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        img = load_image(path, max_pixels=self.max_pixels, min_side=self.side)
        if self.upscale or min(img.size) > self.side:
            img = TF.resize(img, self.side, interpolation=InterpolationMode(self.interpolation))
        arr = np.array(img, dtype=np.uint8)  # H x W x 3 (load_image gives RGB); a writable copy
        tmp = None
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.name}.", suffix=".tmp")
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue() + _checksum(key, buf.getvalue()))
            os.replace(tmp, entry)  # readers see a whole entry or none
        except OSError:
            # A full or read-only disk costs speed, not the run: the image is used without being stored.
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
        return arr


def estimated_bytes(count: int, side: int) -> int:
    """Disk use of ``count`` images stored at ``side`` (4:3 images, the common photo shape)."""
    return int(count * side * side * 4 / 3 * 3)


def has_room(root: str | os.PathLike, needed: int, *, share: float = 0.25) -> bool:
    """Whether ``needed`` bytes fit in ``share`` of the free space under ``root`` (the cache must not fill a disk)."""
    probe = Path(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return needed <= share * shutil.disk_usage(probe).free
    except OSError:
        return False
