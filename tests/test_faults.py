"""Fault injection on every write path: a full disk and kill -9 at the moment a file is written.

The four write paths of a run are the feature-cache shard, the fine-tune checkpoint, the model
and the report. For each, the write fails (ENOSPC) or the process is killed (SIGKILL) exactly
when the file would appear; then the run is resumed, and its final artifacts must equal those
of a run that was never interrupted.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_class_images
from safetensors.torch import load_file

from advisor.core.errors import AdvisorError
from advisor.decide.models import RunPlan
from advisor.decide.recipe import FinetuneRecipe
from advisor.execute.runner import resume_run, run_plan

# (what, a test on the destination file's name)
WRITE_PATHS = {
    "cache shard": lambda p: p.parent.parent.parent.name == "features" and p.suffix == ".safetensors",
    "checkpoint": lambda p: p.name == "last.safetensors",
    "model": lambda p: p.name == "model.safetensors",
    "report": lambda p: p.name == "report.md",
}


def _plan(dataset: Path) -> RunPlan:
    return RunPlan(dataset=str(dataset), backbone="test/tiny-cnn", strategy="partial-finetune", rule_ids=["test"],
                   input_size=32, batch_size=4, recipe=FinetuneRecipe(epochs=2, warmup_epochs=1))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_class_images(tmp_path_factory.mktemp("faults") / "ds", {"red": 6, "blue": 6}, size=36)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict:
    """The uninterrupted run every faulty run must end up equal to."""
    base = tmp_path_factory.mktemp("reference")
    run = Path(run_plan(_plan(dataset), run_dir=base / "run", cache_dir=base / "cache", num_workers=0).run_dir)
    return _final(run)


def _final(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {"tensors": load_file(str(run / "model.safetensors")), "val_accuracy": metrics["val_accuracy"],
            "confusion": metrics["confusion"], "status": json.loads((run / "run.json").read_text())["status"]}


def _assert_same(final: dict, reference: dict) -> None:
    assert final["status"] == "finished"
    assert final["val_accuracy"] == reference["val_accuracy"] and final["confusion"] == reference["confusion"]
    assert final["tensors"].keys() == reference["tensors"].keys()
    for k, v in reference["tensors"].items():
        assert torch.equal(final["tensors"][k], v), k


def _leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*.tmp")]


@pytest.mark.parametrize("target", list(WRITE_PATHS))
def test_disk_full_on_each_write_path_then_resume(dataset, reference, tmp_path, monkeypatch, target):
    real_replace = os.replace
    hits = []

    def full_disk(src, dst):
        if WRITE_PATHS[target](Path(dst)) and not hits:
            hits.append(dst)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    run, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(AdvisorError, match=r"disk full while writing .*needed about"):
        run_plan(_plan(dataset), run_dir=run, cache_dir=cache, num_workers=0)
    monkeypatch.setattr(os, "replace", real_replace)
    assert hits, f"the {target} was never written"
    assert _leftovers(run, cache) == []  # the half-written temporary is gone
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    assert not Path(hits[0]).exists()  # never half a file under the real name

    _assert_same(_final(Path(resume_run(run).run_dir)), reference)


@pytest.mark.parametrize("target", list(WRITE_PATHS))
def test_kill_9_on_each_write_path_then_resume(dataset, reference, tmp_path, target):
    run, cache, marker = tmp_path / "run", tmp_path / "cache", tmp_path / "killed"
    child = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_faults import WRITE_PATHS, _plan
        from advisor.execute.runner import run_plan
        real_replace = os.replace
        def kill_at_write(src, dst):
            if WRITE_PATHS[{target!r}](Path(dst)):
                Path({str(marker)!r}).write_text(str(dst))
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = kill_at_write
        run_plan(_plan(Path({str(dataset)!r})), run_dir={str(run)!r}, cache_dir={str(cache)!r}, num_workers=0)
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert marker.exists()
    assert not Path(marker.read_text()).exists()  # killed before the rename: the file never appeared
    assert json.loads((run / "run.json").read_text())["status"] == "running"

    _assert_same(_final(Path(resume_run(run).run_dir)), reference)
