"""Evidence maps: exact decomposition of the logits, refusal where it does not hold, locality, pictures, CLI and API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import advisor
from advisor.backbones import PRE_LOGITS, Backbone, TapInfo, TransformConfig, create_backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.backbones.evidence import evidence_maps
from advisor.core.errors import AdvisorError
from advisor.report.evidence import FOR_A, FOR_B, Explanation, overlay_array
from tests.conftest import write_class_images


def _classifier(taps, *, size=64, classes=4, seed=0) -> TransferClassifier:
    backbone = create_backbone("test/tiny-cnn").with_input_size(size)
    model = TransferClassifier(backbone, taps, classes).eval()
    g = torch.Generator().manual_seed(seed)
    d = model.feature_dim
    model.set_head(torch.randn(classes, d, generator=g), torch.randn(classes, generator=g),
                   torch.randn(d, generator=g) * 0.1, torch.rand(d, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("taps", [[PRE_LOGITS], ["stage2"], ["stage1", "stage3", PRE_LOGITS]])
def test_the_maps_add_up_to_the_models_logits(taps):
    model = _classifier(taps)
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ev = evidence_maps(model, x)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(ev.logits, logits, rtol=1e-5, atol=1e-5)
    # a contrast's mean over the crop is the logit gap between its two classes
    a, b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([1, 2, 3, 0, 3])
    gap = logits[torch.arange(5), a] - logits[torch.arange(5), b]
    torch.testing.assert_close(ev.contrast(a, b, 64).mean((1, 2)), gap, rtol=1e-4, atol=1e-4)
    assert model.training is False and not ev.logits.requires_grad


def test_maps_are_refused_where_the_head_is_not_linear_on_an_average():
    # pre_logits not declared the mean of a map: refused by name
    model = _classifier([PRE_LOGITS])
    bb = model.backbone
    undeclared = [t.model_copy(update={"pooled_from": None}) if t.name == PRE_LOGITS else t for t in bb.taps]
    model.backbone = Backbone(bb.name, bb.model, taps=undeclared, transform_config=bb.transform_config,
                              weights_digest=bb.weights_digest, weights_source=bb.weights_source)
    with pytest.raises(AdvisorError, match="not the plain average"):
        evidence_maps(model, torch.randn(2, 3, 64, 64))

    # declared, but a norm sits between the pool and the classifier: the sum check refuses it
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.pool, self.norm, self.fc = nn.AdaptiveAvgPool2d(1), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(self.norm(self.pool(self.body(x)).flatten(1)))

    net = Normed().eval()
    taps = [TapInfo(name="stage1", channels=8, stride=1, module="body"),
            TapInfo(name=PRE_LOGITS, channels=8, module="fc", pooled_from="pool")]
    normed = TransferClassifier(Backbone("normed", net, taps=taps, transform_config=TransformConfig(input_size=16),
                                         weights_digest="x", weights_source="test"), [PRE_LOGITS], 2).eval()
    with pytest.raises(AdvisorError, match="do not add up"):
        evidence_maps(normed, torch.randn(2, 3, 16, 16))
    # a stage tap of the same network is a plain map: mapped
    fine = TransferClassifier(normed.backbone, ["stage1"], 2).eval()
    assert evidence_maps(fine, torch.randn(2, 3, 16, 16)).maps[0].shape == (2, 2, 16, 16)


def test_the_evidence_lies_where_the_image_differs():
    # A flat grey image and the same with a textured patch in one corner: whatever the head, the map changes
    # only within the patch and the few pixels the network's receptive field adds around it.
    model = _classifier(["stage2", PRE_LOGITS], seed=3)
    flat = torch.zeros(1, 3, 64, 64)
    patched = flat.clone()
    patched[0, :, 4:20, 40:60] = torch.randn(3, 16, 20, generator=torch.Generator().manual_seed(0))
    a, b = torch.tensor([0]), torch.tensor([1])
    change = (evidence_maps(model, patched).contrast(a, b, 64) - evidence_maps(model, flat).contrast(a, b, 64)).abs()[0]
    near = torch.zeros(64, 64, dtype=torch.bool)
    near[0:28, 32:64] = True  # the patch grown by one 8-px cell of the deepest map on each side
    assert change.sum() > 0
    assert change[near].sum() / change.sum() > 0.9


def test_the_picture_colours_follow_the_sign():
    crop = np.full((8, 8, 3), 128, dtype=np.uint8)
    crop[:, :, 0] = 250  # a reddish crop: the overlay panel is grey under the colour, so red cannot pass for evidence
    evidence = np.zeros((8, 8), dtype=np.float32)
    evidence[0, 0], evidence[7, 7] = 2.0, -2.0
    out = overlay_array(crop, evidence)
    grey = round(250 * 0.299 + 128 * 0.587 + 128 * 0.114)
    assert (out[3, 3] == grey).all()  # no evidence: the crop in grey
    np.testing.assert_allclose(out[0, 0], 0.3 * grey + 0.7 * FOR_A, atol=1)
    np.testing.assert_allclose(out[7, 7], 0.3 * grey + 0.7 * FOR_B, atol=1)
    ex = Explanation(source="x", a="a", b="b", gap=0.0, evidence=evidence, crop=crop)
    assert ex.image(panel=20).size == (44, 20)


@pytest.fixture
def tiny_run(tmp_path):
    data = write_class_images(tmp_path / "data", {"red": 8, "blue": 8, "green": 8}, size=48)
    out = advisor.run(data, strategy="linear-probe", backbone="test/tiny-cnn", runs_dir=tmp_path / "runs",
                      input_size=32)
    return data, out.run_dir


def test_predict_explain_writes_one_picture_per_image(tiny_run, tmp_path):
    data, run_dir = tiny_run
    folder = tmp_path / "why"
    proc = subprocess.run([sys.executable, "-m", "advisor", "predict", str(run_dir), str(data / "red"), str(data / "blue"),
                           "--explain", str(folder), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["evidence_dir"] == str(folder) and len(rep["predictions"]) == 16
    pictures = [Path(p["evidence"]) for p in rep["predictions"]]
    assert sorted(pictures) == sorted(folder.iterdir()) and len(set(pictures)) == 16
    assert Image.open(pictures[0]).size == (2 * 32 + 4, 32)
    assert pictures[0].name.startswith("0000-") and pictures[0].suffix == ".jpg"
    # a file where the folder should be: one line, exit 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = subprocess.run([sys.executable, "-m", "advisor", "predict", str(run_dir), str(data / "red"), "--explain",
                          str(blocker)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is a file, not a folder" in bad.stderr and "Traceback" not in bad.stderr


def test_classifier_explain_honours_target_and_versus(tiny_run):
    data, run_dir = tiny_run
    clf = advisor.load(run_dir)
    files = sorted((data / "green").iterdir())[:3]
    top = [p.top for p in clf.predict([str(f) for f in files], top_k=3).predictions]
    default = clf.explain([str(f) for f in files])
    for ex, t in zip(default, top):
        assert (ex.a, ex.b) == (t[0].label, t[1].label) and ex.gap > 0
        assert abs(float(ex.evidence.mean()) - ex.gap) < 1e-3 * max(1.0, abs(ex.gap))
        assert ex.crop.shape == (32, 32, 3) and ex.crop.dtype == np.uint8
    forced = clf.explain(Image.open(files[0]), target="red", versus="blue")[0]
    assert (forced.a, forced.b, forced.source) == ("red", "blue", "<image 0>")
    with pytest.raises(AdvisorError, match="not one of this model's classes"):
        clf.explain(str(files[0]), target="purple")
    with pytest.raises(AdvisorError, match="two different classes"):
        clf.explain(str(files[0]), target="red", versus="red")
    # a head that cannot be mapped: predict --explain says so before classifying anything
    bb = clf.model.backbone
    clf.model.backbone = Backbone(bb.name, bb.model, transform_config=bb.transform_config, weights_digest="x",
                                  weights_source="test", taps=[t.model_copy(update={"pooled_from": None}) for t in bb.taps])
    with pytest.raises(AdvisorError, match="not the plain average"):
        clf.predict([str(f) for f in files], explain_to=Path(run_dir).parent / "why")
    assert not any((Path(run_dir).parent / "why").iterdir())


def test_the_report_shows_evidence_beside_the_wrong_images(tiny_run, monkeypatch):
    from advisor.report import html

    _, run_dir = tiny_run
    result = json.loads((Path(run_dir) / "result.json").read_text())
    # make two validation predictions wrong so the gallery has something to show
    preds = result["predictions"]
    for p in preds[:2]:
        p[2] = (p[1] + 1) % 3
    (Path(run_dir) / "result.json").write_text(json.dumps(result))
    page = html.run_page(run_dir)
    gallery = page[page.index("Most confidently wrong"):]
    assert 'class="gallery wide"' in gallery and gallery.count("data:image/jpeg;base64,") == 2
    assert "exact, not a gradient approximation" in gallery
    # a model that cannot be mapped: the plain thumbnails, and why
    monkeypatch.setattr("advisor.report.evidence.evidence_maps",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    page = html.run_page(run_dir)
    gallery = page[page.index("Most confidently wrong"):]
    assert "No evidence maps: they failed (RuntimeError: boom)" in gallery, gallery[:600]
    assert 'class="gallery"' in gallery
    assert gallery.count("data:image/jpeg;base64,") == 2


@pytest.mark.parametrize("name,mappable", [("timm/resnet18", True), ("timm/mobilenetv3_small_100", False),
                                           ("timm/convnext_atto", False), ("torchvision/resnet18", True),
                                           ("torchvision/mobilenet_v3_small", False)])
def test_backbones_declare_the_average_only_where_it_holds(name, mappable):
    backbone = create_backbone(name, pretrained=False)
    declared = next(t.pooled_from for t in backbone.taps if t.name == PRE_LOGITS)
    assert (declared is not None) == mappable
    model = TransferClassifier(backbone, [PRE_LOGITS], 3).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if mappable:
        with torch.no_grad():
            torch.testing.assert_close(evidence_maps(model, x).logits, model(x), rtol=1e-4, atol=1e-4)
    else:
        with pytest.raises(AdvisorError, match="not the plain average"):
            evidence_maps(model, x)


def test_evaluate_explain_pictures_every_mistake(tiny_run, tmp_path):
    import shutil

    data, run_dir = tiny_run
    held_out = tmp_path / "held-out"
    shutil.copytree(data / "red", held_out / "red")
    shutil.copytree(data / "red", held_out / "blue")  # the same images labelled blue: each is a mistake or the red one is
    folder = tmp_path / "mistakes"
    proc = subprocess.run([sys.executable, "-m", "advisor", "evaluate", str(run_dir), str(held_out), "--explain", str(folder),
                           "--json", "--include-seen"], capture_output=True, text=True)  # the run's own images
    assert proc.returncode == 0, proc.stderr
    score = json.loads(proc.stdout)
    wrong = score["n"] - sum(row[i] for i, row in enumerate(score["confusion"]))
    assert wrong >= 8 and score["evidence_pictures"] == wrong and score["evidence_dir"] == str(folder)
    pictures = sorted(folder.iterdir())
    assert len(pictures) == wrong and pictures[0].name.startswith("0000-")
    shown = subprocess.run([sys.executable, "-m", "advisor", "evaluate", str(run_dir), str(held_out), "--explain",
                            str(tmp_path / "again"), "--include-seen"], capture_output=True, text=True, env={**os.environ,
                                                                                          "COLUMNS": "100"})
    assert shown.returncode == 0 and f"evidence pictures: {wrong} in" in " ".join(shown.stdout.split())
