"""Tests for advisor.data: layouts, integrity checks, colour modes and dataset errors."""

from __future__ import annotations

import hashlib
import random
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from advisor.core.errors import DatasetError, ImageLoadError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, file_digest, load_image, to_rgb
from advisor.data.scan import DatasetScan, scan_dataset

RED = (220, 20, 20)
BLUE = (20, 20, 220)


def save(path: Path, img: Image.Image | None = None, **kw) -> Path:
    """Write ``img`` (default: a small RGB image) to ``path``, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (img or Image.new("RGB", (16, 12), RED)).save(path, **kw)
    return path


def noisy_jpeg(path: Path, size=(64, 64), seed=0) -> Path:
    """A JPEG large enough (several KiB) that cutting it in half loses the EOI marker."""
    rng = np.random.default_rng(seed)
    return save(path, Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)), quality=95)


def make_classes(root: Path, counts: dict[str, int], ext=".jpg") -> None:
    for name, n in counts.items():
        for i in range(n):
            save(root / name / f"{name}_{i:02d}{ext}")


def corrupt_crc(path: Path, chunk: bytes) -> None:
    """Flip one byte of the CRC of the first ``chunk`` in a PNG."""
    data = bytearray(path.read_bytes())
    at = data.index(chunk)
    length = int.from_bytes(data[at - 4 : at], "big")
    data[at + 4 + length] ^= 0xFF
    path.write_bytes(bytes(data))


def paths_of(scan: DatasetScan, split: str | None = None) -> set[str]:
    return {s.path for s in scan.samples if split is None or s.split == split}


# --------------------------------------------------------------------------- layouts


def test_constants():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"} <= IMAGE_EXTENSIONS
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485


def test_class_folders_with_nested_subfolder(tmp_path):
    make_classes(tmp_path, {"cats": 4, "dogs": 5})
    nested = save(tmp_path / "cats" / "2023" / "march" / "deep.png")
    scan = scan_dataset(tmp_path)

    assert scan.layout == "class-folders"
    assert scan.root == str(tmp_path)
    assert scan.classes == ["cats", "dogs"]
    assert scan.num_images == 10
    assert str(nested) in paths_of(scan)
    assert [s.path for s in scan.samples] == sorted(s.path for s in scan.samples)
    assert all(Path(s.path).is_absolute() for s in scan.samples)
    for s in scan.samples:
        assert Path(s.path).relative_to(tmp_path).parts[0] == scan.classes[s.label]
    assert scan.class_counts() == {"cats": 5, "dogs": 5}
    # round(0.2 * 5) = 1 per class goes to val
    assert scan.counts == {"train": {"cats": 4, "dogs": 4}, "val": {"cats": 1, "dogs": 1}}
    assert scan.split_source == "stratified" and scan.split_seed == 0 and scan.val_fraction == 0.2
    assert len(scan.split("train")) == 8 and len(scan.split("val")) == 2
    assert scan.split("test") == []
    assert scan.skipped == [] and scan.ignored_hidden == 0 and scan.ignored_non_image == 0
    assert scan.modes == {"RGB": 10}
    assert scan.sizes.count == 10 and scan.sizes.max_width == 16 and scan.sizes.min_height == 12
    assert scan.sizes.smaller_than == {64: 10, 128: 10, 224: 10}


def test_split_folders_valid_spelling_and_upper_case(tmp_path):
    make_classes(tmp_path / "TRAIN", {"ants": 3, "bees": 2})
    make_classes(tmp_path / "Valid", {"ants": 2})
    make_classes(tmp_path / "Test", {"ants": 1, "bees": 1})
    scan = scan_dataset(tmp_path)

    assert scan.layout == "split-folders"
    assert scan.split_source == "folders" and scan.split_seed is None and scan.val_fraction is None
    assert scan.classes == ["ants", "bees"]  # union over splits
    assert scan.counts == {
        "train": {"ants": 3, "bees": 2},
        "val": {"ants": 2, "bees": 0},
        "test": {"ants": 1, "bees": 1},
    }
    assert paths_of(scan, "val") == {str(p) for p in (tmp_path / "Valid").rglob("*.jpg")}
    assert paths_of(scan, "test") == {str(p) for p in (tmp_path / "Test").rglob("*.jpg")}


def test_split_folders_without_val_are_split_stratified(tmp_path):
    make_classes(tmp_path / "train", {"a": 10, "b": 5, "c": 2})
    make_classes(tmp_path / "test", {"a": 2, "b": 2, "c": 1})
    scan = scan_dataset(tmp_path, val_fraction=0.25, seed=7)

    assert scan.split_source == "stratified" and scan.split_seed == 7 and scan.val_fraction == 0.25
    # a: round(2.5) = 2; b: round(1.25) = 1; c: round(0.5) = 0 -> at least 1
    assert scan.counts["val"] == {"a": 2, "b": 1, "c": 1}
    assert scan.counts["train"] == {"a": 8, "b": 4, "c": 1}
    assert scan.counts["test"] == {"a": 2, "b": 2, "c": 1}  # test stays test
    assert paths_of(scan, "test") == {str(p) for p in (tmp_path / "test").rglob("*.jpg")}
    for split in ("train", "val"):
        assert all(n > 0 for n in scan.counts[split].values())

    # The documented recipe: shuffle each class's sorted list with Random(seed).
    a_paths = sorted(str(p) for p in (tmp_path / "train" / "a").iterdir())
    random.Random(7).shuffle(a_paths)
    assert {s.path for s in scan.split("val") if s.label == 0} == set(a_paths[:2])

    again = scan_dataset(tmp_path, val_fraction=0.25, seed=7)
    assert again.samples == scan.samples
    other = scan_dataset(tmp_path, val_fraction=0.25, seed=8)
    assert paths_of(other, "val") != paths_of(scan, "val")


def test_val_fraction_bounds_keep_one_train_image(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 3})
    scan = scan_dataset(tmp_path, val_fraction=0.9)
    assert scan.counts == {"train": {"a": 1, "b": 1}, "val": {"a": 2, "b": 2}}
    with pytest.raises(ValueError, match="val_fraction"):
        scan_dataset(tmp_path, val_fraction=1.0)


def test_csv_manifest_with_split_column(tmp_path):
    make_classes(tmp_path / "imgs", {"cat": 3, "dog": 3})
    elsewhere = save(tmp_path / "other" / "far.png")
    rows = [
        "path,label,split",
        "imgs/cat/cat_00.jpg,cat,train",
        "imgs/cat/cat_01.jpg,cat,TRAIN",
        "imgs/cat/cat_02.jpg,cat,valid",
        "imgs/dog/dog_00.jpg,dog,train",
        f"{elsewhere},dog,train",  # absolute path
        "imgs/dog/dog_01.jpg,dog,validation",
        "imgs/dog/dog_02.jpg,dog,test",
        "imgs/dog/gone.jpg,dog,train",
        "",  # blank lines are ignored
    ]
    manifest = tmp_path / "meta" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(rows).replace("imgs/", "../imgs/"))
    scan = scan_dataset(manifest)

    assert scan.layout == "csv" and scan.root == str(manifest)
    assert scan.split_source == "manifest" and scan.split_seed is None
    assert scan.classes == ["cat", "dog"]
    assert scan.counts == {
        "train": {"cat": 2, "dog": 2},
        "val": {"cat": 1, "dog": 1},
        "test": {"cat": 0, "dog": 1},
    }
    assert str(elsewhere) in paths_of(scan, "train")
    assert str(tmp_path / "imgs" / "cat" / "cat_02.jpg") in paths_of(scan, "val")
    assert [(s.path, s.reason) for s in scan.skipped] == [
        (str(tmp_path / "imgs" / "dog" / "gone.jpg"), "missing file")
    ]


def test_csv_manifest_without_split_column(tmp_path):
    make_classes(tmp_path, {"x": 5, "y": 4})
    images = sorted(tmp_path.rglob("*.jpg"))
    lines = ["Path,Label"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in images]
    (tmp_path / "all.csv").write_text("\n".join(lines) + "\n")
    scan = scan_dataset(tmp_path / "all.csv", seed=3)

    assert scan.layout == "csv" and scan.split_source == "stratified" and scan.split_seed == 3
    assert scan.counts == {"train": {"x": 4, "y": 3}, "val": {"x": 1, "y": 1}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file,class\na.jpg,cat\n", r"line 1 .*'file,class'.*path,label or path,label,split"),
        (
            "path,label,split\na.jpg,cat,train\nb.jpg,dog,dev\n",
            r"line 3 .*'dev'.*allowed values: train, val, valid, validation, test",
        ),
        ("path,label\na.jpg,cat,extra\n", r"line 2 .*3 fields, expected 2"),
        ("path,label\na.jpg,\n", r"line 2 .*empty label"),
    ],
)
def test_csv_manifest_errors_name_the_line(tmp_path, text, expected):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(DatasetError, match=expected) as info:
        scan_dataset(tmp_path / "m.csv")
    assert "\n" not in str(info.value)


def test_case_insensitive_extensions_hidden_and_non_image_files(tmp_path):
    make_classes(tmp_path, {"b": 2})
    upper = save(tmp_path / "a" / "upper.JPG", format="JPEG")
    mixed = save(tmp_path / "a" / "mixed.Png", format="PNG")
    save(tmp_path / "a" / ".hidden.jpg")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\0")
    save(tmp_path / "a" / ".cache" / "x.jpg")  # a hidden dir counts once
    save(tmp_path / ".git" / "y.jpg")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "b" / "labels.csv").write_text("x")
    (tmp_path / "README.md").write_text("readme")
    save(tmp_path / "loose.jpg")  # not inside a class folder
    scan = scan_dataset(tmp_path)

    assert {str(upper), str(mixed)} <= paths_of(scan)
    assert scan.num_images == 4
    assert scan.ignored_hidden == 4
    assert scan.ignored_non_image == 3
    assert scan.ignored_unlabeled == 1
    assert scan.modes == {"RGB": 4}


# ------------------------------------------------------------------- broken files


def test_broken_file_corpus_is_skipped_with_reasons(tmp_path):
    make_classes(tmp_path, {"good": 3})
    good_png = save(tmp_path / "mixed" / "fine.png")
    good_jpg = noisy_jpeg(tmp_path / "mixed" / "fine.jpg")
    empty = tmp_path / "mixed" / "empty.jpg"
    empty.write_bytes(b"")
    truncated = noisy_jpeg(tmp_path / "mixed" / "truncated.jpg", seed=1)
    data = truncated.read_bytes()
    assert len(data) > 4096
    truncated.write_bytes(data[: len(data) // 2])
    text = tmp_path / "mixed" / "text.jpg"
    text.write_text("this is not a JPEG\n")
    bad_crc = save(tmp_path / "mixed" / "bad_crc.png", Image.new("RGB", (32, 32), BLUE))
    corrupt_crc(bad_crc, b"IDAT")

    scan = scan_dataset(tmp_path)

    assert len(scan.skipped) == 4
    assert {s.path: s.reason for s in scan.skipped} == {
        str(empty): "empty file (0 bytes)",
        str(truncated): "truncated JPEG (the file ends before the image data does)",
        str(text): "not an image (cannot identify image file)",
        str(bad_crc): "corrupt PNG (CRC error in chunk IDAT)",
    }
    assert [s.path for s in scan.skipped] == sorted(s.path for s in scan.skipped)
    assert {str(good_png), str(good_jpg)} <= paths_of(scan)
    assert scan.class_counts() == {"good": 3, "mixed": 2}
    assert scan.sizes.count == 5
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False

    # load_image decodes pixels instead (PIL does not check IDAT CRCs while decoding).
    for path in (empty, truncated, text):
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.path == str(path) and info.value.reason


def test_load_image_reasons(tmp_path):
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "t.png"
    text.write_text("hello")
    truncated = noisy_jpeg(tmp_path / "cut.jpg")
    truncated.write_bytes(truncated.read_bytes()[:2000])
    cases = {
        empty: "empty file (0 bytes)",
        text: "not an image (cannot identify image file)",
        tmp_path / "absent.jpg": "missing file",
    }
    for path, reason in cases.items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert info.value.reason == reason
    with pytest.raises(ImageLoadError, match="cannot decode JPEG .*truncated"):
        load_image(truncated)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_with_bad_header_crc_is_named_corrupt_png(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    bad = save(tmp_path / "a" / "bad_ihdr.png")
    corrupt_crc(bad, b"IHDR")
    scan = scan_dataset(tmp_path)
    assert [(s.path, s.reason) for s in scan.skipped] == [(str(bad), "corrupt PNG (CRC error in chunk IHDR)")]
    with pytest.raises(ImageLoadError, match=r"corrupt PNG \(CRC error in chunk IHDR\)"):
        load_image(bad)


def test_decompression_bomb_refused_in_scan_and_load(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})  # 16x12 = 192 px, under the limit
    bomb = save(tmp_path / "a" / "bomb.png", Image.new("RGB", (100, 100), RED))
    reason = (
        "decompression bomb: 100x100 = 10000 px exceeds the limit of 1000 px; "
        "downscale the image or raise max_pixels"
    )

    scan = scan_dataset(tmp_path, max_pixels=1000)
    assert [(s.path, s.reason) for s in scan.skipped] == [(str(bomb), reason)]
    assert scan.num_images == 4

    with pytest.raises(ImageLoadError) as info:
        load_image(bomb, max_pixels=1000)
    assert info.value.reason == reason
    assert load_image(bomb).size == (100, 100)  # default limit lets it through


def test_bomb_reason_uses_megapixels_for_large_limits(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    big = save(tmp_path / "b" / "big.png", Image.new("L", (1000, 500)))
    scan = scan_dataset(tmp_path, max_pixels=200_000)
    assert scan.skipped[0].reason == (
        "decompression bomb: 1000x500 = 0.5 Mpx exceeds the limit of 0.2 Mpx; "
        "downscale the image or raise max_pixels"
    )
    assert scan.skipped[0].path == str(big)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny, valid-CRC 1-bit PNG whose header claims ``width`` x ``height``."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )
    return path


def test_pil_bomb_error_reports_the_size_at_default_limit(tmp_path):
    # 400 Mpx is over PIL's hard limit, so Image.open itself raises DecompressionBombError.
    make_classes(tmp_path, {"a": 2, "b": 2})
    bomb = _png_header_only(tmp_path / "a" / "huge.png", 20000, 20000)
    reason = (
        "decompression bomb: 20000x20000 = 400.0 Mpx exceeds the limit of 89.5 Mpx; "
        "downscale the image or raise max_pixels"
    )
    scan = scan_dataset(tmp_path)
    assert [(s.path, s.reason) for s in scan.skipped] == [(str(bomb), reason)]
    with pytest.raises(ImageLoadError) as info:
        load_image(bomb)
    assert info.value.reason == reason


# ---------------------------------------------------------------------- colour modes


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (20, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (10, 0, 20, 10))  # right half: palette index 1 (red)
    img.info["transparency"] = 0  # left half transparent
    return img


def _i16() -> Image.Image:
    a = np.zeros((10, 20), dtype=np.uint16)
    a[:, 10:] = 51000  # image max
    a[0, 0] = 10200  # 10200 / 51000 * 255 = 51
    return Image.fromarray(a)


def _two_frame_gif(path: Path) -> Path:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path


@pytest.mark.parametrize(
    ("name", "make", "checks"),
    [
        ("l.png", lambda: Image.new("L", (20, 10), 77), {(0, 0): (77, 77, 77)}),
        ("la.png", lambda: Image.new("LA", (20, 10), (77, 0)), {(0, 0): (255, 255, 255)}),
        ("p.png", _palette_with_transparency, {(0, 0): (255, 255, 255), (15, 5): (255, 0, 0)}),
        ("p.gif", _palette_with_transparency, {(0, 0): (255, 255, 255), (15, 5): (255, 0, 0)}),
        ("p_opaque.png", lambda: Image.new("RGB", (20, 10), (0, 128, 0)).quantize(4), {(3, 3): (0, 128, 0)}),
        ("rgba.png", lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 128)), {(5, 5): (255, 127, 127)}),
        ("rgba_opaque.webp", lambda: Image.new("RGBA", (20, 10), (0, 0, 255, 255)), {}),
        ("cmyk.jpg", lambda: Image.new("CMYK", (20, 10), (255, 0, 0, 0)), {(5, 5): (0, 255, 255)}),
        ("i16.png", _i16, {(0, 0): (51, 51, 51), (15, 5): (255, 255, 255), (5, 5): (0, 0, 0)}),
        ("i16.tif", _i16, {(0, 0): (51, 51, 51), (15, 5): (255, 255, 255), (5, 5): (0, 0, 0)}),
        ("one.png", lambda: Image.new("1", (20, 10), 1), {(0, 0): (255, 255, 255)}),
        ("one.bmp", lambda: Image.new("1", (20, 10), 0), {(0, 0): (0, 0, 0)}),
    ],
)
def test_every_mode_loads_as_rgb(tmp_path, name, make, checks):
    src = make()
    path = save(tmp_path / name, src)
    with Image.open(path) as raw:
        opened_mode = raw.mode
    if name.startswith("i16"):
        assert opened_mode.startswith("I;16")  # the file really is 16-bit
    img = load_image(path)
    assert img.mode == "RGB"
    assert img.size == (20, 10)
    for xy, expected in checks.items():
        tol = 12 if name.endswith(".jpg") else 1
        assert np.allclose(img.getpixel(xy), expected, atol=tol), (xy, img.getpixel(xy), expected)


def test_gif_loads_first_frame(tmp_path):
    gif = _two_frame_gif(tmp_path / "anim.gif")
    with Image.open(gif) as raw:
        assert raw.n_frames == 2
    img = load_image(gif)
    assert img.mode == "RGB" and img.size == (20, 10)
    assert np.allclose(img.getpixel((5, 5)), (255, 0, 0), atol=2)


def test_to_rgb_scales_int_and_float_by_own_range():
    i32 = Image.fromarray(np.array([[0, 500], [1000, 250]], dtype=np.int32))
    assert i32.mode == "I"
    out = np.asarray(to_rgb(i32))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[:, :, 0].tolist() == [[0, 128], [255, 64]]  # 500/1000*255 = 127.5 -> 128

    f = Image.fromarray(np.array([[0.0, 0.5], [2.0, np.nan]], dtype=np.float32))
    assert f.mode == "F"
    assert np.asarray(to_rgb(f))[:, :, 1].tolist() == [[0, 64], [255, 0]]


def test_scan_reports_modes(tmp_path):
    save(tmp_path / "a" / "l.png", Image.new("L", (8, 8)))
    save(tmp_path / "a" / "rgba.png", Image.new("RGBA", (8, 8)))
    save(tmp_path / "b" / "i16.png", _i16())
    save(tmp_path / "b" / "cmyk.jpg", Image.new("CMYK", (8, 8)))
    _two_frame_gif(tmp_path / "b" / "anim.gif")
    scan = scan_dataset(tmp_path)
    assert scan.modes == {"CMYK": 1, "I;16": 1, "L": 1, "P": 1, "RGBA": 1}


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), BLUE)
    img.paste(Image.new("RGB", (20, 20), RED), (0, 0))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    path = save(tmp_path / "a" / "rotated.jpg", img, exif=exif, quality=95)

    loaded = load_image(path)
    assert loaded.size == (20, 40)
    assert np.allclose(loaded.getpixel((10, 5)), RED, atol=20)  # left half went to the top
    assert np.allclose(loaded.getpixel((10, 35)), BLUE, atol=20)

    with Image.open(path) as raw:
        assert raw.size == (40, 20)
        assert to_rgb(raw).size == (20, 40)

    save(tmp_path / "b" / "x.jpg", Image.new("RGB", (30, 30)))
    save(tmp_path / "b" / "y.jpg", Image.new("RGB", (30, 30)))
    save(tmp_path / "a" / "z.jpg", Image.new("RGB", (30, 30)))
    scan = scan_dataset(tmp_path)
    assert (scan.sizes.min_width, scan.sizes.max_height) == (20, 40)  # scan sizes are as displayed


# ----------------------------------------------------------------------- dataset errors


def test_error_no_usable_images(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "broken.jpg").write_bytes(b"")
    (tmp_path / "cats" / "notes.txt").write_text("x")
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DatasetError) as info:
        scan_dataset(tmp_path)
    msg = str(info.value)
    assert "no usable images" in msg and "1 skipped" in msg and "1 non-image" in msg
    assert "root/<class>/<image>" in msg and "\n" not in msg


def test_error_single_class(tmp_path):
    make_classes(tmp_path, {"cats": 3})
    with pytest.raises(DatasetError) as info:
        scan_dataset(tmp_path)
    msg = str(info.value)
    assert "'cats'" in msg and "at least 2 classes" in msg and "add one folder" in msg


def test_error_class_with_one_image_counts_after_skipping(tmp_path):
    make_classes(tmp_path, {"cats": 3, "dogs": 1, "fish": 2})
    (tmp_path / "fish" / "fish_01.jpg").write_bytes(b"")  # leaves one usable fish
    with pytest.raises(DatasetError) as info:
        scan_dataset(tmp_path)
    msg = str(info.value)
    assert "'dogs' (1 usable)" in msg and "'fish' (1 usable, 1 skipped)" in msg
    assert "'cats'" not in msg
    assert "at least 2 images, one to train and one to validate" in msg
    assert "add images" in msg and "\n" not in msg


def test_error_class_with_one_training_image_when_carving(tmp_path):
    make_classes(tmp_path / "train", {"a": 3, "b": 1})
    make_classes(tmp_path / "test", {"a": 1, "b": 2})
    expected = r"class 'b' \(1 usable\) has fewer than 2 usable images in train/"
    with pytest.raises(DatasetError, match=expected):
        scan_dataset(tmp_path)


def test_error_class_without_training_images(tmp_path):
    make_classes(tmp_path / "train", {"a": 2, "b": 2})
    make_classes(tmp_path / "val", {"a": 1, "b": 1, "c": 2})
    with pytest.raises(DatasetError, match=r"no usable training images in train/ for 'c'"):
        scan_dataset(tmp_path)


def _flat_images(root: Path) -> Path:
    for i in range(3):
        save(root / f"{i}.jpg")
    return root


def _split_and_class_folders(root: Path) -> Path:
    make_classes(root / "train", {"a": 2})
    make_classes(root / "cats", {"a": 2})
    return root


def _val_without_train(root: Path) -> Path:
    make_classes(root / "val", {"a": 2, "b": 2})
    return root


def _two_val_folders(root: Path) -> Path:
    for split in ("train", "valid", "val"):
        make_classes(root / split, {"a": 2})
    return root


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p / "nope", r"dataset not found: .*nope \(expected root/<class>/<image>"),
        (lambda p: save(p / "one.jpg"), r"is a file, not a dataset folder or \.csv manifest"),
        (_flat_images, r"found 3 images directly in .* but no class folders \(move each image"),
        (_split_and_class_folders, r"mixes split folders \(train\) with other folders \(cats\)"),
        (_val_without_train, r"split folders val but no train/"),
        (_two_val_folders, r"two folders for the val split"),
    ],
)
def test_bad_roots_raise_with_hint(tmp_path, setup, expected):
    root = setup(tmp_path)
    with pytest.raises(DatasetError, match=expected) as info:
        scan_dataset(root)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- misc


def test_file_digest(tmp_path):
    a = tmp_path / "a.bin"
    a.write_bytes(b"x" * 3_000_000)  # spans several read chunks
    b = tmp_path / "b.bin"
    b.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_digest(a) == hashlib.blake2b(a.read_bytes(), digest_size=16).hexdigest()
    assert len(file_digest(a)) == 32
    assert file_digest(a) != file_digest(b)
    assert file_digest(str(a)) == file_digest(a)


def test_many_files_scan_in_order_with_threads(tmp_path):
    # More files than one thread chunk, so the threaded path is exercised.
    make_classes(tmp_path, {"a": 150, "b": 150}, ext=".png")
    (tmp_path / "b" / "b_junk.png").write_bytes(b"junk")
    scan = scan_dataset(tmp_path)
    assert scan.num_images == 300
    assert [s.path for s in scan.samples] == sorted(s.path for s in scan.samples)
    assert [s.path for s in scan.skipped] == [str(tmp_path / "b" / "b_junk.png")]
    assert scan.model_dump() == scan_dataset(tmp_path).model_dump()


# --------------------------------------------------------------------------- reduced-scale JPEG decoding


@pytest.mark.parametrize("size", [(1001, 751), (4032, 3024), (300, 200), (292, 400), (291, 400), (97, 3000)])
@pytest.mark.parametrize("min_side", [None, 16, 73, 146, 256])
def test_a_large_jpeg_decodes_at_the_smallest_scale_that_keeps_min_side(tmp_path, size, min_side):
    from advisor.data.imagefile import reduced_jpeg_scale

    path = tmp_path / "photo.jpg"
    Image.new("RGB", size, (40, 90, 160)).save(path, quality=90)
    got = load_image(path, min_side=min_side).size
    scale = reduced_jpeg_scale(*size, min_side)
    assert got == (-(-size[0] // scale), -(-size[1] // scale))  # libjpeg rounds each side up
    if min_side is None:
        assert got == size
    else:
        assert min(got) >= min(min_side, min(size))  # never below what the resize keeps
        assert scale == 8 or min(size) < 2 * scale * min_side  # and no larger than it needs to be


def test_reduced_decoding_leaves_other_formats_whole_and_keeps_the_gpu_path_to_plain_small_jpegs(tmp_path):
    from advisor.data.imagefile import plain_jpeg_bytes

    png, small, large = tmp_path / "a.png", tmp_path / "small.jpg", tmp_path / "large.jpg"
    Image.new("RGB", (800, 600), (1, 2, 3)).save(png)
    Image.new("RGB", (200, 140), (1, 2, 3)).save(small)  # 140 < 2 x 73: decoded whole either way
    Image.new("RGB", (800, 600), (1, 2, 3)).save(large)
    assert load_image(png, min_side=73).size == (800, 600)
    assert plain_jpeg_bytes(small, min_side=73) == small.read_bytes()
    # decoded whole on a GPU but at an eighth on the CPU: sent to the CPU, so both paths give the same pixels
    assert plain_jpeg_bytes(large, min_side=73) is None and plain_jpeg_bytes(large) == large.read_bytes()
    assert load_image(large, min_side=73).size == (100, 75)


def test_the_transform_digest_keys_the_decode_rule(monkeypatch):
    import advisor.backbones.backbone as backbone_mod
    from advisor.backbones import create_backbone

    tc = create_backbone("efficientnet_lite0").transform_config
    before = tc.digest()
    monkeypatch.setattr(backbone_mod, "DECODE_RULE", "another rule")
    assert tc.digest() != before  # caches filled under another decode rule are not read as this one's


@pytest.mark.parametrize("kind", ["progressive", "cmyk", "greyscale", "exif-rotated"])
def test_reduced_decoding_keeps_mode_conversion_and_orientation(tmp_path, kind):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    path = tmp_path / f"{kind}.jpg"
    if kind == "progressive":
        base.save(path, progressive=True)
    elif kind == "cmyk":
        base.convert("CMYK").save(path)
    elif kind == "greyscale":
        base.convert("L").save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees on display
        base.save(path, exif=exif.tobytes())
    whole, reduced = load_image(path), load_image(path, min_side=73)
    assert whole.mode == reduced.mode == "RGB"
    assert reduced.size == (whole.size[0] // 8, whole.size[1] // 8)  # the same orientation, an eighth of each side
