"""advisor export: the whole classifier in formats that load without advisor, each matching advisor predict."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ants-bees"


def _top1(run_dir, images):
    from advisor.execute.predict import predict

    by_path = {str(Path(p.path).resolve()): p.top[0].label for p in predict(run_dir, images).predictions}
    return [by_path[str(Path(i).resolve())] for i in images]


def _prepared(images, transform):
    from advisor.backbones import TransformConfig
    from advisor.data.imagefile import load_image

    tf = TransformConfig.model_validate(transform).eval_transform()
    return torch.stack([tf(load_image(p)) for p in images])


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    from advisor.execute.runner import auto_run

    tmp = tmp_path_factory.mktemp("export")
    return auto_run(EXAMPLE, strategy="linear-probe", runs_dir=tmp / "runs", cache_dir=tmp / "cache", num_workers=0)


def test_a_timm_probe_exports_to_plain_timm_torchscript_and_matches_predict(probe_run):
    import timm
    from safetensors.torch import load_file

    from advisor.execute.export import export_run

    res = export_run(probe_run.run_dir)
    assert {"timm", "torchscript"} <= res.files.keys() and all(d <= 1e-3 for d in res.max_abs_diff.values())
    images = sorted(str(p) for p in (EXAMPLE / "val").rglob("*.jpg"))
    expected = _top1(probe_run.run_dir, images)
    card = json.loads((Path(res.files["timm"]).parent / "model.timm.json").read_text())
    x = _prepared(images, card["transform"])
    # timm alone: the architecture name and timm's own key names, no advisor code involved
    net = timm.create_model(card["architecture"], pretrained=False, num_classes=card["num_classes"])
    net.load_state_dict(load_file(res.files["timm"]))
    with torch.no_grad():
        timm_top1 = [card["classes"][i] for i in net.eval()(x).argmax(1).tolist()]
        script_top1 = [card["classes"][i] for i in torch.jit.load(res.files["torchscript"])(x).argmax(1).tolist()]
    assert timm_top1 == expected and script_top1 == expected
    if "onnx" in res.skipped:
        assert "onnx" in res.skipped["onnx"]
    # artifacts are readable by the group, like any file the user creates
    mode = stat.S_IMODE(Path(res.files["timm"]).stat().st_mode)
    assert mode & stat.S_IRGRP and (Path(probe_run.run_dir) / "model.safetensors").stat().st_mode & stat.S_IRGRP


def test_a_head_on_earlier_taps_skips_timm_with_the_reason(tmp_path):
    from conftest import write_class_images

    from advisor.execute.export import export_run
    from advisor.execute.runner import auto_run

    data = write_class_images(tmp_path / "d", {"a": 8, "b": 8})
    out = auto_run(data, strategy="layer-probe", backbone="test/tiny-cnn", runs_dir=tmp_path / "runs", input_size=32,
                   num_workers=0)
    res = export_run(out.run_dir)
    assert "timm" in res.skipped and "torchscript" in res.files


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    from advisor.execute.runner import auto_run

    tmp = tmp_path_factory.mktemp("export-ft")
    return auto_run(EXAMPLE, strategy="full-finetune", runs_dir=tmp / "runs", cache_dir=tmp / "cache", num_workers=0,
                    epochs=1, input_size=64)


def _logits(run_dir, x):
    from advisor.backbones.classifier import load_classifier

    model, _ = load_classifier(run_dir)
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("which", ["probe_run", "finetune_run"])
def test_every_format_reproduces_the_classifier_at_batch_1_and_7(which, request, tmp_path):
    """ONNX in onnxruntime, TorchScript and the timm safetensors file each give the classifier's logits."""
    import shutil

    import onnxruntime
    import timm
    from safetensors.torch import load_file

    from advisor.execute.export import export_run

    run = request.getfixturevalue(which)
    res = export_run(run.run_dir, out_dir=tmp_path / "exp")
    assert set(res.files) == {"timm", "torchscript", "onnx"}, res.skipped
    images = sorted(str(p) for p in (EXAMPLE / "val").rglob("*.jpg"))[:7]
    meta = json.loads(Path(res.files["onnx"] + ".json").read_text())
    assert meta["input"]["name"] == "image" and meta["classes"] == ["ants", "bees"]
    assert meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and meta["preprocessing"]["interpolation"] == "bicubic"
    # the logits are already divided by the run's temperature (1.0 where calibration was not kept)
    assert meta["output"]["temperature_folded_in"] == run.result.calibration.temperature
    x7 = _prepared(images, meta["transform"])
    # model.onnx copied on its own, away from everything it was written with, still loads.
    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(res.files["onnx"], alone)
    assert sorted(p.name for p in Path(res.files["onnx"]).parent.iterdir() if p.name.startswith(".")) == []
    session = onnxruntime.InferenceSession(str(alone), providers=["CPUExecutionProvider"])
    script = torch.jit.load(res.files["torchscript"])
    card = json.loads(Path(res.files["timm"]).with_suffix(".json").read_text())
    net = timm.create_model(card["architecture"], pretrained=False, num_classes=card["num_classes"]).eval()
    net.load_state_dict(load_file(res.files["timm"]))
    for x in (x7[:1], x7):
        expected = _logits(run.run_dir, x)
        onnx_out = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
        with torch.no_grad():
            outs = {"onnx": onnx_out, "torchscript": script(x), "timm": net(x)}
        for fmt, got in outs.items():
            assert got.shape == expected.shape, fmt
            assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3), (fmt, float((got - expected).abs().max()))


def test_without_the_export_extra_onnx_is_skipped_with_the_fix(probe_run, tmp_path, monkeypatch):
    from advisor.execute import export

    monkeypatch.setattr(export, "_missing", lambda modules: ["onnxscript"])
    res = export.export_run(probe_run.run_dir, out_dir=tmp_path / "exp")
    assert "onnx" not in res.files and "pip install 'advisor[export]'" in res.skipped["onnx"]
    assert not (tmp_path / "exp" / "model.onnx").exists()
