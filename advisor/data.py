"""Find a dataset's images, check them cheaply, and load them as RGB.

Three layouts are accepted: class folders (``root/<class>/<image>``), split folders
(``root/train|val|test/<class>/<image>``) and a CSV manifest (``path,label[,split]``).
The scan reads image headers only; pixels are decoded later by ``load_image``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import stat
import statistics
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel

from advisor.errors import DatasetError, ImageLoadError, one_line

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MAX_ASPECT_RATIO",
    "DatasetScan",
    "Sample",
    "SizeSummary",
    "SkippedFile",
    "file_digest",
    "load_image",
    "scan_dataset",
    "to_rgb",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
# What is decoded is decided by content, not by the name: these Pillow formats only. Formats
# that run external programs (EPS needs Ghostscript) or are rarely images of a dataset are refused.
ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM"})
DEFAULT_MAX_PIXELS: int = 89_478_485  # PIL's own DecompressionBombWarning threshold
MAX_ASPECT_RATIO: float = 100.0  # longer/shorter side; beyond it a resize to the input size explodes

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_SPLIT_ALIASES: dict[str, Split] = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_ALLOWED_SPLITS = ", ".join(_SPLIT_ALIASES)
_SIZE_THRESHOLDS = (64, 128, 224)
_CHUNK = 64  # files per thread task
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_LAYOUT_HINT = (
    "expected root/<class>/<image>, root/train|val|test/<class>/<image>, "
    "or a .csv manifest with header path,label[,split]"
)


class Sample(BaseModel):
    """One usable image: absolute path, class index and split."""

    path: str
    label: int
    split: Split


class SkippedFile(BaseModel):
    """A file that looked like an image but cannot be used, and why."""

    path: str
    reason: str


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


class DatasetScan(BaseModel):
    """What ``scan_dataset`` found: classes, samples per split, and what it left out."""

    root: str
    layout: Literal["class-folders", "split-folders", "csv"]
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


# --------------------------------------------------------------------------- listing


@dataclass
class _Candidate:
    path: str
    label: str
    split: Split | None  # None: not assigned yet, goes to the stratified carve


@dataclass
class _Listing:
    layout: Literal["class-folders", "split-folders", "csv"]
    candidates: list[_Candidate] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    unreadable_dirs: list[SkippedFile] = field(default_factory=list)
    hidden: int = 0
    non_image: int = 0
    unlabeled: int = 0
    split_column: bool = False
    extensions: Counter[str] = field(default_factory=Counter)
    root_real: str = ""
    class_reals: dict[str, str] = field(default_factory=dict)  # real path of a class folder -> its folder
    external_links: int = 0  # followed links (files, class folders) that lead outside the dataset

    def ignore(self, name: str) -> None:
        """Count a file that is not an image by its name."""
        self.non_image += 1
        self.extensions[os.path.splitext(name)[1].lower()] += 1


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sorted_entries(folder: str) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _split_top(listing: _Listing, folder: str) -> list[os.DirEntry[str]]:
    """Count the loose files of ``folder`` and return its visible subfolders."""
    dirs = []
    for entry in _sorted_entries(folder):
        if entry.name.startswith("."):
            listing.hidden += 1
        elif entry.is_dir():
            dirs.append(entry)
        elif _is_image_name(entry.name):
            listing.unlabeled += 1
        else:
            listing.ignore(entry.name)
    return dirs


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _link_skip(listing: _Listing, path: str, reason: str) -> None:
    listing.unreadable_dirs.append(SkippedFile(path=path, reason=reason))


def _walk_class(listing: _Listing, top: str, label: str, split: Split | None) -> None:
    """Add every image under ``top`` (nested folders included) to the listing.

    Symbolic links (docs/security.md): links to files are followed (subsets built from links
    are common), and those that leave the dataset are counted; a class folder may itself be
    a link; a link to a folder *inside* a class is followed only when it stays inside that
    class folder and does not point back at a folder that contains it (no loops, no
    relabelled images). The same file reached twice in a class counts once. Skipped links
    are listed with the reason.
    """
    listing.classes.add(label)
    class_real = os.path.realpath(top)
    if class_real in listing.class_reals:
        _link_skip(listing, top, f"same folder as {listing.class_reals[class_real]} (symlink); "
                                 "one folder cannot hold two classes")
        return
    listing.class_reals[class_real] = top
    if listing.root_real and not _inside(class_real, listing.root_real):
        listing.external_links += 1
    seen: set[tuple[int, int]] = set()  # guards against loops the checks below miss (e.g. bind mounts)
    files_seen: set[str] = set()
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                _link_skip(listing, folder, "folder loop: already part of this class")
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = _sorted_entries(folder)
        except OSError as exc:
            listing.unreadable_dirs.append(
                SkippedFile(path=folder, reason=f"cannot read folder ({one_line(exc)})")
            )
            continue
        for entry in entries:
            if entry.name.startswith("."):
                listing.hidden += 1
                continue
            link = entry.is_symlink()
            real = os.path.realpath(entry.path) if link else None
            if entry.is_dir():
                if link:
                    if not _inside(real, class_real):
                        _link_skip(listing, entry.path, f"folder symlink leaves its class folder (-> {real}); "
                                                        "its images would get this folder's label")
                        continue
                    if _inside(os.path.realpath(folder), real):
                        _link_skip(listing, entry.path, "symlink loop: points at a folder that contains it")
                        continue
                stack.append(entry.path)
            elif _is_image_name(entry.name):
                key = real or os.path.realpath(entry.path)
                if key in files_seen:
                    _link_skip(listing, entry.path, "same file as another image of this class (symlink)")
                    continue
                files_seen.add(key)
                if link and listing.root_real and not _inside(real, listing.root_real):
                    listing.external_links += 1
                # Broken symlinks and special files (FIFOs, devices) land here and are skipped
                # by _inspect with their reason.
                listing.candidates.append(_Candidate(entry.path, label, split))
            else:
                listing.ignore(entry.name)


def _list_folders(root: str) -> _Listing:
    probe = _Listing(layout="class-folders", root_real=os.path.realpath(root))
    top_dirs = _split_top(probe, root)
    split_dirs = [d for d in top_dirs if d.name.lower() in _SPLIT_ALIASES]
    if not split_dirs:
        for d in top_dirs:
            _walk_class(probe, d.path, d.name, None)
        return probe

    others = [d.name for d in top_dirs if d.name.lower() not in _SPLIT_ALIASES]
    if others:
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(d.name for d in split_dirs)}) "
            f"with other folders ({', '.join(others)})",
            hint="put every class folder inside train/ (and val/, test/), or rename "
            "class folders that are called train/val/test",
        )
    by_split: dict[Split, str] = {}
    for d in split_dirs:
        split = _SPLIT_ALIASES[d.name.lower()]
        if split in by_split:
            raise DatasetError(
                f"{root} has two folders for the {split} split: {by_split[split]}/ and {d.name}/",
                hint="merge them into one folder",
            )
        by_split[split] = d.name
    if "train" not in by_split:
        raise DatasetError(
            f"{root} has split folders {', '.join(sorted(by_split.values()))} but no train/",
            hint="add root/train/<class>/<image>, or use root/<class>/<image> without splits",
        )

    listing = _Listing(layout="split-folders", hidden=probe.hidden, non_image=probe.non_image,
                       extensions=probe.extensions, root_real=probe.root_real)
    listing.external_links = probe.external_links
    listing.unlabeled = probe.unlabeled
    for split in SPLITS:
        if split not in by_split:
            continue
        split_root = os.path.join(root, by_split[split])
        for d in _split_top(listing, split_root):
            _walk_class(listing, d.path, d.name, split)
    return listing


def _list_csv(csv_path: str) -> _Listing:
    listing = _Listing(layout="csv")
    base = os.path.dirname(csv_path)
    name = os.path.basename(csv_path)
    seen: dict[str, int] = {}
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            columns = [h.strip().lower() for h in header or []]
            if sorted(columns) not in (["label", "path"], ["label", "path", "split"]):
                raise DatasetError(
                    f"bad header on line 1 of {name}: {','.join(header or []) or '(empty)'!r}",
                    hint="the first line must be path,label or path,label,split",
                )
            listing.split_column = "split" in columns
            at = {c: columns.index(c) for c in columns}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise DatasetError(
                        f"line {line} of {name} has {len(row)} fields, expected {len(columns)} "
                        f"({','.join(columns)})",
                        hint="quote paths or labels that contain commas",
                    )
                rel, label = row[at["path"]].strip(), row[at["label"]].strip()
                if not rel or not label:
                    raise DatasetError(
                        f"line {line} of {name} has an empty {'path' if not rel else 'label'}",
                        hint="every row needs a path and a label",
                    )
                split: Split | None = None
                if listing.split_column:
                    raw = row[at["split"]].strip()
                    if raw.lower() not in _SPLIT_ALIASES:
                        raise DatasetError(
                            f"line {line} of {name} has unknown split {raw!r}",
                            hint=f"allowed values: {_ALLOWED_SPLITS}",
                        )
                    split = _SPLIT_ALIASES[raw.lower()]
                path = os.path.normpath(os.path.join(base, rel))
                if path in seen:
                    raise DatasetError(
                        f"line {line} of {name} lists {rel!r} again (first on line {seen[path]})",
                        hint="list every image once",
                    )
                seen[path] = line
                listing.classes.add(label)
                if _is_image_name(path):
                    listing.candidates.append(_Candidate(path, label, split))
                else:
                    listing.ignore(path)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{name} is not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint="save the manifest as UTF-8 CSV",
        ) from None
    except csv.Error as exc:
        raise DatasetError(f"{name} is not valid CSV ({exc})", hint="check its quoting") from None
    return listing


# ------------------------------------------------------------------------ inspection



def _fmt_pixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} Mpx" if pixels >= 100_000 else f"{pixels} px"


def _bomb_reason(width: int, height: int, max_pixels: int) -> str:
    return (
        f"decompression bomb: {width}x{height} = {_fmt_pixels(width * height)} exceeds the "
        f"limit of {_fmt_pixels(max_pixels)}; downscale the image or raise max_pixels"
    )


def _header_size(f) -> tuple[int, int] | None:
    """Read the size from the header without PIL's bomb check, as Image.open would."""
    f.seek(0)
    prefix = f.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        try:
            verdict = accept(prefix) if accept else True
            if not verdict or isinstance(verdict, str):
                continue
            f.seek(0)
            return factory(f, None).size
        except Exception:
            continue
    return None


