"""Hugging Face ``datasets`` folders (``save_to_disk``) as a dataset: an Image feature, a ClassLabel feature, their splits.

The images are written out once, as the files they already are (their encoded bytes, no
re-encoding), with a CSV manifest (``path,label,split``), into the cache folder under the saved
dataset's fingerprint; the scan then reads that manifest like any other. Everything downstream
(features, the decoded store, runs) works on files, and a second scan costs nothing. Splits:
``train``, ``validation``/``val`` and ``test`` are used as they are; a single saved split is
``train`` (the scan carves a validation split). Needs the ``datasets`` package (the ``hf`` extra).
Imports advisor.core and advisor.data.imagefile only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

from advisor.core.errors import DatasetError, one_line
from advisor.core.io import default_cache_dir, storage_error, write_text_atomic

HF_LAYOUT = "huggingface"
_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"RIFF", ".webp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
_DONE = "manifest.csv"  # written last: a folder without it is an interrupted write, redone


def is_hf_dataset(root: str | os.PathLike) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(root)
    return p.is_dir() and ((p / "dataset_dict.json").is_file() or
                           ((p / "state.json").is_file() and (p / "dataset_info.json").is_file()))


def _load(root: Path):
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{root} is a Hugging Face dataset folder; reading it needs the datasets package",
                           hint="pip install 'advisor[hf]'") from None
    try:
        loaded = datasets.load_from_disk(str(root))
    except Exception as err:  # the library raises many types for a damaged folder
        raise DatasetError(f"cannot read the Hugging Face dataset {root} ({one_line(err)})",
                           hint="save it again with save_to_disk") from None
    return datasets, (loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded}))


def _columns(datasets, ds, root: Path) -> tuple[str, str, list[str]]:
    """(image column, label column, class names); a dataset without exactly one of each is a one-line error."""
    images = [k for k, f in ds.features.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)]
    found = ", ".join(f"{k} ({type(f).__name__})" for k, f in ds.features.items())
    if len(images) != 1 or len(labels) != 1:
        need = "an Image feature" if len(images) != 1 else "a ClassLabel feature"
        raise DatasetError(f"the Hugging Face dataset {root} needs exactly one Image and one ClassLabel feature; "
                           f"it has {found}", hint=f"cast a column to {need} (dataset.cast_column) and save it again")
    return images[0], labels[0], list(ds.features[labels[0]].names)


def _extension(data: bytes, path: str | None) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    suffix = Path(path).suffix.lower() if path else ""
    return suffix or ".img"  # the scan says what it is (or skips it with the reason)


def _fingerprint(root: Path, splits) -> str:
    h = hashlib.blake2b(str(root.resolve()).encode(), digest_size=12)
    for name in sorted(splits):
        h.update(f"{name}:{splits[name]._fingerprint}:{splits[name].num_rows};".encode())
    return h.hexdigest()


def materialise(root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The manifest of a saved Hugging Face dataset's images, written once into the cache folder."""
    root = Path(root)
    datasets, splits = _load(root)
    unknown = [s for s in splits if s not in _SPLITS]
    if unknown:
        raise DatasetError(f"the Hugging Face dataset {root} has splits {', '.join(splits)}; {', '.join(unknown)} "
                           "is not train, validation or test", hint="rename its splits (DatasetDict keys) and save it again")
    out = Path(cache_dir or default_cache_dir()) / "hf" / _fingerprint(root, splits)
    manifest = out / _DONE
    if manifest.is_file():
        return manifest
    shutil.rmtree(out, ignore_errors=True)  # an interrupted write: start over
    rows: list[tuple[str, str, str]] = []
    classes: list[str] | None = None
    for name, ds in splits.items():
        image_col, label_col, names = _columns(datasets, ds, root)
        if classes is not None and names != classes:
            raise DatasetError(f"the splits of {root} have different class lists", hint="use one ClassLabel for all splits")
        classes = names
        raw = ds.cast_column(image_col, datasets.Image(decode=False))
        folder = out / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise storage_error(folder, err) from None
        for i, item in enumerate(raw):
            image, label = item[image_col], item[label_col]
            if image is None or label is None or not 0 <= label < len(names):
                continue  # no image or no label: not a training example
            data = image.get("bytes")
            if data is None and image.get("path") and os.path.isfile(image["path"]):
                data = Path(image["path"]).read_bytes()
            if data is None:
                continue
            rel = f"{name}/{i:07d}{_extension(data, image.get('path'))}"
            try:
                (out / rel).write_bytes(data)
            except OSError as err:
                raise storage_error(out / rel, err, needed=len(data)) from None
            rows.append((rel, names[label], _SPLITS[name]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    writer.writerows(rows)
    write_text_atomic(out / "source.json", json.dumps({"dataset": str(root.resolve()), "splits": list(splits)}))
    write_text_atomic(manifest, buf.getvalue())
    return manifest
