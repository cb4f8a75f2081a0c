"""Test-time mirror averaging (--tta): what it computes, that it agrees with the evidence maps, and when it is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import advisor
from advisor.core.errors import AdvisorError
from advisor.report.evidence import explain
from tests.conftest import write_class_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    data = write_class_images(root / "data", {"red": 8, "blue": 8, "green": 8}, size=48)
    out = advisor.run(data, strategy="linear-probe", backbone="test/tiny-cnn", runs_dir=root / "runs", input_size=32,
                      cache_dir=root / "cache")
    return data, out.run_dir, root


def _asymmetric(path, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    arr[:, :16] = (255, 0, 0)  # a red band on the left only
    Image.fromarray(arr).save(path)
    ImageOps.mirror(Image.fromarray(arr)).save(path.with_name("mirror-" + path.name))


def test_tta_averages_an_image_with_its_mirror(run, tmp_path):
    _, run_dir, _ = run
    clf = advisor.load(run_dir)
    _asymmetric(tmp_path / "a.png", 0)
    files = [str(tmp_path / "a.png"), str(tmp_path / "mirror-a.png")]
    plain = clf.predict(files, top_k=3, workers=0)
    both = clf.predict(files, top_k=3, workers=0, tta=True)
    assert both.tta and not plain.tta
    # the mirror pair gets one answer under tta (each is the other's mirror), and two different ones without it
    probs = [{c.label: c.probability for c in p.top} for p in both.predictions]
    assert all(abs(probs[0][k] - probs[1][k]) < 1e-5 for k in probs[0])
    single = [{c.label: c.probability for c in p.top} for p in plain.predictions]
    assert max(abs(single[0][k] - single[1][k]) for k in single[0]) > 1e-4
    # and the tta logits are the mean of the two single-view logits
    model, tc = clf.model, clf.model.backbone.transform_config
    x = torch.stack([tc.eval_transform()(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        expected = ((model(x) + model(x.flip(3))) / 2).softmax(1)[0]
    for label, p in probs[0].items():
        assert abs(p - float(expected[clf.classes.index(label)])) < 1e-5
    # the evidence maps of the averaged logits are exact too, and a mirror image's map is the mirrored map
    ex = explain(model, clf.classes, files, [(0, 1), (0, 1)], tta=True)
    assert abs(float(ex[0].evidence.mean()) - ex[0].gap) < 1e-4 and abs(ex[0].gap - ex[1].gap) < 1e-4
    np.testing.assert_allclose(ex[0].evidence, ex[1].evidence[:, ::-1], atol=1e-4)


def test_evaluate_with_tta_and_its_refusal_where_flips_change_labels(run, tmp_path):
    data, run_dir, root = run
    score = advisor.load(run_dir).evaluate(data, split="all", tta=True, include_seen=True)  # its own training images
    assert score.tta and score.n == 24
    # a run whose flip check fired (R17) is refused, from Python and from the command line
    plan_path = Path(run_dir) / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["rule_ids"] = [*plan["rule_ids"], "R17"]
    plan_path.write_text(json.dumps(plan))
    with pytest.raises(AdvisorError, match="horizontal flip changes labels"):
        advisor.load(run_dir).predict(str(data / "red"), tta=True)
    cli = subprocess.run([sys.executable, "-m", "advisor", "evaluate", str(run_dir), str(data), "--split", "all", "--tta"],
                         capture_output=True, text=True)
    assert cli.returncode == 2 and "R17" in cli.stderr and "Traceback" not in cli.stderr
    assert advisor.load(run_dir).evaluate(data, split="all", include_seen=True).n == 24  # without --tta it still scores