def _pil_bomb_reason(exc: Exception, f, max_pixels: int) -> str:
    """Reason for PIL's own bomb check, which fires before Image.open returns a size."""
    size = _header_size(f)
    if size is None:
        return f"decompression bomb: {one_line(exc).rstrip('.')}; downscale the image"
    width, height = size
    if width * height > max_pixels:
        return _bomb_reason(width, height, max_pixels)
    # Only reached when max_pixels is above PIL's own limit, which still applies.
    limit = (2 if isinstance(exc, Image.DecompressionBombError) else 1) * (Image.MAX_IMAGE_PIXELS or 0)
    return (
        f"decompression bomb: {width}x{height} = {_fmt_pixels(width * height)} exceeds PIL's "
        f"limit of {_fmt_pixels(limit)}; downscale the image or raise PIL.Image.MAX_IMAGE_PIXELS"
    )


def _png_reason(exc: Exception) -> str:
    text = str(exc)
    if m := re.search(r"checksum in b'([^']*)'", text):
        kind = "CRC error" if "bad" in text else "missing CRC"
        return f"corrupt PNG ({kind} in chunk {m[1]})"
    if "truncated" in text.lower():
        return "truncated PNG (file ends before the IEND chunk)"
    return f"corrupt PNG ({one_line(exc)})"


