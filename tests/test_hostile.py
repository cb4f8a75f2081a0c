"""Hostile input: a generated corpus of bad files, layouts, manifests, artifacts, caches and options.

Every case runs the real CLI entry point (in-process, under a hang guard) and asserts the exact
outcome: the exit code, a one-line message naming the thing and the fix, the skip counts, and
no traceback or "internal error". Nothing binary is shipped: each case writes its own files.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EXAMPLE, write_class_images
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from advisor.cli.app import main
from advisor.decide.models import RunPlan
from advisor.execute.runner import run_plan

HANG_GUARD_S = 60


@pytest.fixture(autouse=True)
def _no_hang():
    """A case that blocks (e.g. on a FIFO) fails after HANG_GUARD_S instead of hanging CI."""
    def timeout(signum, frame):
        raise TimeoutError(f"hung for {HANG_GUARD_S} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(HANG_GUARD_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    code = exc.value.code if isinstance(exc.value.code, int) else 1
    assert "Traceback" not in captured.err and "internal error" not in captured.err, captured.err
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def inspect_json(root, capsys) -> dict:
    code, out, err = cli(["inspect", root, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def skips(report: dict) -> dict[str, str]:
    return {Path(s["path"]).name: s["reason"] for s in report["skipped"]}


@pytest.fixture
def base(tmp_path) -> Path:
    """Two good classes of 4 images each; cases add their bad files to it."""
    return write_class_images(tmp_path / "ds", {"a": 4, "b": 4}, size=36)


def png_bytes(size=(36, 36), colour=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def encoded(fmt: str, size=(64, 64)) -> bytes:
    """Seeded noise (incompressible, so a cut always lands inside the pixel data)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


# ------------------------------------------------------------------ names that rendering interprets


def test_rich_markup_in_a_path_is_printed_literally(tmp_path, capsys):
    root = write_class_images(tmp_path / "x[" / "y]", {"a[bold]": 3, "b[red]": 3}, size=36)
    (root / "a[bold]" / "evil[red].png").write_bytes(b"")
    code, out, err = cli(["inspect", root], capsys)
    assert code == 0, err
    assert str(root) in out and "a[bold]" in out and "b[red]" in out and "evil[red].png" in out
    missing = tmp_path / "no[/bold]where"
    code, _, err = cli(["inspect", missing], capsys)
    assert code == 2 and str(missing) in one_line_error(err)


def test_terminal_escape_bytes_in_names_never_reach_the_terminal(tmp_path, capsys):
    root = write_class_images(tmp_path / "ds", {"a\x1b[31mred": 3, "b\x07": 3}, size=36)
    (root / "a\x1b[31mred" / "x\x1b]0;pwned\x07.jpg").write_text("not an image")
    code, out, err = cli(["inspect", root], capsys)
    assert code == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "a\\x1b[31mred" in out and "x\\x1b]0;pwned\\x07.jpg" in out


def test_undecodable_bytes_in_a_file_name_are_shown_escaped(tmp_path, capsys):
    root = write_class_images(tmp_path / "ds", {"a": 3, "b": 3}, size=36)
    name = os.fsdecode(b"bad\xff\xfename.png")
    (root / "a" / name).write_bytes(b"")
    code, out, err = cli(["inspect", root], capsys)
    assert code == 0, err
    assert "bad\\xff\\xfename.png" in out and "empty file (0 bytes)" in out


# ------------------------------------------------------------------ files that are not regular files


def test_fifo_named_like_an_image_is_skipped_without_blocking(base, capsys):
    os.mkfifo(base / "a" / "pipe.jpg")
    report = inspect_json(base, capsys)
    assert skips(report) == {"pipe.jpg": "not a regular file (a FIFO)"}
    assert report["counts"]["train"]["a"] + report["counts"]["val"]["a"] == 4


def test_socket_named_like_an_image_is_skipped(base, capsys):
    path = base / "b" / "sock.png"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
        report = inspect_json(base, capsys)
    finally:
        s.close()
    assert skips(report) == {"sock.png": "not a regular file (a socket)"}


