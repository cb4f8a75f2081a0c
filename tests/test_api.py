"""The Python API: the docs/api.md example runs as written; options are checked as the CLI checks them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import advisor

REPO = Path(__file__).resolve().parents[1]


def test_the_docs_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) == 1
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "docs/api.md", "exec"), namespace)
    rec, out, report = namespace["rec"], namespace["out"], namespace["report"]
    assert rec.plan.strategy in ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")
    assert rec.decision is not None and rec.decision.sentence
    assert "features" in namespace["stages"], namespace["stages"]  # progress came through the callback
    assert Path(out.run_dir, "model.safetensors").exists()
    assert 0.5 < out.result.metrics.val_accuracy <= 1.0
    assert report.predictions and report.predictions[0].top[0].label in ("ants", "bees")
    why = namespace["why"]
    assert {why.a, why.b} == {"ants", "bees"} and abs(float(why.evidence.mean()) - why.gap) < 1e-3 * max(1, abs(why.gap))
    assert (tmp_path / "why.jpg").stat().st_size > 0


def test_the_functions_print_nothing_and_refuse_what_the_cli_refuses(tiny_dataset, capsys):
    with pytest.raises(advisor.AdvisorError, match="epochs must be a whole number from 1 to 1000, got 0"):
        advisor.recommend(tiny_dataset, epochs=0)
    with pytest.raises(advisor.AdvisorError, match="input_size must be a whole number from 32 to 1024"):
        advisor.run(tiny_dataset, strategy="linear-probe", input_size=4096)
    with pytest.raises(advisor.AdvisorError, match="unknown strategy 'fine-tune'"):
        advisor.run(tiny_dataset, strategy="fine-tune")
    with pytest.raises(advisor.AdvisorError, match="a budget must be a positive duration"):
        advisor.recommend(tiny_dataset, budget="soon")
    with pytest.raises(advisor.AdvisorError, match="unknown strategies"):
        advisor.compare(tiny_dataset, strategies=["linear-probe", "best"])
    assert capsys.readouterr() == ("", "")


def test_load_predict_and_export_of_a_tiny_run(tiny_dataset, tmp_path, capsys):
    out = advisor.run(tiny_dataset, strategy="linear-probe", backbone="test/tiny-cnn", runs_dir=tmp_path / "runs",
                      cache_dir=tmp_path / "cache", input_size=32)
    clf = advisor.load(out.run_dir)
    assert clf.classes == ["blue", "red"]
    files = sorted(Path(tiny_dataset).rglob("*.png")) or sorted(Path(tiny_dataset).rglob("*.jpg"))
    from PIL import Image

    by_path = clf.predict([str(files[0])], top_k=1).predictions[0].top[0]
    in_memory = clf.predict(Image.open(files[0])).predictions[0]
    assert in_memory.path == "<image 0>" and in_memory.top[0].label == by_path.label
    assert abs(in_memory.top[0].probability - by_path.probability) < 1e-6
    # files decoded by worker processes or in this one, PIL images mixed in, a bad file among them: the same
    # predictions in input order, the skip reported, progress to the total, the model's layout as it was
    from advisor.backbones.backbone import memory_format_of

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    layout = memory_format_of(clf.model)
    seen = []
    items = [str(f) for f in files[:5]] + [str(bad)] + [str(f) for f in files[5:]] + [Image.open(files[0])]
    one = clf.predict(items, top_k=2, batch_size=3, workers=0)
    two = clf.predict(items, top_k=2, batch_size=3, workers=2, progress=lambda *a: seen.append(a))
    assert one == two and [q.path for q in one.predictions] == [str(f) for f in files] + [f"<image {len(files) + 1}>"]
    assert [Path(s.path).name for s in one.skipped] == ["bad.jpg"]
    assert seen[-1] == ("predict", len(items), len(items)) and memory_format_of(clf.model) == layout
    exported = clf.export(tmp_path / "exp")
    assert "torchscript" in exported.files
    assert capsys.readouterr() == ("", "")  # nothing printed by the library


def test_help_reads_like_a_reference():
    doc = subprocess.run([sys.executable, "-c", "import advisor; help(advisor.recommend)"], capture_output=True,
                         text=True, check=True, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"}).stdout
    for part in ("Parameters", "Returns", "Raises", "Examples", "budget", "AdvisorError"):
        assert part in doc
