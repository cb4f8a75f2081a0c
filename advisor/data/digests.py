"""Content digests remembered by each file's stat signature, so a warm pass stats files instead of hashing them.

The feature cache keys an image by the digest of its bytes (a renamed or copied file still hits).
Hashing every file again on every call made the warm path cost a full read of the dataset; git's
index solves the same problem the same way: a file whose size, mtime (ns), ctime (ns) and inode are
unchanged is taken to have unchanged bytes. As in git, a file modified within ``RACY_SECONDS`` of
the moment it was hashed is not remembered (a write within the clock's resolution could leave its
mtime unchanged).

One memo file per image folder, ``<cache>/digests/<digest of the folder's path>.json``, written
atomically and checksummed; a damaged or foreign memo is ignored (its files are hashed again).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from advisor.core.errors import AdvisorError
from advisor.core.io import read_bytes_checked, write_text_atomic
from advisor.data.imagefile import file_digest

MEMO_FORMAT = "advisor-digest-memo/1"
RACY_SECONDS = 2.0


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _checksum(folder: str, files: dict) -> str:
    body = json.dumps([MEMO_FORMAT, folder, files], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


class DigestMemo:
    """``digest(path)``: the file's content digest, hashed only when its stat signature is new.

    ``hashed`` and ``remembered`` count what each call cost; ``save()`` writes the folders that changed.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.dir = Path(root) / "digests"
        self._folders: dict[str, dict[str, list]] = {}
        self._dirty: set[str] = set()
        self.hashed = 0
        self.remembered = 0
        self.ignored: list[str] = []  # memo files found damaged (their folders are hashed again)

    def _memo_path(self, folder: str) -> Path:
        return self.dir / (hashlib.blake2b(folder.encode(), digest_size=16).hexdigest() + ".json")

    def _folder(self, folder: str) -> dict[str, list]:
        if folder not in self._folders:
            self._folders[folder] = self._read(folder)
        return self._folders[folder]

    def _read(self, folder: str) -> dict[str, list]:
        path = self._memo_path(folder)
        try:
            data = json.loads(read_bytes_checked(path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            self.ignored.append(str(path))
            return {}
        ok = (isinstance(data, dict) and data.get("format") == MEMO_FORMAT and data.get("dir") == folder
              and isinstance(data.get("files"), dict) and data.get("checksum") == _checksum(folder, data["files"]))
        if not ok:
            self.ignored.append(str(path))
            return {}
        return {name: entry for name, entry in data["files"].items()
                if isinstance(entry, list) and len(entry) == 5 and isinstance(entry[4], str)}

    def digest(self, path: str | os.PathLike) -> str:
        """The content digest of ``path`` (OSError when it cannot be read)."""
        absolute = os.path.abspath(path)
        folder, name = os.path.split(absolute)
        st = os.stat(absolute)
        entries = self._folder(folder)
        sig = _signature(st)
        entry = entries.get(name)
        if entry is not None and entry[:4] == sig:
            self.remembered += 1
            return entry[4]
        digest = file_digest(absolute)
        self.hashed += 1
        after = os.stat(absolute)
        # Remember only a file that did not change while it was read and was not written just now.
        if _signature(after) == sig and time.time() - st.st_mtime >= RACY_SECONDS:
            entries[name] = [*sig, digest]
            self._dirty.add(folder)
        return digest

    def digest_all(self, paths) -> list[str | None]:
        """:meth:`digest` of each path (None where it cannot be read), then :meth:`save`."""
        out: list[str | None] = []
        for p in paths:
            try:
                out.append(self.digest(p))
            except OSError:
                out.append(None)
        self.save()
        return out

    def save(self) -> None:
        """Write the memo of every folder that gained entries (best effort: a memo is only a shortcut)."""
        for folder in sorted(self._dirty):
            files = self._folders[folder]
            text = json.dumps({"format": MEMO_FORMAT, "dir": folder, "files": files,
                               "checksum": _checksum(folder, files)}, separators=(",", ":"))
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self._memo_path(folder), text)
            except (OSError, AdvisorError):  # a memo that cannot be written costs a re-hash next time, nothing else
                continue
        self._dirty.clear()