def test_features_do_not_block_on_a_fifo(base, tmp_path, capsys):
    os.mkfifo(base / "a" / "pipe.png")
    code, out, err = cli(["features", base, "--backbone", "test/tiny-cnn", "--cache-dir", tmp_path / "c",
                          "--workers", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 8


# ------------------------------------------------------------------ symlinks


def test_symlink_to_a_parent_folder_inside_a_class_is_skipped(base, capsys):
    os.symlink("..", base / "a" / "up")
    report = inspect_json(base, capsys)
    assert list(skips(report)) == ["up"] and "leaves its class folder" in skips(report)["up"]
    assert sum(report["counts"][s]["a"] for s in report["counts"]) == 4  # no image counted twice


def test_symlink_loop_inside_a_class_is_skipped(base, capsys):
    (base / "a" / "sub").mkdir()
    os.symlink("..", base / "a" / "sub" / "loop")
    report = inspect_json(base, capsys)
    assert skips(report) == {"loop": "symlink loop: points at a folder that contains it"}


def test_folder_symlink_that_leaves_the_dataset_is_skipped(base, tmp_path, capsys):
    outside = write_class_images(tmp_path / "elsewhere", {"x": 3}, size=36) / "x"
    os.symlink(outside, base / "a" / "more")
    report = inspect_json(base, capsys)
    assert "leaves its class folder" in skips(report)["more"]
    assert sum(report["counts"][s]["a"] for s in report["counts"]) == 4


def test_file_symlinks_are_followed_and_those_leaving_the_dataset_counted(base, tmp_path, capsys):
    outside = tmp_path / "pool"
    outside.mkdir()
    (outside / "far.png").write_bytes(png_bytes())
    os.symlink(outside / "far.png", base / "a" / "far.png")
    os.symlink(base / "a" / sorted(os.listdir(base / "a"))[0], base / "a" / "again.png")  # same file twice
    report = inspect_json(base, capsys)
    assert report["external_links"] == 1
    assert skips(report) == {"again.png": "same file as another image of this class (symlink)"}
    assert sum(report["counts"][s]["a"] for s in report["counts"]) == 5


def test_two_classes_that_are_the_same_folder(base, capsys):
    os.symlink(base / "a", base / "c")
    code, _, err = cli(["inspect", base], capsys)
    assert code == 2
    line = one_line_error(err)
    assert "'c'" in line and "fewer than 2 usable images" in line


def test_dangling_symlink_is_a_missing_file(base, capsys):
    os.symlink(base / "nowhere.png", base / "b" / "gone.png")
    assert skips(inspect_json(base, capsys)) == {"gone.png": "missing file"}


# ------------------------------------------------------------------ header-valid but undecodable


@pytest.mark.parametrize("fmt,ext", [("BMP", ".bmp"), ("GIF", ".gif"), ("TIFF", ".tif"), ("PNG", ".png"),
                                     ("JPEG", ".jpg"), ("WEBP", ".webp"), ("PPM", ".ppm")])
def test_truncated_images_are_skipped(base, fmt, ext, capsys):
    data = encoded(fmt)
    (base / "a" / f"cut{ext}").write_bytes(data[: len(data) // 2])
    report = inspect_json(base, capsys)
    reason = skips(report)[f"cut{ext}"]
    assert "truncated" in reason or "cannot decode" in reason or "corrupt" in reason, reason


def test_jpeg_corrupt_mid_stream_is_skipped(base, capsys):
    data = bytearray(encoded("JPEG", (256, 256)))
    start = data.index(b"\xff\xda") + 350  # inside the entropy-coded scan
    rnd = random.Random(1)
    data[start : start + 64] = bytes(rnd.randrange(256) for _ in range(64))
    (base / "a" / "mid.jpg").write_bytes(bytes(data))
    with pytest.raises(OSError, match="broken data stream"):  # the header is valid; the pixels are not
        Image.open(base / "a" / "mid.jpg").load()
    assert skips(inspect_json(base, capsys))["mid.jpg"].startswith("cannot decode JPEG (broken data stream")


def test_eps_renamed_jpg_is_refused_by_content(base, capsys):
    (base / "a" / "doc.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    reason = skips(inspect_json(base, capsys))["doc.jpg"]
    assert reason.startswith("EPS format is not read by advisor") and "convert it to PNG or JPEG" in reason


def test_a_class_whose_images_all_fail_is_a_clear_error_before_training(base, tmp_path, capsys):
    bad = base / "c"
    bad.mkdir()
    for i in range(3):
        data = encoded("BMP")
        (bad / f"{i}.bmp").write_bytes(data[: len(data) // 3])
    code, _, err = cli(["run", base, "--strategy", "linear-probe", "--backbone", "test/tiny-cnn",
                        "--runs-dir", tmp_path / "runs", "--workers", "0"], capsys)
    assert code == 2
    line = one_line_error(err)
    assert "class 'c' (0 usable, 3 skipped)" in line and "add images to them" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_png_whose_header_claims_a_bomb(base, capsys):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
    (base / "a" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    assert skips(inspect_json(base, capsys))["bomb.png"].startswith("decompression bomb: 30000x30000")


def test_extreme_aspect_ratio_is_skipped(base, capsys):
    Image.new("L", (2_000_000, 1)).save(base / "a" / "line.png")
    reason = skips(inspect_json(base, capsys))["line.png"]
    assert reason.startswith("extreme shape 2000000x1") and "crop or pad" in reason


def test_empty_and_text_files_named_as_images(base, capsys):
    (base / "a" / "empty.png").write_bytes(b"")
    (base / "a" / "text.png").write_text("hello")
    assert skips(inspect_json(base, capsys)) == {"empty.png": "empty file (0 bytes)",
                                                "text.png": "not an image (cannot identify image file)"}


# ------------------------------------------------------------------ formats and names


def test_netpbm_images_are_accepted(tmp_path, capsys):
    root = tmp_path / "pnm"
    for c, colour in (("a", 30), ("b", 220)):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (32, 32), colour + i).save(root / c / f"{i}.pgm")
        Image.new("RGB", (32, 32), (colour, 0, 0)).save(root / c / "x.ppm")
    report = inspect_json(root, capsys)
    assert report["skipped"] == [] and sum(sum(v.values()) for v in report["counts"].values()) == 8


def test_ignored_extensions_are_counted_and_named(base, capsys):
    (base / "a" / "notes.txt").write_text("x")
    (base / "a" / "figure.eps").write_text("x")
    (base / "b" / "more.txt").write_text("x")
    (base / "b" / ".hidden.png").write_bytes(png_bytes())
    report = inspect_json(base, capsys)
    assert report["ignored_extensions"] == {".eps": 1, ".txt": 2} and report["ignored_hidden"] == 1
    code, out, _ = cli(["inspect", base], capsys)
    assert ".txt 2" in out and ".eps 1" in out


# ------------------------------------------------------------------ layouts and manifests


def test_manifest_row_pointing_at_a_fifo(base, tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.png")
    rows = ["path,label"] + [f"{p},{p.parent.name}" for p in sorted(base.rglob("*.png"))] + [f"{tmp_path / 'pipe.png'},a"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    assert skips(inspect_json(manifest, capsys)) == {"pipe.png": "not a regular file (a FIFO)"}


@pytest.mark.parametrize("content,message", [
    (b"file,class\nx.png,a\n", "bad header on line 1"),
    (b"path,label\n\xff\xfe\x00x,a\n", "is not UTF-8 text"),
    (b"path,label\nx.png,a,extra\n", "has 3 fields, expected 2"),
])
def test_bad_manifests(tmp_path, content, message, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(content)
    code, _, err = cli(["inspect", manifest], capsys)
    assert code == 2 and message in one_line_error(err)


@pytest.mark.parametrize("make,message", [
    (lambda p: p.mkdir(), "no usable images"),
    (lambda p: p.write_text("x"), "is a file, not a dataset folder"),
    (lambda p: write_class_images(p, {"only": 3}, size=36), "only one class found"),
    (lambda p: write_class_images(p, {"a": 3, "b": 1}, size=36), "fewer than 2 usable images"),
])
def test_unusable_layouts(tmp_path, make, message, capsys):
    root = tmp_path / "d"
    make(root)
    code, _, err = cli(["inspect", root], capsys)
    assert code == 2 and message in one_line_error(err)


# ------------------------------------------------------------------ options, checked before any work


@pytest.mark.parametrize("args", [
    ["run", "{ds}", "--strategy", "linear-probe", "--input-size", "-5"],
    ["run", "{ds}", "--strategy", "linear-probe", "--input-size", "0"],
    ["run", "{ds}", "--strategy", "linear-probe", "--input-size", "8"],
    ["run", "{ds}", "--strategy", "full-finetune", "--epochs", "-1"],
    ["run", "{ds}", "--strategy", "linear-probe", "--workers", "-1"],
    ["recommend", "{ds}", "--sample-size", "0"],
    ["compare", "{ds}", "--input-size", "9999"],
    ["inspect", "{ds}", "--val-fraction", "0"],
    ["inspect", "{ds}", "--val-fraction", "1.5"],
    ["features", "{ds}", "--batch-size", "0"],
    ["predict", "{ds}", "{ds}", "--top-k", "0"],
])
def test_out_of_range_options_are_refused_before_any_work(base, tmp_path, monkeypatch, args, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli([a.format(ds=base) for a in args], capsys)
    line = one_line_error(err)
    assert code == 2 and "invalid value for --" in line and ("range" in line or "between 0 and 1" in line), line
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_backbone_list_hides_the_test_fixture(monkeypatch, capsys):
    monkeypatch.delenv("ADVISOR_TEST_BACKBONES", raising=False)
    code, out, _ = cli(["backbones", "--json"], capsys)
    assert code == 0 and "test/tiny-cnn" not in out and "efficientnet_lite0" in out
    code, _, err = cli(["recommend", EXAMPLE, "--backbone", "test/tiny-cnn"], capsys)
    assert code == 2 and "test fixture with random weights" in one_line_error(err)


# ------------------------------------------------------------------ damaged artifacts


@pytest.fixture
def trained(base, tmp_path) -> Path:
    plan = RunPlan(dataset=str(base), backbone="test/tiny-cnn", strategy="linear-probe", rule_ids=["test"], input_size=32)
    return Path(run_plan(plan, runs_dir=tmp_path / "runs", num_workers=0, cache_dir=tmp_path / "cache").run_dir)


def _edit_card(run: Path, *, resign: bool = True, **changes) -> None:
    """Change model.json; ``resign``: recompute its digest, as a forger who knows the scheme would (the checks
    behind the digest must still refuse the card)."""
    from advisor.backbones.classifier import ModelCard, model_digest

    card = json.loads((run / "model.json").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            card[outer][inner] = value
        else:
            card[key] = value
    if resign and "model_digest" not in changes:
        try:
            card["model_digest"] = model_digest(run / "model.safetensors", ModelCard.model_validate(card))
        except ValueError:  # a card the schema refuses cannot be signed: it is refused before the digest
            pass
    (run / "model.json").write_text(json.dumps(card))


@pytest.mark.parametrize("damage,message", [
    (lambda r: (r / "model.safetensors").write_bytes(b""), "digest differs"),
    (lambda r: _edit_card(r, resign=False, **{"transform.mean": [0.4, 0.5, 0.5]}), "digest differs"),
    (lambda r: (r / "model.json").write_text("{not json"), "model.json is damaged"),
    (lambda r: _edit_card(r, classes=["a", "b", "c"]), "disagree: head is (2,"),
    (lambda r: _edit_card(r, taps=["stage1"]), "says"),
    (lambda r: _edit_card(r, backbone_in_file=True), "does not hold backbone weights"),
    (lambda r: _edit_card(r, **{"transform.std": [0.5, -1, 0.5]}), "model.json is damaged (transform.std"),
    (lambda r: _edit_card(r, **{"transform.std": [0.5, 1e-30, 0.5]}), "model.json is damaged (transform.std"),
    (lambda r: _edit_card(r, **{"transform.input_size": 0}), "model.json is damaged"),
    (lambda r: _edit_card(r, classes=["a", "a"]), "empty or repeated"),
])
def test_damaged_model_artifacts_are_named(trained, base, damage, message, capsys):
    damage(trained)
    code, _, err = cli(["predict", trained, base / "a"], capsys)
    line = one_line_error(err)
    assert code == 2 and message in line, line
    assert "train again" in line or "copy both files" in line


def test_a_model_file_from_another_run_is_refused(trained, base, tmp_path, capsys):
    data = bytearray((trained / "model.safetensors").read_bytes())
    with safe_open(str(trained / "model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["head.bias"] = tensors["head.bias"] + 1
    save_file(tensors, str(trained / "model.safetensors"), metadata={"format": "advisor-model-v1"})
    assert bytes(data) != (trained / "model.safetensors").read_bytes()
    code, _, err = cli(["predict", trained, base / "a"], capsys)
    assert code == 2 and "digest differs" in one_line_error(err)


def test_a_card_without_a_digest_is_refused(trained, base, capsys):
    _edit_card(trained, model_digest=None)
    code, _, err = cli(["predict", trained, base / "a"], capsys)
    assert code == 2 and "digest differs" in one_line_error(err)


def test_a_corrupt_model_file_under_a_resigned_card_is_named(trained, base, capsys):
    (trained / "model.safetensors").write_bytes(os.urandom(200))
    _edit_card(trained)  # the digest now covers the random bytes: the loader still refuses them
    code, _, err = cli(["predict", trained, base / "a"], capsys)
    assert code == 2 and "model.safetensors is damaged" in one_line_error(err)


@pytest.mark.parametrize("name,content,message", [
    ("plan.json", "{", "plan.json is damaged"),
    ("run.json", '{"dataset": 1}', "run.json is damaged"),
    ("run.json", "", "run.json is damaged"),
])
def test_damaged_run_files_on_resume(trained, name, content, message, capsys):
    state = json.loads((trained / "run.json").read_text())
    state["status"] = "interrupted"
    (trained / "run.json").write_text(json.dumps(state))
    (trained / name).write_text(content)
    code, _, err = cli(["run", "--resume", trained], capsys)
    assert code == 2 and message in one_line_error(err)


def test_damaged_plan_given_to_run(tmp_path, base, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text('{"dataset": "x", "backbone": "test/tiny-cnn", "strategy": "nope", "rule_ids": []}')
    code, _, err = cli(["run", "--plan", plan], capsys)
    assert code == 2 and "plan.json is damaged (strategy" in one_line_error(err)


def test_a_zero_byte_checkpoint_is_named_on_resume(base, tmp_path, capsys):
    from advisor.decide.recipe import FinetuneRecipe

    plan = RunPlan(dataset=str(base), backbone="test/tiny-cnn", strategy="partial-finetune", rule_ids=["test"],
                   input_size=32, batch_size=4, recipe=FinetuneRecipe(epochs=1, warmup_epochs=0, ema=None))
    run = Path(run_plan(plan, runs_dir=tmp_path / "runs", num_workers=0, cache_dir=tmp_path / "cache",
                        keep_checkpoint=True).run_dir)  # a finished run drops it otherwise
    state = json.loads((run / "run.json").read_text())
    state["status"] = "interrupted"
    (run / "run.json").write_text(json.dumps(state))
    (run / "checkpoints" / "last.safetensors").write_bytes(b"")
    code, _, err = cli(["run", "--resume", run], capsys)
    line = one_line_error(err)
    assert code == 2 and "last.safetensors is damaged" in line and "delete it" in line


# ------------------------------------------------------------------ damaged cache


def _features(base, cache, capsys) -> dict:
    code, out, err = cli(["features", base, "--backbone", "test/tiny-cnn", "--cache-dir", cache, "--workers", "0",
                          "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def _shards(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.safetensors") if p.is_file())


def _rewrite(shard: Path, change) -> None:
    with safe_open(str(shard), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    save_file(tensors, str(shard), metadata=meta)


@pytest.mark.parametrize("damage", ["nan", "finite-garbage", "fewer-keys", "truncated"])
def test_a_damaged_cache_shard_is_dropped_counted_and_recomputed(base, tmp_path, damage, capsys):
    from advisor.backbones import create_backbone
    from advisor.data.scan import scan_dataset
    from advisor.measure.features import extract_features

    cache = tmp_path / "c"
    first = _features(base, cache, capsys)
    assert first["computed"] == 8
    (shard,) = _shards(cache)
    if damage == "nan":
        _rewrite(shard, lambda m, t: t["tap.pre_logits"].fill_(float("nan")))
    elif damage == "finite-garbage":
        _rewrite(shard, lambda m, t: t["tap.pre_logits"].mul_(-3.0))
    elif damage == "fewer-keys":
        _rewrite(shard, lambda m, t: m.update(keys=json.dumps(json.loads(m["keys"])[:-1])))
    else:
        shard.write_bytes(shard.read_bytes()[:200])
    again = _features(base, cache, capsys)
    assert again["computed"] == 8 and again["from_cache"] == 0
    assert [Path(d["path"]).name for d in again["cache_dropped"]] == [shard.name]
    third = _features(base, cache, capsys)
    assert third["from_cache"] == 8 and third["cache_dropped"] == []
    bb = create_backbone("test/tiny-cnn", pretrained=False)
    fresh = extract_features(scan_dataset(base).samples, bb, cache_dir=tmp_path / "fresh", num_workers=0)
    cached = extract_features(scan_dataset(base).samples, bb, cache_dir=cache, num_workers=0)
    torch.testing.assert_close(cached.features["pre_logits"], fresh.features["pre_logits"])


def test_a_folder_named_like_a_shard_is_ignored(base, tmp_path, capsys):
    cache = tmp_path / "c"
    _features(base, cache, capsys)
    (shard,) = _shards(cache)
    (shard.parent / "zz-folder.safetensors").mkdir()
    again = _features(base, cache, capsys)
    assert again["from_cache"] == 8 and [Path(d["path"]).name for d in again["cache_dropped"]] == ["zz-folder.safetensors"]


def test_a_cache_path_that_is_a_file_fails_before_any_work(base, tmp_path, capsys):
    blocker = tmp_path / "cachefile"
    blocker.write_text("x")
    code, _, err = cli(["features", base, "--backbone", "test/tiny-cnn", "--cache-dir", blocker], capsys)
    line = one_line_error(err)
    assert code == 2 and f"--cache-dir: {blocker} is a file, not a folder" in line
    from advisor.backbones import create_backbone
    from advisor.core.errors import AdvisorError
    from advisor.data.scan import scan_dataset
    from advisor.measure.features import extract_features

    with pytest.raises(AdvisorError, match="the feature cache .* is a file"):  # the core checks too (API users)
        extract_features(scan_dataset(base).samples, create_backbone("test/tiny-cnn"), cache_dir=blocker, num_workers=0)


def test_a_runs_dir_that_is_a_file_fails_before_any_work(base, tmp_path, capsys):
    blocker = tmp_path / "runsfile"
    blocker.write_text("x")
    code, _, err = cli(["run", base, "--strategy", "linear-probe", "--backbone", "test/tiny-cnn", "--runs-dir", blocker,
                        "--cache-dir", tmp_path / "c"], capsys)
    assert code == 2 and "--runs-dir" in one_line_error(err) and "is a file" in one_line_error(err)


# ------------------------------------------------------------------ predict


def test_predict_skips_bad_files_and_predicts_the_rest(trained, base, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(next((base / "a").iterdir()), inputs / "good.png")
    Image.new("L", (2_000_000, 1)).save(inputs / "line.png")
    (inputs / "cut.png").write_bytes(png_bytes()[:40])
    os.mkfifo(inputs / "pipe.png")
    code, out, err = cli(["predict", trained, inputs, "--json"], capsys)
    assert code == 0, err
    rep = json.loads(out)
    assert [Path(p["path"]).name for p in rep["predictions"]] == ["good.png"]
    assert sorted(Path(s["path"]).name for s in rep["skipped"]) == ["cut.png", "line.png"]
    assert rep["ignored"] == 1  # the FIFO


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.png",
    lambda d: (d / "README").write_text("x") and d / "README",
    lambda d: (d / "README.md").write_text("x") and d,
])
def test_predict_that_classifies_nothing_exits_non_zero(trained, tmp_path, make, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    target = make(folder)
    code, out, err = cli(["predict", trained, target], capsys)
    assert code == 2 and out == ""
    assert "no image" in one_line_error(err)
