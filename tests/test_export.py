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
