"""One image file: the formats accepted, the scan's cheap header checks, and opening it as RGB.

Imports advisor.core only.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel

from advisor.core.errors import ImageLoadError, one_line

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm"}
)
# What is decoded is decided by content, not by the name: these Pillow formats only. Formats
# that run external programs (EPS needs Ghostscript) or are rarely images of a dataset are refused.
ACCEPTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "BMP", "DIB", "GIF", "TIFF", "WEBP", "PPM"})
DEFAULT_MAX_PIXELS: int = 89_478_485  # PIL's own DecompressionBombWarning threshold
MAX_ASPECT_RATIO: float = 100.0  # longer/shorter side; beyond it a resize to the input size explodes


_CHUNK = 64  # files per thread task
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class SkippedFile(BaseModel):
    """A file that looked like an image but cannot be used, and why."""

    path: str
    reason: str


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


def inspect_all(paths: list[str], max_pixels: int) -> list[tuple[int, int, str] | str]:
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


# Part of every cache key of what is decoded (TransformConfig.digest, the decoded-image store): entries made
# before JPEGs were decoded at a reduced scale must not be mixed with those made after.
DECODE_RULE = "jpeg-dct-scaled-v1"


def reduced_jpeg_scale(width: int, height: int, min_side: int | None) -> int:
    """1, 2, 4 or 8: the largest factor libjpeg can shrink a JPEG by while decoding (DCT scaling) that keeps its
    shorter side at least ``min_side`` (1: no reduction; None: none asked for)."""
    if not min_side or min_side < 1:
        return 1
    fits = min(width, height) // min_side
    return next(s for s in (8, 4, 2, 1) if s <= max(fits, 1))


def reduce_on_decode(im: Image.Image, min_side: int | None) -> None:
    """Ask libjpeg to decode ``im`` (not yet loaded) at a reduced scale when its shorter side stays at least
    ``min_side``: a 4000x3000 photo bound for a 256-px resize is decoded at 500x375 (1/8), several times faster
    than decoding every pixel and resizing them away (decode and eval transform at 224 px, 2 CPU cores: 3024-px
    JPEGs 129 -> 17 ms an image, 1024-px 17.9 -> 3.3 ms, the linear probe's accuracy the same;
    benchmarks/decode_scale.py). The resize that follows still antialiases down to its own size. Other formats
    decode whole."""
    if im.format in ("JPEG", "MPO"):
        w, h = im.size
        scale = reduced_jpeg_scale(w, h, min_side)
        if scale > 1:
            # Pillow picks the largest scale whose result is at least the size asked; floors ask for exactly `scale`.
            im.draft(None, (w // scale, h // scale))


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
    """Decode an image (first frame) as RGB; raise ImageLoadError with a short reason.

    The same checks as the scan apply: regular files only, accepted formats, the pixel and
    aspect-ratio bounds. ``min_side``: the shorter side the caller will resize to; a JPEG at least
    twice that is decoded at a reduced scale that keeps it at least that (:func:`reduce_on_decode`).
    """
    def decode(f, im: Image.Image) -> Image.Image:
        try:
            reduce_on_decode(im, min_side)
            im.load()
        except Exception as exc:
            raise ImageLoadError(os.fspath(path), f"cannot decode {im.format or 'image'} ({one_line(exc)})") from None
        return to_rgb(im)

    return _with_checked_image(path, max_pixels, decode)


def plain_jpeg_bytes(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                     min_side: int | None = None) -> bytes | None:
    """The file's bytes when it is a plain RGB JPEG that a GPU decoder gives the same pixels for, else None.

    Plain: JPEG, 3-channel YCbCr/RGB (not greyscale, CMYK or MPO), no EXIF rotation, and not so large
    that :func:`load_image` would decode it at a reduced scale for ``min_side`` (a GPU decoder decodes
    every pixel, so the two paths would give different pixels). The checks of :func:`load_image` apply
    (raising ImageLoadError); only the header is parsed, so this costs a file read, not a decode. None
    sends the image down the CPU path (:func:`load_image`).
    """
    def read(f, im: Image.Image) -> bytes | None:
        if im.format != "JPEG" or im.mode != "RGB" or reduced_jpeg_scale(*im.size, min_side) > 1:
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
