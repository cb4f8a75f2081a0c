"""Everything advisor reads back is input: caches, run files and records are checked like user files.

Each case here is one the hostile audit named: a library's own disk-full error, a changed or
foreign cache entry, a shard from other settings, numbers out of range in a plan, lookalike
class names, names that reach written reports.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_class_images
from safetensors import SafetensorError

import advisor
from advisor.cli.app import main
from advisor.core.errors import AdvisorError, DatasetError
from advisor.core.io import append_text, call_writing, read_bytes_checked

FULL = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'


def cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "internal error" not in out.err, out.err
    return exc.value.code, out.out, out.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_class_images(tmp_path / "d", {"red": 6, "blue": 6}, size=36)


# ------------------------------------------------------------------ disk full, the libraries' own error types


@pytest.mark.parametrize("module,where", [
    ("advisor.measure.cache", "cache"),        # feature shards
    ("advisor.backbones.classifier", "runs"),  # the model
    ("strategies.resume", "runs"),             # fine-tune checkpoints
])
def test_a_safetensors_disk_full_is_one_line_and_leaves_no_file(module, where, data, tmp_path, monkeypatch, capsys):
    import importlib

    mod = importlib.import_module(module)
    real = mod.save_file

    def full(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)  # the bytes land, then the library reports the OS error
        raise SafetensorError(FULL)

    monkeypatch.setattr(mod, "save_file", full)
    strategy = "partial-finetune" if module == "strategies.resume" else "linear-probe"
    code, _, err = cli(["run", "--strategy", strategy, data, "--backbone", "test/tiny-cnn", "--input-size", "32",
                        "--epochs", "1", "--runs-dir", tmp_path / "runs", "--cache-dir", tmp_path / "cache"], capsys)
    line = one_line(err)
    assert code == 2 and "disk full while writing" in line, line
    leftovers = [p for p in (tmp_path / where).rglob("*") if p.suffix == ".tmp" or p.name in ("model.safetensors",
                                                                                              "last.safetensors")]
    assert leftovers == [], leftovers  # nothing half-written under a final name, no temporary left behind


def test_export_writers_map_library_failures(tmp_path):
    def torch_style(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                           "file write failed")

    with pytest.raises(AdvisorError, match=r"cannot write .*model.torchscript.pt"):
        call_writing(tmp_path / "model.torchscript.pt", torch_style)
    assert list(tmp_path.iterdir()) == []


def test_appended_logs_fail_as_one_storage_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "events.jsonl").mkdir()  # cannot be opened for appending
    with pytest.raises(AdvisorError, match=r"cannot write .*events.jsonl"):
        append_text(folder / "events.jsonl", "{}\n")


def test_a_real_small_filesystem(data, tmp_path, capsys):
    """Where the machine lets a test mount a 2 MB tmpfs: a run on it ends in the one-line disk-full error."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("this machine does not let a test mount a small filesystem")
    try:
        code, _, err = cli(["run", "--strategy", "partial-finetune", data, "--backbone", "test/tiny-cnn",
                            "--input-size", "64", "--epochs", "1", "--runs-dir", mount / "runs", "--cache-dir",
                            mount / "cache", "--keep-checkpoint"], capsys)
        if code != 0:  # what does not fit is one line; what fits is a finished run
            assert code == 2 and ("disk full" in one_line(err) or "cannot write" in one_line(err)), err
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ------------------------------------------------------------------ caches


def test_a_decoded_entry_with_other_pixels_is_caught_and_recomputed(data, tmp_path):
    from advisor.data.decoded import DecodedImages
    from advisor.data.imagefile import file_digest

    path = next((data / "red").iterdir())
    store = DecodedImages(tmp_path, side=40, interpolation="bicubic")
    key = file_digest(path)
    clean = store.get(key, str(path)).clone()
    entry = store.entry(key)
    np.save(entry.with_suffix(".tmp.npy"), np.zeros((40, 40, 3), np.uint8))  # a valid array of other content
    os.replace(entry.with_suffix(".tmp.npy"), entry)
    again = DecodedImages(tmp_path, side=40, interpolation="bicubic")
    assert torch.equal(again.get(key, str(path)), clean) and again.invalid == 1
    assert torch.equal(DecodedImages(tmp_path, side=40, interpolation="bicubic").get(key, str(path)), clean)


def test_a_decoded_entry_that_is_a_fifo_does_not_block(data, tmp_path):
    from advisor.data.decoded import DecodedImages
    from advisor.data.imagefile import file_digest

    path = next((data / "blue").iterdir())
    store = DecodedImages(tmp_path, side=40, interpolation="bicubic")
    key = file_digest(path)
    store.entry(key).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(store.entry(key))
    assert store.get(key, str(path)).shape[0] == 3 and store.invalid == 1  # returned, not blocked in open()


