"""Device-side JPEG decoding for extraction: the same plumbing runs on the CPU (torchvision's
decoder there), so the fallbacks and the transform's arithmetic are tested without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advisor.backbones import create_backbone
from advisor.core.errors import ImageLoadError
from advisor.data.imagefile import load_image, plain_jpeg_bytes
from advisor.measure.device_decode import DeviceEvalTransform, decode_on_device, device_decode_default
from advisor.measure.features import extract_features

ASSETS = Path(__file__).parent / "assets"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = Image.open(ASSETS / "ant.jpg").convert("RGB")
    out = {"photo": ASSETS / "ant.jpg"}
    out["wide"] = tmp_path / "wide.jpg"
    photo.resize((300, 120)).save(out["wide"], quality=90)
    out["grey"] = tmp_path / "grey.jpg"
    photo.convert("L").save(out["grey"])
    out["cmyk"] = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(out["cmyk"])
    out["rotated"] = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(out["rotated"], exif=exif)
    out["png"] = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(out["png"])
    out["truncated"] = tmp_path / "truncated.jpg"
    out["truncated"].write_bytes(Path(out["wide"]).read_bytes()[:400])  # a valid header, the scan cut short
    return out


def test_only_plain_rgb_jpegs_go_to_the_device_decoder(files):
    assert plain_jpeg_bytes(files["photo"]) == Path(files["photo"]).read_bytes()
    assert plain_jpeg_bytes(files["wide"]) is not None
    for name in ("grey", "cmyk", "rotated", "png"):
        assert plain_jpeg_bytes(files[name]) is None, name
    with pytest.raises(ImageLoadError, match="not a regular file"):
        plain_jpeg_bytes(files["photo"].parent)


def test_device_transform_matches_the_pil_eval_transform_within_rounding(files):
    tc = create_backbone("efficientnet_lite0").transform_config
    names = ["photo", "wide", "photo"]  # two of one size: resized as one group
    jpegs = [torch.frombuffer(bytearray(plain_jpeg_bytes(files[n])), dtype=torch.uint8) for n in names]
    decoded = decode_on_device(jpegs, torch.device("cpu"))
    got = DeviceEvalTransform(tc)(decoded)
    ref = torch.stack([tc.eval_transform()(load_image(files[n])) for n in names])
    assert got.shape == ref.shape == (3, 3, 224, 224)
    levels = (got - ref).abs() * torch.tensor(tc.std).view(1, 3, 1, 1) * 255  # in 8-bit levels
    assert float(levels.mean()) < 1.0, float(levels.mean())
    assert float(levels.max()) <= 12, float(levels.max())


def test_a_stream_the_decoder_refuses_is_none_not_an_error(files):
    good = torch.frombuffer(bytearray(files["wide"].read_bytes()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8\xff\xe0 garbage" * 8), dtype=torch.uint8)
    out = decode_on_device([good, bad], torch.device("cpu"))
    assert out[0] is not None and out[0].shape == (3, 120, 300) and out[1] is None


def test_extraction_with_device_decoding_agrees_with_the_cpu_path(files, tmp_path, monkeypatch):
    bb = create_backbone("efficientnet_lite0").with_input_size(96)
    paths = [str(files[n]) for n in ("photo", "wide", "grey", "cmyk", "rotated", "png", "truncated")]
    kw = dict(taps=["pre_logits"], device="cpu", batch_size=4, num_workers=0, use_cache=False)
    cpu = extract_features(paths, bb, decode="cpu", **kw)
    dev = extract_features(paths, bb, decode="device", **kw)
    assert dev.summary.decode == "device" and cpu.summary.decode == "cpu"
    assert dev.paths == cpu.paths and dev.index == cpu.index  # the same images kept, in file order
    assert [f.path for f in dev.summary.failed] == [f.path for f in cpu.summary.failed]
    a, b = cpu.features["pre_logits"], dev.features["pre_logits"]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert float(cos.min()) > 0.995, cos
    assert torch.equal(cpu.features["meta:grey"], dev.features["meta:grey"])

def test_device_decoding_is_chosen_on_cuda_with_few_decoding_workers(monkeypatch):
    monkeypatch.delenv("ADVISOR_DEVICE_DECODE", raising=False)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert device_decode_default(gpu, 3) and not device_decode_default(gpu, 8) and not device_decode_default(cpu, 1)
    monkeypatch.setenv("ADVISOR_DEVICE_DECODE", "off")
    assert not device_decode_default(gpu, 1)
    monkeypatch.setenv("ADVISOR_DEVICE_DECODE", "on")
    assert device_decode_default(gpu, 15) and not device_decode_default(cpu, 1)


@cuda
def test_cuda_decoding_agrees_with_the_cpu_path(files):
    bb = create_backbone("efficientnet_lite0")
    paths = [str(files[n]) for n in ("photo", "wide", "grey", "png")] * 3
    kw = dict(taps=["pre_logits"], device="cuda", batch_size=8, num_workers=2, use_cache=False)
    cpu = extract_features(paths, bb, decode="cpu", **kw)
    dev = extract_features(paths, bb, decode="device", **kw)
    assert dev.summary.decode == "device" and dev.index == cpu.index
    cos = torch.nn.functional.cosine_similarity(cpu.features["pre_logits"], dev.features["pre_logits"], dim=1)
    assert float(cos.min()) > 0.99, cos
