"""Decoded-image store: eval crops equal to the bit, decoding paid once per image, torn entries healed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_class_images
from PIL import Image

import advisor.data.decoded as decoded_mod
from advisor.backbones import create_backbone
from advisor.core.errors import ImageLoadError
from advisor.data.decoded import DecodedImages, eval_side, has_room, train_side
from advisor.data.imagefile import file_digest, load_image
from advisor.data.loading import ImageDataset, collate_skip
from advisor.data.scan import scan_dataset
from strategies import get_strategy
from strategies.base import RunContext, RunData
from strategies.transforms import EvalTransform, TrainTransform

ASSETS = Path(__file__).parent / "assets"


@pytest.fixture()
def images(tmp_path) -> list[Path]:
    """A real JPEG photo, an RGBA PNG, a greyscale PNG and a palette GIF, of odd sizes."""
    rng = np.random.default_rng(0)
    out = [ASSETS / "ant.jpg"]
    rgba = Image.fromarray(rng.integers(0, 256, (53, 71, 4), dtype=np.uint8), "RGBA")
    out.append(tmp_path / "rgba.png")
    rgba.save(out[-1])
    grey = Image.fromarray(rng.integers(0, 256, (90, 40), dtype=np.uint8), "L")
    out.append(tmp_path / "grey.png")
    grey.save(out[-1])
    pal = Image.fromarray(rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)).convert("P")
    out.append(tmp_path / "pal.gif")
    pal.save(out[-1])
    return out


def test_eval_crop_from_the_store_equals_the_eval_transform_to_the_bit(images, tmp_path):
    tc = create_backbone("efficientnet_lite0").transform_config.with_input_size(64)
    store = DecodedImages(tmp_path / "cache", side=eval_side(tc.resize_size), interpolation=tc.interpolation)
    tf = EvalTransform(tc)
    # at 64 px (resize 73) the 383x256 JPEG decodes at half scale; the other images whole
    assert load_image(images[0], min_side=tc.resize_size).size == (192, 128)
    for path in images:
        # the float transform on the file decoded as every evaluation path decodes it
        reference = tc.eval_transform()(load_image(path, min_side=tc.resize_size))
        stored = tf(store.get(file_digest(path), str(path)))
        assert stored.dtype == torch.uint8 and stored.shape == (3, 64, 64)
        again = tf(store.get(file_digest(path), str(path)))  # second read: from disk
        for got in (stored, again):
            assert torch.equal(tc.normalize(got[None])[0], reference), path.name


def test_without_the_store_the_loader_decodes_as_the_store_does(images, tmp_path):
    tc = create_backbone("efficientnet_lite0").transform_config.with_input_size(64)
    side = eval_side(tc.resize_size)
    store = DecodedImages(tmp_path / "cache", side=side, interpolation=tc.interpolation)
    paths = [str(p) for p in images]
    plain = ImageDataset(paths, tc.eval_transform(uint8=True), min_side=side)
    stored = ImageDataset(paths, EvalTransform(tc), decoded=store)
    for i in range(len(paths)):
        assert torch.equal(plain[i][1], stored[i][1]), paths[i]


def test_each_image_is_decoded_once_and_a_torn_entry_is_decoded_again(images, tmp_path, monkeypatch):
    calls: list[str] = []
    real = decoded_mod.load_image

    def counting(path, **kw):
        calls.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(decoded_mod, "load_image", counting)
    store = DecodedImages(tmp_path / "cache", side=48, interpolation="bicubic")
    keys = [file_digest(p) for p in images]
    first = [store.get(k, str(p)) for k, p in zip(keys, images)]
    for _ in range(3):
        again = [store.get(k, str(p)) for k, p in zip(keys, images)]
    assert sorted(calls) == sorted(p.name for p in images)  # once each, however often read
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(min(a.shape[1:]) == 48 for a in first)

    store.entry(keys[0]).write_bytes(b"\x93NUMPY torn")  # a write cut short by a crash
    healed = store.get(keys[0], str(images[0]))
    assert torch.equal(healed, first[0]) and calls.count(images[0].name) == 2


def test_small_images_are_not_enlarged_for_training_crops(images, tmp_path):
    assert train_side(224, 0.25) == 448 and train_side(224, 0.08) == 448 and train_side(224, 1.0) == 224
    store = DecodedImages(tmp_path / "cache", side=448, interpolation="bicubic", upscale=False)
    small = store.get(file_digest(images[1]), str(images[1]))  # 71 x 53 RGBA
    assert small.shape == (3, 53, 71)


def test_a_file_that_fails_to_decode_is_reported_and_not_stored(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    store = DecodedImages(tmp_path / "cache", side=32, interpolation="bicubic")
    with pytest.raises(ImageLoadError):
        store.get(file_digest(bad), str(bad))
    assert not store.entry(file_digest(bad)).exists()
    ds = ImageDataset([str(bad), str(ASSETS / "ant.jpg")], EvalTransform(
        create_backbone("efficientnet_lite0").transform_config.with_input_size(32)), decoded=store)
    batch = collate_skip([ds[0], ds[1]])
    assert batch.x.dtype == torch.uint8 and batch.x.shape == (1, 3, 32, 32)
    assert len(batch.bad) == 1 and batch.bad[0][0] == 0


def test_a_read_only_cache_folder_costs_speed_not_the_image(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        store = DecodedImages(root, side=40, interpolation="bicubic")
        x = store.get(file_digest(ASSETS / "ant.jpg"), str(ASSETS / "ant.jpg"))
        assert x.dtype == torch.uint8 and min(x.shape[1:]) == 40
    finally:
        root.chmod(0o700)


def test_train_crops_from_the_store_are_seeded_uint8(images, tmp_path):
    tc = create_backbone("efficientnet_lite0").transform_config
    store = DecodedImages(tmp_path / "cache", side=train_side(32, 0.25), interpolation=tc.interpolation, upscale=False)
    tf = TrainTransform(tc, 32, trivial=True)
    img = store.get(file_digest(images[0]), str(images[0]))
    a = tf(img, torch.Generator().manual_seed(5))
    b = tf(img, torch.Generator().manual_seed(5))
    c = tf(img, torch.Generator().manual_seed(6))
    assert a.dtype == torch.uint8 and a.shape == (3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_has_room_refuses_more_than_a_quarter_of_the_free_disk(tmp_path):
    assert has_room(tmp_path / "not" / "yet", 1)
    assert not has_room(tmp_path, 10**18)


def test_a_fine_tune_decodes_each_image_at_most_once_per_store(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_class_images(root / "train", {"red": 8, "blue": 8}, seed=0, ext=".jpg")
    write_class_images(root / "val", {"red": 3, "blue": 3}, seed=1, ext=".jpg")
    calls: list[str] = []
    real = decoded_mod.load_image
    monkeypatch.setattr(decoded_mod, "load_image", lambda path, **kw: calls.append(str(path)) or real(path, **kw))
    s = get_strategy("full-finetune")
    cfg = s.Config(epochs=4, batch_size=4, input_size=32, num_workers=0, bn="train")
    data = RunData.from_scan(scan_dataset(root))
    ctx = RunContext(run_dir=tmp_path / "run", device=torch.device("cpu"), seed=0, cache_dir=tmp_path / "cache", num_workers=0)
    result, _ = s.fit(data, create_backbone("test/tiny-cnn", pretrained=False, seed=0), cfg, ctx)
    assert result.selected["decoded_cache"].startswith("on")
    # 4 epochs, a BN pass and 4+1 evaluations read the 22 images ~12 times each; each store decodes each once.
    assert max(calls.count(p) for p in set(calls)) <= 2
    assert len(calls) <= 16 + 22  # training store (train images) + evaluation store (train and val images)
    off, _ = s.fit(data, create_backbone("test/tiny-cnn", pretrained=False, seed=0),
                   cfg.model_copy(update={"decoded_cache": False}),
                   RunContext(run_dir=tmp_path / "run-off", device=torch.device("cpu"), seed=0,
                              cache_dir=tmp_path / "cache", num_workers=0))
    assert off.selected["decoded_cache"].startswith("off")
    # Both pipelines learn the (easy) colour task; their crops differ (a stored copy is resized first).
    assert result.metrics.val_accuracy >= 0.8 and off.metrics.val_accuracy >= 0.8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_fine_tune_reads_the_store_and_compiles(tmp_path):
    root = tmp_path / "data"
    write_class_images(root / "train", {"red": 8, "blue": 8}, seed=0, ext=".jpg")
    write_class_images(root / "val", {"red": 3, "blue": 3}, seed=1, ext=".jpg")
    s = get_strategy("full-finetune")
    cfg = s.Config(epochs=3, batch_size=4, input_size=32, num_workers=2, bn="train", compile=True)
    ctx = RunContext(run_dir=tmp_path / "run", device=torch.device("cuda"), seed=0, cache_dir=tmp_path / "cache")
    result, _ = s.fit(RunData.from_scan(scan_dataset(root)), create_backbone("test/tiny-cnn", pretrained=False, seed=0), cfg, ctx)
    assert result.selected["decoded_cache"].startswith("on") and result.selected["compiled"]
    assert result.metrics.val_accuracy >= 0.8