def test_a_feature_shard_from_other_settings_is_refused(data, tmp_path, capsys):
    from advisor.backbones import create_backbone
    from advisor.measure.cache import FeatureCache

    cache = tmp_path / "cache"
    args = ["features", data, "--backbone", "test/tiny-cnn", "--cache-dir", cache, "--json"]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    bb = create_backbone("test/tiny-cnn", pretrained=False)
    here = FeatureCache.for_backbone(cache, bb)
    other = FeatureCache.for_backbone(cache, bb.with_input_size(48))
    other.dir.mkdir(parents=True, exist_ok=True)
    for shard in here.dir.glob("*.safetensors"):  # a shard computed at another input size, copied in
        (other.dir / shard.name).write_bytes(shard.read_bytes())
    fresh = FeatureCache.for_backbone(cache, bb.with_input_size(48))
    assert fresh.index() == {} and fresh.dropped and "other settings" in fresh.dropped[0].reason


# ------------------------------------------------------------------ numbers read from files


@pytest.mark.parametrize("change,message", [
    (lambda p: p.update(val_fraction=float("nan")), "val_fraction"),
    (lambda p: p["recipe"].update(epochs=10**9), "recipe.epochs"),
    (lambda p: p.update(seed=2**70), "seed"),
    (lambda p: p.update(input_size=-3), "input_size"),
    (lambda p: p["recipe"].update(lr_head=1e300), "recipe.lr_head"),
])
def test_a_plan_file_gets_the_command_lines_limits(change, message, data, tmp_path, capsys):
    from advisor.decide.models import RunPlan

    plan = RunPlan(dataset=str(data), backbone="test/tiny-cnn", strategy="partial-finetune", rule_ids=["t"],
                   input_size=32).model_dump(mode="json")
    change(plan)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan, allow_nan=True))
    code, _, err = cli(["run", "--plan", path, "--runs-dir", tmp_path / "runs"], capsys)
    line = one_line(err)
    assert code == 2 and "plan.json is damaged" in line and message in line, line


def test_a_huge_seed_is_a_usage_error(data, capsys):
    code, _, err = cli(["inspect", data, "--seed", str(2**70)], capsys)
    assert code == 2 and "--seed" in one_line(err)


def test_calibrate_skips_bad_track_record_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path))
    good = {"dataset": "/d", "strategy": "linear-probe", "train_per_class_median": 20, "achieved": 0.9, "forecast": 0.85,
            "forecast_low": 0.8, "forecast_high": 0.95}
    lines = [json.dumps(good), json.dumps({"dataset": "/d"}), json.dumps({**good, "achieved": 7}), "{",
             json.dumps({**good, "similarity": "high"}), json.dumps({**good, "input_size": 1e300})]
    (tmp_path / "track_record.jsonl").write_text("\n".join(lines).replace('"achieved": 7', '"achieved": NaN') + "\n")
    code, out, err = cli(["calibrate", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["local_runs"] == 1 and json.loads(out)["skipped_lines"] == [2, 3, 4, 5, 6]


def test_a_json_run_file_that_is_a_fifo_is_one_line(tmp_path):
    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    with pytest.raises(OSError):
        read_bytes_checked(fifo)
    from advisor.decide.advise import load_plan

    with pytest.raises(AdvisorError, match="not a regular file"):
        load_plan(fifo)


# ------------------------------------------------------------------ names


def test_lookalike_class_names_are_refused_naming_both(tmp_path, capsys):
    root = tmp_path / "d"
    write_class_images(root, {"caf\u00e9": 3, "cafe\u0301": 3, "dog": 3})  # NFC and NFD spellings of one word
    code, _, err = cli(["inspect", root], capsys)
    line = one_line(err)
    assert code == 2 and "differ only in Unicode normalisation" in line and "caf\\xe9" in line, line
    cased = tmp_path / "e"
    write_class_images(cased, {"Cat": 3, "cat": 3})
    with pytest.raises(DatasetError, match="differ only in letter case"):
        from advisor.data.scan import scan_dataset

        scan_dataset(cased)


def test_hostile_class_names_reach_reports_as_text(tmp_path):
    names = {"[x](javascript:alert(1))": 6, "evil\x1b[31mred": 6, "<b>bold|pipe": 6}
    root = write_class_images(tmp_path / "d", names)
    out = advisor.run(root, strategy="linear-probe", backbone="test/tiny-cnn", input_size=32, runs_dir=tmp_path / "runs",
                      cache_dir=tmp_path / "cache")
    md = (Path(out.run_dir) / "report.md").read_text()
    page = (Path(out.run_dir) / "report.html").read_text()
    for text in (md, page):
        assert "\x1b" not in text  # no raw terminal escape in any written report
    assert "](javascript:" not in md and "<b>bold" not in md
    assert "\\[x\\]\\(javascript:alert\\(1\\)\\)" in md and "\\<b\\>bold\\|pipe" in md and r"evil\\x1b" in md
    assert "<b>bold" not in page and "&lt;b&gt;bold|pipe" in page


def test_markdown_and_figure_labels_escape_what_they_must():
    from advisor.core.names import figure_label, markdown, printable

    assert printable("a\x1bb\u202ec") == "a\\x1bb\\u202ec"
    assert markdown("*x*|[y](z)") == "\\*x\\*\\|\\[y\\]\\(z\\)"
    assert figure_label("$5 price", limit=40) == "\\$5 price" and figure_label("a" * 20, limit=8) == "aaaaaaa…"
    assert errno.ENOSPC  # (kept: the module is about OS errors too)