def _unidentified_reason(f) -> str:
    """Why PIL could not identify an open file: name a broken PNG/JPEG as such."""
    f.seek(0)
    head = f.read(8)
    if not head:
        return "empty file (0 bytes)"
    # PIL hides the plugin's error behind "cannot identify"; the plugin itself says more.
    for magic, plugin, describe in (
        (_PNG_MAGIC, PngImagePlugin.PngImageFile, _png_reason),
        (_JPEG_MAGIC, JpegImagePlugin.JpegImageFile, lambda e: f"corrupt JPEG ({one_line(e)})"),
    ):
        if head.startswith(magic):
            f.seek(0)
            try:
                plugin(f).close()
            except Exception as exc:
                return describe(exc)
    return "not an image (cannot identify image file)"


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """Size as displayed: EXIF orientations 5-8 swap width and height."""
    width, height = im.size
    # PNG's getexif() decodes the pixels when the eXIf chunk sits after IDAT, so skip it.
    if "exif" not in im.info and im.format != "TIFF":
        return width, height
    try:
        orientation = im.getexif().get(0x0112)
    except Exception:
        return width, height
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _open_regular(path: str):
    """Open ``path`` for reading without ever blocking; raise _Unusable unless it is a regular file."""
    def refuse(mode: int) -> _Unusable:
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "a special file")
        return _Unusable(f"not a regular file ({kind})")

    try:
        mode = os.stat(path).st_mode  # sockets cannot be opened at all; say what they are
        if not stat.S_ISREG(mode):
            raise refuse(mode)
        # O_NONBLOCK: should the path become a FIFO after the check, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise _Unusable("missing file") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refuse(mode)
    return os.fdopen(fd, "rb")


