"""Which images a run trained and validated on, by content, so a later score on them is never taken for a test score.

A finished run writes ``seen.json``: the content digests (blake2b-128 of the file's bytes, the feature cache's key)
of its training and validation images. ``advisor evaluate`` and ``Classifier.evaluate`` digest the images they are
given (the digest memo turns that into a stat for files hashed before) and leave out those the run saw, unless
asked to keep them: scoring a run again on the folder it was trained on would otherwise print its training
accuracy under the name of a test accuracy. A copied or renamed file still matches; a re-encoded or resized copy
does not (the profile's near-duplicate check is what finds those).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from advisor.core.errors import AdvisorError
from advisor.core.io import NotRegularFile, default_cache_dir, read_bytes_checked, write_text_atomic
from advisor.data.digests import DigestMemo
from advisor.data.scan import Sample

SEEN_FILE = "seen.json"
FORMAT = "advisor-seen/1"


class SeenImages(BaseModel):
    """The content digests of a run's training and validation images (sorted), with a checksum over both."""

    format: Literal["advisor-seen/1"] = FORMAT
    train: list[str]
    val: list[str]
    checksum: str = ""


class SeenSplit(BaseModel):
    """How many of the images given to score the run trained on and validated on."""

    train: int = 0
    val: int = 0


def _checksum(train: Sequence[str], val: Sequence[str]) -> str:
    return hashlib.blake2b(("\n".join(train) + "\0" + "\n".join(val)).encode(), digest_size=16).hexdigest()


def _digests(paths: Sequence[str], cache_dir: str | os.PathLike | None) -> list[str | None]:
    return DigestMemo(Path(cache_dir) if cache_dir else default_cache_dir()).digest_all(paths)


def write_seen(run_dir: str | os.PathLike, samples: Sequence[Sample], *,
               cache_dir: str | os.PathLike | None = None) -> Path:
    """``seen.json`` of the run in ``run_dir``: the digests of ``samples``' train and val images."""
    train = [s.path for s in samples if s.split == "train"]
    val = [s.path for s in samples if s.split == "val"]
    found = _digests(train + val, cache_dir)
    t = sorted({d for d in found[: len(train)] if d})
    v = sorted({d for d in found[len(train):] if d})
    seen = SeenImages(train=t, val=v, checksum=_checksum(t, v))
    return write_text_atomic(Path(run_dir) / SEEN_FILE, seen.model_dump_json())


def read_seen(run_dir: str | os.PathLike) -> tuple[SeenImages | None, str | None]:
    """The run's ``seen.json``, or None and why it cannot be used (a run made before it existed, or a damaged file)."""
    path = Path(run_dir) / SEEN_FILE
    try:
        seen = SeenImages.model_validate_json(read_bytes_checked(path))
    except FileNotFoundError:
        return None, f"the run has no {SEEN_FILE} (made before advisor recorded the images it saw)"
    except (OSError, NotRegularFile, ValidationError, ValueError) as err:
        return None, f"{path} is damaged or unreadable ({type(err).__name__}), so it was not trusted"
    if seen.checksum != _checksum(seen.train, seen.val):
        return None, f"{path} does not match its checksum, so it was not trusted"
    return seen, None


def split_seen(samples: Sequence[Sample], seen: SeenImages, *, cache_dir: str | os.PathLike | None = None,
               ) -> tuple[list[Sample], SeenSplit]:
    """The samples the run never saw (by content), and how many it trained / validated on."""
    train, val = set(seen.train), set(seen.val)
    counts = SeenSplit()
    unseen = []
    for sample, d in zip(samples, _digests([s.path for s in samples], cache_dir), strict=True):
        if d is not None and d in train:
            counts.train += 1
        elif d is not None and d in val:
            counts.val += 1
        else:  # never seen, or unreadable (the score counts it as unreadable, as before)
            unseen.append(sample)
    return unseen, counts


def seen_error(total: int, counts: SeenSplit, root: str) -> AdvisorError:
    """Every image given to score was one the run trained or validated on."""
    return AdvisorError(
        f"all {total} images of {root} were used by the run ({counts.train} to train, {counts.val} to validate): "
        "their accuracy is not a test accuracy",
        hint="score images the run never saw, or pass --include-seen (include_seen=True) to score them anyway")
