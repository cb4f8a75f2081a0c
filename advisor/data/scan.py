"""Scan a dataset: list its images, check them cheaply, count what was left out, and carve a validation split.

Three layouts are accepted: class folders (``root/<class>/<image>``), split folders
(``root/train|val|test/<class>/<image>``) and a CSV manifest (``path,label[,split]``).
The scan reads image headers only; pixels are decoded later by ``load_image``.
"""

from __future__ import annotations

import functools
import os
import random
import statistics
from collections import Counter
from typing import Literal

from pydantic import BaseModel

from advisor.core.errors import DatasetError, one_line
from advisor.core.names import collision_key
from advisor.data.hf import HF_LAYOUT, is_hf_dataset, materialise
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, SkippedFile, inspect_all
from advisor.data.layouts import LAYOUT_HINT, SPLITS, Candidate, Listing, Split, list_csv, list_folders

_SIZE_THRESHOLDS = (64, 128, 224)


class Sample(BaseModel):
    """One usable image: absolute path, class index and split."""

    path: str
    label: int
    split: Split


class SizeSummary(BaseModel):
    """Image sizes (after EXIF rotation) over the usable images."""

    count: int
    min_width: int
    min_height: int
    median_width: float
    median_height: float
    max_width: int
    max_height: int
    smaller_than: dict[int, int]  # threshold -> images whose shorter side is below it

    @property
    def median_side(self) -> float | None:
        """The shorter of the median width and height: the detail a typical image holds (None: no images)."""
        return min(self.median_width, self.median_height) if self.count else None


class DatasetScan(BaseModel):
    """What ``scan_dataset`` found: classes, samples per split, and what it left out."""

    root: str
    layout: Literal["class-folders", "split-folders", "csv", "huggingface"]
    classes: list[str]
    samples: list[Sample]
    counts: dict[str, dict[str, int]]
    skipped: list[SkippedFile]
    ignored_hidden: int
    ignored_non_image: int
    ignored_unlabeled: int = 0  # images outside any class folder (e.g. directly in root)
    ignored_extensions: dict[str, int] = {}  # extension ('' when none) -> non-image files ignored
    external_links: int = 0  # symlinks followed to files or class folders outside the dataset folder
    sizes: SizeSummary
    modes: dict[str, int]
    split_source: Literal["folders", "manifest", "stratified"]
    split_seed: int | None
    val_fraction: float | None

    def split(self, name: str) -> list[Sample]:
        """The samples of one split ('train', 'val' or 'test')."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [s for s in self.samples if s.split == name]

    @property
    def num_images(self) -> int:
        return len(self.samples)

    def class_counts(self) -> dict[str, int]:
        """Usable images per class, all splits together."""
        totals = Counter(s.label for s in self.samples)
        return {name: totals[i] for i, name in enumerate(self.classes)}


# ----------------------------------------------------------------------------- scan


def _size_summary(infos: list[tuple[int, int, str]]) -> SizeSummary:
    if not infos:
        return SizeSummary(
            count=0, min_width=0, min_height=0, median_width=0, median_height=0,
            max_width=0, max_height=0, smaller_than={t: 0 for t in _SIZE_THRESHOLDS},
        )  # fmt: skip
    widths = [w for w, _, _ in infos]
    heights = [h for _, h, _ in infos]
    shorter = [min(w, h) for w, h, _ in infos]
    return SizeSummary(
        count=len(infos),
        min_width=min(widths),
        min_height=min(heights),
        median_width=statistics.median(widths),
        median_height=statistics.median(heights),
        max_width=max(widths),
        max_height=max(heights),
        smaller_than={t: sum(s < t for s in shorter) for t in _SIZE_THRESHOLDS},
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _too_few_error(short: dict[str, int], skipped: Counter[str], where: str, fix: str) -> DatasetError:
    parts = []
    for name, n in short.items():
        extra = f", {skipped[name]} skipped" if skipped[name] else ""
        parts.append(f"'{name}' ({n} usable{extra})")
    what = f"class {parts[0]} has" if len(parts) == 1 else f"classes {', '.join(parts)} have"
    return DatasetError(
        f"{what} fewer than 2 usable images{where}; each class needs at least 2 images, "
        "one to train and one to validate",
        hint=fix,
    )


def _list_root(root: str, *, training: bool = True) -> Listing:
    if is_hf_dataset(root):  # its images, written out once as files with a manifest, read as a manifest
        listing = list_csv(str(materialise(root)))
        listing.layout = HF_LAYOUT
        return listing
    if os.path.isdir(root):
        lister = functools.partial(list_folders, require_train=training)
    elif os.path.isfile(root):
        if not root.lower().endswith(".csv"):
            raise DatasetError(f"{root} is a file, not a dataset folder or .csv manifest", hint=LAYOUT_HINT)
        lister = list_csv
    else:
        raise DatasetError(f"dataset not found: {root}", hint=LAYOUT_HINT)
    try:
        return lister(root)
    except OSError as exc:
        raise DatasetError(f"cannot read {root} ({one_line(exc)})", hint="check its permissions") from None


def _refuse_lookalike_classes(classes) -> None:
    """Two class names a person reads as one (equal after NFC normalisation and case-folding) are refused:
    trained as two classes they would split one class's images into two identical-looking labels."""
    groups: dict[str, list[str]] = {}
    for name in sorted(classes):
        groups.setdefault(collision_key(name), []).append(name)
    clash = next((names for names in groups.values() if len(names) > 1), None)
    if clash:
        a, b = clash[0], clash[1]
        how = "differ only in letter case" if a.casefold() == b.casefold() else "differ only in Unicode normalisation"
        raise DatasetError(f"class names {ascii(a)} and {ascii(b)} {how}: they read as one class",
                           hint="rename or merge one of the two folders (or labels)")