class _Unusable(Exception):
    """Internal: why a file cannot be used (becomes a skip reason)."""


def _check_image(im: Image.Image, width: int, height: int, max_pixels: int) -> None:
    """Refuse formats outside ACCEPTED_FORMATS, decompression bombs and extreme shapes."""
    if im.format not in ACCEPTED_FORMATS:
        raise _Unusable(f"{im.format or 'unknown'} format is not read by advisor (accepted: "
                        f"{', '.join(sorted(ACCEPTED_FORMATS))}); convert it to PNG or JPEG")
    if width * height > max_pixels:
        raise _Unusable(_bomb_reason(width, height, max_pixels))
    if min(width, height) < 1 or max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise _Unusable(f"extreme shape {width}x{height} (aspect ratio above {MAX_ASPECT_RATIO:.0f}:1); "
                        "crop or pad the image")


def _decode(im: Image.Image) -> None:
    """Decode every pixel (JPEG at 1/8 scale: the whole entropy-coded stream, a fraction of the work)."""
    if im.format in ("JPEG", "MPO"):
        im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
    im.load()


def _inspect(path: str, max_pixels: int) -> tuple[int, int, str] | str:
    """(width, height, mode) of a usable image, or the reason it is unusable.

    Every pixel is decoded once here, so a run never trains on a file that fails later.
    """
    try:
        with _open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return "empty file (0 bytes)"
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                return _unidentified_reason(f)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                return _pil_bomb_reason(exc, f, max_pixels)
            except OSError as exc:  # identified, but its plugin cannot even start (e.g. a cut WEBP)
                return f"corrupt image ({one_line(exc)})"
            with im:
                width, height = im.size
                _check_image(im, width, height, max_pixels)
                mode, fmt = im.mode, im.format
                width, height = _oriented_size(im)
                if fmt == "PNG":
                    try:
                        im.verify()  # chunk CRCs up to IEND, which decoding does not check
                    except Exception as exc:
                        return _png_reason(exc)
                    f.seek(0)
                    im = Image.open(f)
                try:
                    _decode(im)
                except Exception as exc:
                    reason = one_line(exc)
                    if "truncated" in reason.lower():
                        return f"truncated {fmt} (the file ends before the image data does)"
                    return f"cannot decode {fmt} ({reason})"
                return width, height, mode
    except _Unusable as why:
        return str(why)
    except Exception as exc:
        return f"cannot read ({type(exc).__name__}: {one_line(exc)})"


def _inspect_all(paths: list[str], max_pixels: int) -> list[tuple[int, int, str] | str]:
    def run(chunk: list[str]) -> list[tuple[int, int, str] | str]:
        return [_inspect(p, max_pixels) for p in chunk]

    # Our max_pixels check supersedes PIL's warning, which would only be noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if len(paths) <= _CHUNK:
            return run(paths)
        # Threads pay off on cold or network storage; chunks keep per-task overhead low
        # (a warm local cache is GIL-bound and only ~0.1 s slower this way per 4k files).
        chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
        workers = min(8, (os.cpu_count() or 1) + 4, len(chunks))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map() yields in input order, so results stay deterministic.
            return [r for part in pool.map(run, chunks) for r in part]


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


def _list_root(root: str) -> _Listing:
    if os.path.isdir(root):
        lister = _list_folders
    elif os.path.isfile(root):
        if not root.lower().endswith(".csv"):
            raise DatasetError(f"{root} is a file, not a dataset folder or .csv manifest", hint=_LAYOUT_HINT)
        lister = _list_csv
    else:
        raise DatasetError(f"dataset not found: {root}", hint=_LAYOUT_HINT)
    try:
        return lister(root)
    except OSError as exc:
        raise DatasetError(f"cannot read {root} ({one_line(exc)})", hint="check its permissions") from None


