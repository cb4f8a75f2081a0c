"""Names are data: class names and paths made safe for every surface they are written to.

A class folder or a file name is the user's (or an attacker's) text. Before it reaches a
terminal, a markdown or HTML report, a figure or a log, :func:`printable` shows undecodable bytes
and control characters (ESC starts terminal escape sequences) and the invisible bidi and
zero-width marks (which make a name display as another) as ``\\xNN`` / ``\\uNNNN`` escapes;
each surface then adds its own escaping (:func:`markdown`, :func:`figure_label`; HTML and the
terminal escape on top of :func:`printable`). Imports nothing of advisor.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+!|~$&])")


def printable(value: object) -> str:
    """The text with undecodable bytes, controls and invisible direction marks shown as escapes."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def markdown(value: object) -> str:
    """Printable text that markdown shows as it is: no markup, links, HTML or table cells from a name."""
    return _MARKDOWN.sub(r"\\\1", printable(value))


def figure_label(value: object, *, limit: int | None = None) -> str:
    """Printable text for a matplotlib label: ``$`` would start mathtext; long names are cut (with an ellipsis)."""
    text = printable(value)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def collision_key(name: str) -> str:
    """Two class names that people read as the same: equal after NFC normalisation and case-folding."""
    return unicodedata.normalize("NFC", name).casefold()
