"""Safe reading and writing of the project's files.

Writes are atomic (a temp file in the same folder, then a rename), so readers never see half
a file and a kill leaves the previous version; a full disk or a read-only folder becomes one
:class:`AdvisorError` naming the path. Reads of JSON artifacts validate them and name the
damaged file and what to do.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from advisor.core.errors import AdvisorError

M = TypeVar("M", bound=BaseModel)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


# Libraries that write files raise their own error types for an OS failure (safetensors' SafetensorError
# wraps the Rust io::Error, torch's writers raise RuntimeError, onnx's its own): their text names it.
_OS_FAILURES = (("no space left on device", errno.ENOSPC), ("storagefull", errno.ENOSPC), ("code: 28", errno.ENOSPC),
                ("disk quota exceeded", errno.EDQUOT), ("read-only file system", errno.EROFS),
                ("permission denied", errno.EACCES), ("code: 13", errno.EACCES), ("code: 30", errno.EROFS),
                # torch's zip writer says only this; the free space (checked below) tells a full disk apart
                ("file write failed", errno.EIO), ("failed writing file", errno.EIO))


def as_os_error(err: BaseException) -> OSError | None:
    """``err`` as the OSError it stands for (a library's wrapper of a failed write), or None when it is none."""
    if isinstance(err, OSError):
        return err
    text = " ".join(str(err).split()).lower()
    for needle, code in _OS_FAILURES:
        if needle in text:
            return OSError(code, os.strerror(code))
    return None


def _full_disk(err: OSError, path: Path, needed: int | None) -> OSError:
    """An I/O error on a disk that has (almost) no room left is a full disk."""
    if err.errno == errno.EIO:
        free = _free_bytes(path.parent)
        if free is not None and free < max(needed or 0, 1 << 20):
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return err


def storage_error(path: str | os.PathLike, err: OSError, *, needed: int | None = None) -> AdvisorError:
    """One clear line for a failed write: which path, and (disk full) how much was needed."""
    path = Path(path)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = _free_bytes(path.parent)
        need = f"needed about {_size(needed)}" if needed else "no space left"
        have = f", {_size(free)} free" if free is not None else ""
        return AdvisorError(f"disk full while writing {path} ({need}{have})",
                            hint="free some space or point --runs-dir/--cache-dir at another disk; "
                                 "what was saved before is kept and the run can be resumed")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return AdvisorError(f"cannot write {path} ({err.strerror})", hint="choose a folder you can write to")
    return AdvisorError(f"cannot write {path} ({err.strerror or err})", hint="check the disk and the folder")


def _read_umask() -> int:
    # Read once at import: os.umask can only be read by setting it, which races with other threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | os.PathLike, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it replaces ``path``, on any failure it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as err:
        raise storage_error(path, err, needed=needed) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the bytes are on disk before the rename makes them visible
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; artifacts get the mode any new file would (0644 under umask 022).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, err, needed=needed) from None
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if (os_err := as_os_error(err)) is not None and not isinstance(err, (AdvisorError, KeyboardInterrupt)):
            raise storage_error(path, _full_disk(os_err, path, needed), needed=needed) from None
        raise


def append_text(path: str | os.PathLike, text: str) -> Path:
    """Append ``text`` to a log (events, records, metrics rows); a failed write is the one-line storage error.

    Appends are not atomic by design (a log keeps what was written before a kill); a line cut by a
    full disk is one a reader skips (every log reader here skips lines it cannot parse).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(text)
    except OSError as err:
        raise storage_error(path, err, needed=len(text.encode())) from None
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    data = text.encode("utf-8")
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


MAX_JSON_BYTES = 64 << 20  # no file advisor writes and reads back as JSON comes near this


class NotRegularFile(OSError):
    """A path that is a FIFO, socket, device or folder where a file was expected (open() could block on it)."""


def read_bytes_checked(path: str | os.PathLike, *, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A file's bytes, read like input: a regular file (a FIFO would block), at most ``max_bytes``."""
    import stat

    path = Path(path)
    st = os.stat(path)  # FileNotFoundError / PermissionError pass through as OSErrors
    if not stat.S_ISREG(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder") if stat.S_ISDIR(st.st_mode) \
            else NotRegularFile(errno.EINVAL, "not a regular file")
    if st.st_size > max_bytes:
        raise ValueError(f"{st.st_size:,} bytes, more than the {max_bytes:,} such a file can have")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"more than the {max_bytes:,} bytes such a file can have")
    return data


def read_model(path: str | os.PathLike, model: type[M], *, fix: str) -> M:
    """Read and validate a JSON artifact; a missing or damaged file is one line naming it and ``fix``."""
    path = Path(path)
    try:
        return model.model_validate_json(read_bytes_checked(path))
    except FileNotFoundError:
        raise AdvisorError(f"{path} is missing", hint=fix) from None
    except IsADirectoryError:
        raise AdvisorError(f"{path} is a folder, not a file", hint=fix) from None
    except NotRegularFile:
        raise AdvisorError(f"{path} is not a regular file (a FIFO, socket or device)", hint=fix) from None
    except OSError as err:
        raise AdvisorError(f"cannot read {path} ({err.strerror or err})", hint=fix) from None
    except ValidationError as err:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())) or "file"
        raise AdvisorError(f"{path} is damaged ({where}: {first.get('msg', 'invalid')})", hint=fix) from None
    except ValueError as err:
        raise AdvisorError(f"{path} is damaged ({' '.join(str(err).split())[:120]})", hint=fix) from None


def ensure_writable_dir(path: str | os.PathLike, *, what: str, option: str) -> Path:
    """Create ``path`` if needed and check it is a folder this process can write, before any work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AdvisorError(f"the {what} {path} is a file, not a folder", hint=f"remove it or pass another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AdvisorError(f"cannot create the {what} {path} ({err.strerror or err})",
                           hint=f"pass another {option}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise AdvisorError(f"the {what} {path} is not writable", hint=f"pass another {option}")
    return path


def call_writing(path: str | os.PathLike, write: Callable[[Path], None], *, needed: int | None = None) -> Path:
    """``write(tmp)`` through :func:`atomic_path` (for writers that take a path, e.g. safetensors)."""
    with atomic_path(path, needed=needed) as tmp:
        write(tmp)
    return Path(path)


CACHE_ENV = "ADVISOR_CACHE_DIR"

def default_cache_dir() -> Path:
    """``$ADVISOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/advisor``, else ``~/.cache/advisor``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "advisor"