def _check_trainable(
    root: str, listing: Listing, usable: list[Candidate], skipped: int, skipped_per_class: Counter[str]
) -> bool:
    """Raise DatasetError unless a classifier can be trained; return whether to carve val."""
    if not usable:
        if not listing.classes and listing.unlabeled:
            raise DatasetError(
                f"found {_plural(listing.unlabeled, 'image')} directly in {root} but no class folders",
                hint="move each image into a folder named after its class (root/<class>/<image>) "
                "or list them in a .csv manifest with path,label",
            )
        raise DatasetError(
            f"no usable images in {root}: {skipped} skipped as unreadable, "
            f"{listing.hidden} hidden and {listing.non_image} non-image files ignored",
            hint=LAYOUT_HINT,
        )
    classes = sorted(listing.classes)
    csv_layout = listing.layout == "csv"
    if len(classes) == 1:
        raise DatasetError(
            f"only one class found: '{classes[0]}' ({_plural(len(usable), 'usable image')}); "
            "a classifier needs at least 2 classes",
            hint="give the manifest a label per class" if csv_layout else "add one folder of images per class",
        )

    fix = "add rows for them or drop their label" if csv_layout else "add images to them or remove their folders"
    total = Counter(c.label for c in usable)
    short = {c: total[c] for c in classes if total[c] < 2}
    if short:
        raise _too_few_error(short, skipped_per_class, "", fix)

    train = Counter(c.label for c in usable if c.split in (None, "train"))
    where = ""
    if listing.layout == "split-folders":
        where = " in train/"
    elif listing.split_column:
        where = " in the train split"
    carve = not any(c.split == "val" for c in usable)
    if carve:
        short = {c: train[c] for c in classes if train[c] < 2}
        if short:
            raise _too_few_error(short, skipped_per_class, where, fix)
    elif untrained := [c for c in classes if train[c] == 0]:
        names = ", ".join(f"'{c}' ({total[c]} in other splits)" for c in untrained)
        raise DatasetError(
            f"no usable training images{where} for {names}; a classifier cannot learn a class it never sees",
            hint="add training images for them or remove those classes",
        )
    return carve


DEFAULT_VAL_FRACTION = 0.2  # the validation share carved from a dataset without a split of its own


def _carve_val(usable: list[Candidate], val_fraction: float, seed: int) -> dict[str, Split]:
    """Split of every usable path, moving a stratified share of train into val."""
    split_of: dict[str, Split] = {c.path: c.split or "train" for c in usable}
    by_class: dict[str, list[str]] = {}
    for c in usable:
        if split_of[c.path] == "train":
            by_class.setdefault(c.label, []).append(c.path)
    for paths in by_class.values():
        n = len(paths)
        k = min(max(round(val_fraction * n), 1), n - 1)
        order = sorted(paths)
        # A fresh RNG per class keeps one class's split independent of the other classes.
        random.Random(seed).shuffle(order)
        for p in order[:k]:
            split_of[p] = "val"
    return split_of


def scan_dataset(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    training: bool = True,
) -> DatasetScan:
    """List and cheaply check every image of a dataset; carve a val split if it has none.

    Bad files are skipped with a reason, never raised; a dataset that cannot train a
    classifier (no images, one class, a class with under 2 images) raises DatasetError.
    ``training=False`` lists a set to score a trained classifier on: any number of classes, no
    split carved, an image outside split folders in the ``test`` split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")

    root_str = os.path.abspath(os.fspath(root))
    listing = _list_root(root_str, training=training)
    _refuse_lookalike_classes(listing.classes)
    candidates = sorted(listing.candidates, key=lambda c: c.path)
    results = inspect_all([c.path for c in candidates], max_pixels)
    usable: list[Candidate] = []
    infos: list[tuple[int, int, str]] = []
    skipped = list(listing.unreadable_dirs)
    skipped_per_class: Counter[str] = Counter()
    for cand, result in zip(candidates, results):
        if isinstance(result, str):
            skipped.append(SkippedFile(path=cand.path, reason=result))
            skipped_per_class[cand.label] += 1
        else:
            usable.append(cand)
            infos.append(result)
    skipped.sort(key=lambda s: s.path)

    if training:
        carve = _check_trainable(root_str, listing, usable, len(skipped), skipped_per_class)
        split_of = _carve_val(usable, val_fraction, seed) if carve else {c.path: c.split or "train" for c in usable}
    else:
        if not usable:
            raise DatasetError(f"no usable images in {root_str}: {len(skipped)} skipped as unreadable", hint=LAYOUT_HINT)
        carve, split_of = False, {c.path: c.split or "test" for c in usable}
    classes = sorted(listing.classes)
    index = {name: i for i, name in enumerate(classes)}
    samples = [Sample(path=c.path, label=index[c.label], split=split_of[c.path]) for c in usable]
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        per = Counter(classes[s.label] for s in samples if s.split == split)
        if per:
            counts[split] = {name: per[name] for name in classes}

    return DatasetScan(
        root=root_str,
        layout=listing.layout,
        classes=classes,
        samples=samples,
        counts=counts,
        skipped=skipped,
        ignored_hidden=listing.hidden,
        ignored_non_image=listing.non_image,
        ignored_unlabeled=listing.unlabeled,
        ignored_extensions=dict(sorted(listing.extensions.items())),
        external_links=listing.external_links,
        sizes=_size_summary(infos),
        modes=dict(sorted(Counter(mode for _, _, mode in infos).items())),
        split_source="stratified" if carve else "manifest" if listing.layout in ("csv", HF_LAYOUT) else "folders",
        split_seed=seed if carve else None,
        val_fraction=val_fraction if carve else None,
    )
