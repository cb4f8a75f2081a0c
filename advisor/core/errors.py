"""Errors the core raises for bad input; the CLI renders them as one red line."""

from __future__ import annotations


def one_line(err: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, at most ``limit`` characters (its type name when empty)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AdvisorError(Exception):
    """A user-facing error: what was wrong, and (in ``hint``) what to do about it.

    The CLI prints ``str(err)`` on one line and exits non-zero, so messages must be
    self-contained sentences without tracebacks or multi-line dumps.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DatasetError(AdvisorError):
    """The dataset cannot be used as given (empty, one class, a tiny class, bad manifest)."""


class ImageLoadError(AdvisorError):
    """One image could not be decoded; callers skip it and record ``reason``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BackboneError(AdvisorError):
    """A backbone name is unknown or its weights cannot be found offline."""


class DeviceMemoryError(AdvisorError):
    """The GPU (or the host) ran out of memory for the work as sized; the hint names the setting to lower."""


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is torch running out of memory: CUDA's ``OutOfMemoryError``, or the allocator
    messages of the other devices (MPS, XPU, the CPU)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
