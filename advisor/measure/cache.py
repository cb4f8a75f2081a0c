"""The feature cache: pooled features per image, content-keyed, under one (backbone, weights, transform) namespace.

Layout::

    <cache root>/features/<backbone-slug>/<weights digest>-<transform digest>/<shard>.safetensors

A shard holds the pooled features of a batch of images (one ``[n, C]`` tensor per tap) and, in
its header metadata, the image keys of its rows and a checksum. Shards are written to a temporary
file and renamed into place, so a killed run never leaves a readable-but-wrong shard; an unreadable
shard is ignored (and removed) rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from advisor.backbones import Backbone
from advisor.core.io import call_writing
from advisor.data.digests import DigestMemo
from advisor.data.imagefile import SkippedFile, file_digest

# v3: the shard records what it was computed with (backbone, weights digest, transform digest: the input
# size, crop and normalisation), covered by its checksum; v1/v2 shards, which do not, are not read.
SHARD_FORMAT = "advisor-features-v3"
_READABLE_FORMATS = frozenset({SHARD_FORMAT})
KeyMode = Literal["content", "stat"]




def image_key(path: str | os.PathLike, mode: KeyMode = "content", *, memo: DigestMemo | None = None) -> str:
    """Cache key of one image file: its content digest (remembered by ``memo`` when given, so an unchanged
    file is not hashed again), or path+size+mtime (faster, weaker: a copied file misses)."""
    if mode == "content":
        return memo.digest(path) if memo is not None else file_digest(path)
    st = os.stat(path)
    ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    return "stat-" + hashlib.blake2b(ident.encode(), digest_size=16).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class FeatureCache:
    """Pooled features of images under one (backbone, weights, transform) namespace."""

    def __init__(self, root: str | os.PathLike, *, backbone: str, weights_digest: str, transform_digest: str) -> None:
        self.root = Path(root)
        self.dir = self.root / "features" / _slug(backbone) / f"{weights_digest[:16]}-{transform_digest[:12]}"
        # What every shard here must have been computed with: a shard copied or written from other settings is refused.
        self.settings = json.dumps({"backbone": backbone, "weights": weights_digest, "transform": transform_digest},
                                   sort_keys=True)
        self._index: dict[str, list[tuple[Path, int]]] | None = None
        self._names: dict[Path, frozenset[str]] = {}
        self._digests: dict[Path, str | None] = {}
        self._reported: set[Path] = set()
        self.dropped: list[SkippedFile] = []  # shards found damaged (and deleted) or not regular files

    @classmethod
    def for_backbone(cls, root: str | os.PathLike, backbone: Backbone) -> FeatureCache:
        return cls(
            root,
            backbone=backbone.name,
            weights_digest=backbone.weights_digest,
            transform_digest=backbone.transform_config.digest(),
        )

    def _shards(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        shards = []
        for path in sorted(self.dir.glob("*.safetensors")):
            if path.is_file() and not path.is_symlink():
                shards.append(path)
            elif path not in self._reported:
                self._reported.add(path)
                self.dropped.append(SkippedFile(path=str(path), reason="not a regular file; ignored"))
        return shards

    def _drop(self, shard: Path, reason: str) -> None:
        """A shard that fails a check is worth nothing: delete it, record why; its rows are recomputed."""
        self.dropped.append(SkippedFile(path=str(shard), reason=reason))
        try:
            shard.unlink(missing_ok=True)
        except OSError:
            pass  # read-only cache: it stays unused
        self._names.pop(shard, None)

    def index(self) -> dict[str, list[tuple[Path, int]]]:
        """key -> [(shard, row), ...] newest first, read from shard headers only (no tensor data)."""
        if self._index is None:
            index: dict[str, list[tuple[Path, int]]] = {}
            for shard in reversed(self._shards()):  # names start with a timestamp: newest first
                try:
                    with safe_open(str(shard), framework="pt") as f:
                        meta = f.metadata() or {}
                        if meta.get("format") not in _READABLE_FORMATS:
                            raise ValueError(f"format {meta.get('format')!r}, not {SHARD_FORMAT}")
                        if meta.get("settings") != self.settings:
                            raise ValueError("computed with other settings (backbone, weights or transform)")
                        keys = json.loads(meta["keys"])
                        names = frozenset(k[len("tap."):] for k in f.keys())
                        rows = {f.get_slice(k).get_shape()[0] if f.get_slice(k).get_shape() else -1 for k in f.keys()}
                    if not isinstance(keys, list) or rows != {len(keys)}:
                        raise ValueError(f"{len(keys)} keys but {sorted(rows)} rows")
                except Exception as err:
                    self._drop(shard, f"unreadable header ({type(err).__name__}: {' '.join(str(err).split())[:100]})")
                    continue
                self._names[shard] = names
                self._digests[shard] = meta.get("digest")
                for row, key in enumerate(keys):
                    index.setdefault(key, []).append((shard, row))
            self._index = index
        return self._index

    def get(self, keys: Sequence[str], taps: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
        """Cached rows for ``keys`` from shards that hold every name in ``taps``: key -> tap -> tensor.

        A shard whose checksum fails or that holds a non-finite value is dropped (see ``dropped``)
        and its rows are left out, so the caller recomputes them.
        """
        index = self.index()
        wanted = set(taps)
        by_shard: dict[Path, list[tuple[str, int]]] = {}
        for key in keys:
            for shard, row in index.get(key, ()):
                if wanted <= self._names.get(shard, frozenset()):
                    by_shard.setdefault(shard, []).append((key, row))
                    break
        found: dict[str, dict[str, torch.Tensor]] = {}
        for shard, rows in by_shard.items():
            try:
                with safe_open(str(shard), framework="pt") as f:
                    shard_keys = json.loads((f.metadata() or {})["keys"])
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
                expected = self._digests.get(shard)
                if expected is None or _shard_digest(shard_keys, tensors, self.settings) != expected:
                    raise ValueError("checksum mismatch: the file changed after it was written")
                if bad := [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
                    raise ValueError(f"non-finite values in {bad[0]}")
            except Exception as err:
                self._drop(shard, f"damaged ({' '.join(str(err).split())[:120]}); its rows are recomputed")
                self._index = None
                continue
            for key, row in rows:
                found[key] = {t: tensors[f"tap.{t}"][row] for t in taps}
        return found

    def put(self, keys: Sequence[str], features: dict[str, torch.Tensor]) -> Path:
        """Write one shard atomically (temp file in the same folder, then a rename), with its checksum."""
        tensors = {f"tap.{t}": v.detach().to("cpu", torch.float32).contiguous() for t, v in features.items()}
        meta = {"format": SHARD_FORMAT, "keys": json.dumps(list(keys)), "settings": self.settings,
                "digest": _shard_digest(list(keys), tensors, self.settings)}
        final = self.dir / f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}.safetensors"
        needed = sum(v.numel() * 4 for v in tensors.values())
        call_writing(final, lambda tmp: save_file(tensors, str(tmp), metadata=meta), needed=needed)
        if self._index is not None:
            self._names[final] = frozenset(features)
            self._digests[final] = meta["digest"]
            for row, key in enumerate(keys):
                self._index.setdefault(key, []).insert(0, (final, row))
        return final

    def clean_temporaries(self, *, older_than_s: float = 3600.0) -> int:
        """Remove leftovers of killed writes; young ones may belong to a concurrent run."""
        removed = 0
        now = time.time()
        leftovers = [*self.dir.glob(".tmp-*.part"), *self.dir.glob(".*.safetensors.*.tmp")] if self.dir.is_dir() else []
        for tmp in leftovers:
            if now - tmp.stat().st_mtime > older_than_s:
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed


def _shard_digest(keys: list[str], tensors: dict[str, torch.Tensor], settings: str) -> str:
    """blake2b-128 of a shard's settings, keys, tensor names, shapes and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(settings.encode() + b"\0")
    h.update(json.dumps(keys).encode())
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
