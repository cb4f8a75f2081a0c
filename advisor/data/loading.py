"""Images decoded on demand for a DataLoader: the one dataset the extraction and the fine-tunes share.

A file that fails to decode, or a transform that fails on one odd image, yields its reason
instead of raising; :func:`collate_skip` drops it from the batch and reports it, so one bad
image never ends a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch

from advisor.core.errors import ImageLoadError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, file_digest, load_image
from advisor.data.scan import Sample

if TYPE_CHECKING:
    from advisor.data.decoded import DecodedImages

NO_LABEL = -1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of integers; nearby tuples give unrelated streams."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(int(p).to_bytes(16, "little", signed=True))
    return int.from_bytes(h.digest(), "little") & (2**63 - 1)


class ImageDataset(torch.utils.data.Dataset):
    """Image files, decoded and transformed when indexed.

    An ``int`` key ``i`` gives image ``i`` through ``transform(img)``. With a ``seed``, keys are
    ``(epoch, i)`` and the transform is called as ``transform(img, generator)`` with a generator
    seeded by ``(seed, epoch, i)``: the augmentation of an image in an epoch is then the same
    whichever worker loads it and however many there are. An item is ``(i, tensor or None,
    label, failure reason or None)``.

    With ``decoded`` (a :class:`~advisor.data.decoded.DecodedImages`), images come from that store as
    ``[3, H, W]`` uint8 tensors (decoded and stored on first use) and the transform must take
    tensors; it then returns uint8 too, and the consumer normalises (on its device). Without it,
    ``min_side`` is the shorter side the transform's first resize keeps: a JPEG at least twice that is
    decoded at a reduced scale (:func:`~advisor.data.imagefile.reduce_on_decode`), as the store does.
    """

    def __init__(self, paths: Sequence[str], transform: Callable[..., torch.Tensor], *,
                 labels: Sequence[int] | None = None, seed: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, decoded: DecodedImages | None = None,
                 min_side: int | None = None) -> None:
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"labels must match paths; got {len(labels)} labels for {len(paths)} paths")
        self.paths, self.transform, self.labels = list(paths), transform, labels
        self.seed, self.max_pixels, self.decoded = seed, max_pixels, decoded
        self.min_side = min_side
        self._keys: dict[int, str] = {}  # content digests, computed once per process (workers persist)

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], transform: Callable[..., torch.Tensor], *,
                     seed: int = 0, decoded: DecodedImages | None = None, min_side: int | None = None) -> ImageDataset:
        """Labelled samples with seeded per-(epoch, image) augmentation."""
        return cls([s.path for s in samples], transform, labels=[s.label for s in samples], seed=seed, decoded=decoded,
                   min_side=min_side)

    def _image(self, i: int):
        if self.decoded is None:
            return load_image(self.paths[i], max_pixels=self.max_pixels, min_side=self.min_side)
        key = self._keys.get(i)
        if key is None:
            try:
                key = self._keys[i] = file_digest(self.paths[i])
            except OSError as err:
                raise ImageLoadError(self.paths[i], f"unreadable ({err.strerror or err})") from None
        return self.decoded.get(key, self.paths[i])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[int, torch.Tensor | None, int, str | None]:
        epoch, i = key if isinstance(key, tuple) else (None, key)
        label = NO_LABEL if self.labels is None else self.labels[i]
        try:
            img = self._image(i)
            if self.seed is None:
                x = self.transform(img)
            else:
                x = self.transform(img, torch.Generator().manual_seed(mix_seed(self.seed, epoch or 0, i)))
            return i, x, label, None
        except ImageLoadError as err:
            return i, None, label, err.reason
        except Exception as err:  # a transform failing on one odd image must not end the run
            return i, None, label, f"{type(err).__name__}: {err}"


class Batch(NamedTuple):
    index: torch.Tensor  # positions of the good images in the dataset
    x: torch.Tensor | None  # None when every image of the batch failed
    y: torch.Tensor
    bad: list[tuple[int, str]]  # (position, reason) of the images that failed


def collate_skip(items: list[tuple[int, torch.Tensor | None, int, str | None]]) -> Batch:
    """Stack the images that decoded; report the others."""
    good = [(i, x, y) for i, x, y, _ in items if x is not None]
    bad = [(i, r) for i, x, _, r in items if x is None]
    if not good:
        return Batch(torch.empty(0, dtype=torch.long), None, torch.empty(0, dtype=torch.long), bad)
    return Batch(torch.tensor([i for i, _, _ in good]), torch.stack([x for _, x, _ in good]),
                 torch.tensor([y for _, _, y in good]), bad)


