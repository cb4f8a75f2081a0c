"""Where a dataset's images are: class folders, split folders or a CSV manifest, and the symlink policy.

Imports advisor.core and advisor.data.imagefile.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from advisor.core.errors import DatasetError, one_line
from advisor.data.imagefile import IMAGE_EXTENSIONS, SkippedFile

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


LAYOUT_HINT = (
    "expected root/<class>/<image>, root/train|val|test/<class>/<image>, "
    "or a .csv manifest with header path,label[,split]"
)


# --------------------------------------------------------------------------- listing


@dataclass
class Candidate:
    path: str
    label: str
    split: Split | None  # None: not assigned yet, goes to the stratified carve


@dataclass
class Listing:
    layout: Literal["class-folders", "split-folders", "csv", "huggingface"]
    candidates: list[Candidate] = field(default_factory=list)
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


def _split_top(listing: Listing, folder: str) -> list[os.DirEntry[str]]:
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


def _link_skip(listing: Listing, path: str, reason: str) -> None:
    listing.unreadable_dirs.append(SkippedFile(path=path, reason=reason))


def _walk_class(listing: Listing, top: str, label: str, split: Split | None) -> None:
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
                listing.candidates.append(Candidate(entry.path, label, split))
            else:
                listing.ignore(entry.name)


def list_folders(root: str, *, require_train: bool = True) -> Listing:
    probe = Listing(layout="class-folders", root_real=os.path.realpath(root))
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
    if "train" not in by_split and require_train:  # a set to score a trained model on may hold test/ alone
        raise DatasetError(
            f"{root} has split folders {', '.join(sorted(by_split.values()))} but no train/",
            hint="add root/train/<class>/<image>, or use root/<class>/<image> without splits",
        )

    listing = Listing(layout="split-folders", hidden=probe.hidden, non_image=probe.non_image,
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


def list_csv(csv_path: str) -> Listing:
    listing = Listing(layout="csv")
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
                    listing.candidates.append(Candidate(path, label, split))
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