def _check_trainable(
    root: str, listing: _Listing, usable: list[_Candidate], skipped: int, skipped_per_class: Counter[str]
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
            hint=_LAYOUT_HINT,
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


def _carve_val(usable: list[_Candidate], val_fraction: float, seed: int) -> dict[str, Split]:
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
    val_fraction: float = 0.2,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DatasetScan:
    """List and cheaply check every image of a dataset; carve a val split if it has none.

    Bad files are skipped with a reason, never raised; a dataset that cannot train a
    classifier (no images, one class, a class with under 2 images) raises DatasetError.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")

    root_str = os.path.abspath(os.fspath(root))
    listing = _list_root(root_str)
    candidates = sorted(listing.candidates, key=lambda c: c.path)
    results = _inspect_all([c.path for c in candidates], max_pixels)
    usable: list[_Candidate] = []
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

    carve = _check_trainable(root_str, listing, usable, len(skipped), skipped_per_class)
    split_of = _carve_val(usable, val_fraction, seed) if carve else {c.path: c.split or "train" for c in usable}
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
        split_source="stratified" if carve else "manifest" if listing.layout == "csv" else "folders",
        split_seed=seed if carve else None,
        val_fraction=val_fraction if carve else None,
    )


# ---------------------------------------------------------------------------- loading


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _scale_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit/int/float to RGB, scaled by the image's own range (convert() would clip)."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low = min(float(a.min()), 0.0) if a.size else 0.0
    span = (float(a.max()) - low) if a.size else 0.0
    if span > 0:
        a = (a - low) * (255.0 / span)
    u8 = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(u8[..., None], 3, axis=2))


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any PIL mode to RGB (alpha over white)."""
    if img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        return _over_white(img.convert("RGBA"))
    if mode == "RGB":
        return img
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
        return _scale_to_rgb(img)
    return img.convert("RGB")


def _with_checked_image(path: str | os.PathLike[str], max_pixels: int, use):
    """``use(file, image)`` on the opened, header-checked image; every failure is an ImageLoadError.

    The checks are the scan's: regular files only, accepted formats, the pixel and aspect-ratio bounds.
    """
    p = os.fspath(path)
    try:
        with _open_regular(p) as f:
            try:
                im = Image.open(f)
            except UnidentifiedImageError:
                raise ImageLoadError(p, _unidentified_reason(f)) from None
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageLoadError(p, _pil_bomb_reason(exc, f, max_pixels)) from None
            except OSError as exc:
                raise ImageLoadError(p, f"corrupt image ({one_line(exc)})") from None
            width, height = im.size
            _check_image(im, width, height, max_pixels)
            return use(f, im)
    except ImageLoadError:
        raise
    except _Unusable as why:
        raise ImageLoadError(p, str(why)) from None
    except Exception as exc:
        raise ImageLoadError(p, f"cannot read ({type(exc).__name__}: {one_line(exc)})") from None


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image (first frame) as RGB; raise ImageLoadError with a short reason.

    The same checks as the scan apply: regular files only, accepted formats, the pixel and
    aspect-ratio bounds.
    """
    def decode(f, im: Image.Image) -> Image.Image:
        try:
            im.load()
        except Exception as exc:
            raise ImageLoadError(os.fspath(path), f"cannot decode {im.format or 'image'} ({one_line(exc)})") from None
        return to_rgb(im)

    return _with_checked_image(path, max_pixels, decode)


def plain_jpeg_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes | None:
    """The file's bytes when it is a plain RGB JPEG that a GPU decoder gives the same pixels for, else None.

    Plain: JPEG, 3-channel YCbCr/RGB (not greyscale, CMYK or MPO), no EXIF rotation. The checks
    of :func:`load_image` apply (raising ImageLoadError); only the header is parsed, so this costs
    a file read, not a decode. None sends the image down the CPU path (:func:`load_image`).
    """
    def read(f, im: Image.Image) -> bytes | None:
        if im.format != "JPEG" or im.mode != "RGB":
            return None
        if "exif" in im.info and im.getexif().get(0x0112, 1) != 1:
            return None
        f.seek(0)
        return f.read()

    return _with_checked_image(path, max_pixels, read)


def file_digest(path: str | os.PathLike[str]) -> str:
    """Hex blake2b-128 of the file's bytes (a cache key)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
