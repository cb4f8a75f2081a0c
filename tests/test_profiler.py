"""Dataset profile: sampling, duplicates and leakage, the assembled profile and its caching."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_class_images
from PIL import Image

from advisor.backbones import PRE_LOGITS, create_backbone
from advisor.data.scan import Sample, scan_dataset
from advisor.measure.features import extract_features
from advisor.measure.profiler import (
    NEAR_DUPLICATE_COSINE,
    build_profile,
    exact_duplicates,
    near_duplicates,
    profile_dataset,
    stratified_sample,
)
from advisor.measure.similarity import DEFAULT_SCALES, greyscale_share


def _samples(per_class: dict[int, int], split: str = "train") -> list[Sample]:
    return [
        Sample(path=f"/data/c{label}/img_{i:04d}.png", label=label, split=split)
        for label, n in per_class.items()
        for i in range(n)
    ]


def _grey_images(folder: Path, n: int, *, seed: int, size: int = 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(128 + rng.normal(0, 30, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(arr, mode="L").save(folder / f"grey_{i:03d}.png")


# --------------------------------------------------------------------------- stratified sample


def test_stratified_sample_is_proportional_with_a_floor_per_class():
    samples = _samples({0: 600, 1: 300, 2: 90, 3: 10})  # 1000 images
    picked = stratified_sample(samples, 100, seed=0)
    per = Counter(s.label for s in picked)
    # 10 of 1000 would get round(1.0) = 1 but is raised to 2; the largest class pays for it
    assert per == {0: 59, 1: 30, 2: 9, 3: 2}
    assert len(picked) == 100
    assert len({s.path for s in picked}) == 100  # no repeats
    assert {s.path for s in picked} <= {s.path for s in samples}
    assert [s.path for s in picked] == sorted(s.path for s in picked)

    # a class too small to get 2 by proportion still gets 2, and the total does not exceed size
    samples = _samples({0: 500, 1: 495, 2: 5})
    picked = stratified_sample(samples, 50, seed=0)
    per = Counter(s.label for s in picked)
    assert per[2] == 2
    assert len(picked) == 50
    assert abs(per[0] - per[1]) <= 1 and per[0] + per[1] == 48

    # a class with a single image gives that one image
    samples = _samples({0: 200, 1: 1})
    per = Counter(s.label for s in stratified_sample(samples, 20, seed=0))
    assert per[1] == 1 and sum(per.values()) <= 20


def test_stratified_sample_never_exceeds_size():
    for per_class, size in [({0: 10, 1: 10, 2: 10}, 10), ({i: 7 for i in range(8)}, 12), ({0: 3, 1: 3, 2: 3}, 5)]:
        picked = stratified_sample(_samples(per_class), size, seed=1)
        assert 0 < len(picked) <= size
        assert len({s.path for s in picked}) == len(picked)
    # proportional rounding may land below size, but not far below
    picked = stratified_sample(_samples({0: 10, 1: 10, 2: 10}), 10, seed=1)
    assert len(picked) >= 9 and set(Counter(s.label for s in picked).values()) == {3}


def test_stratified_sample_is_deterministic_per_seed():
    samples = _samples({0: 300, 1: 200})
    a = stratified_sample(samples, 50, seed=7)
    assert [s.path for s in a] == [s.path for s in stratified_sample(samples, 50, seed=7)]
    # the input order does not matter, only the seed
    assert [s.path for s in a] == [s.path for s in stratified_sample(list(reversed(samples)), 50, seed=7)]
    b = stratified_sample(samples, 50, seed=8)
    assert [s.path for s in a] != [s.path for s in b]
    assert Counter(s.label for s in a) == Counter(s.label for s in b) == {0: 30, 1: 20}


def test_stratified_sample_returns_everything_when_small():
    samples = _samples({0: 5, 1: 3})
    assert stratified_sample(samples, 8) == samples
    assert stratified_sample(samples, 300) == samples


# --------------------------------------------------------------------------- duplicates


@pytest.fixture
def split_dataset(tmp_path) -> tuple[Path, Path, Path]:
    """train/val split folders; one train image copied into val of its class, one into another class."""
    root = tmp_path / "splits"
    write_class_images(root / "train", {"ant": 5, "bee": 5}, seed=0)
    write_class_images(root / "val", {"ant": 2, "bee": 2}, seed=1)
    same = root / "val" / "ant" / "copy_same_class.png"
    other = root / "val" / "bee" / "copy_other_class.png"
    shutil.copyfile(root / "train" / "ant" / "ant_000.png", same)
    shutil.copyfile(root / "train" / "ant" / "ant_001.png", other)
    return root, same, other


def test_exact_duplicates_across_splits_and_labels(split_dataset):
    root, same, other = split_dataset
    scan = scan_dataset(root)
    assert scan.layout == "split-folders"
    groups = exact_duplicates(scan)
    assert len(groups) == 2
    by_path = {frozenset(Path(p).name for p in g.paths): g for g in groups}
    g_same = by_path[frozenset({"ant_000.png", same.name})]
    g_other = by_path[frozenset({"ant_001.png", other.name})]
    for g in (g_same, g_other):
        assert g.kind == "exact" and g.similarity == 1.0
        assert sorted(g.splits) == ["train", "val"] and g.crosses_splits
    assert g_same.labels == ["ant", "ant"] and not g_same.conflicting_labels
    assert sorted(g_other.labels) == ["ant", "bee"] and g_other.conflicting_labels
    # the paths and splits line up with the scan
    split_of = {s.path: s.split for s in scan.samples}
    for g in groups:
        assert [split_of[p] for p in g.paths] == g.splits
    # precomputed digests are used as given
    digests = [f"d{i}" for i in range(len(scan.samples))]
    assert exact_duplicates(scan, digests=digests) == []
    digests[0] = digests[1]
    assert [len(g.paths) for g in exact_duplicates(scan, digests=digests)] == [2]


def test_no_exact_duplicates_in_distinct_images(tiny_dataset):
    assert exact_duplicates(scan_dataset(tiny_dataset)) == []


def test_near_duplicates_from_hand_made_features():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 32, generator=gen)
    copy = base[0] + 0.001 * torch.randn(32, generator=gen)
    feats = torch.cat([base, copy[None]])
    samples = [Sample(path=f"/d/{'a' if i % 2 else 'b'}/{i}.png", label=i % 2, split="train" if i < 6 else "val")
               for i in range(7)]
    groups = near_duplicates(feats, samples, ["b", "a"])
    assert len(groups) == 1
    g = groups[0]
    assert g.kind == "near"
    assert g.paths == ["/d/b/0.png", "/d/b/6.png"]
    assert g.splits == ["train", "val"] and g.crosses_splits
    assert g.labels == ["b", "b"] and not g.conflicting_labels
    assert NEAR_DUPLICATE_COSINE <= g.similarity <= 1.0
    # already reported as exact duplicates: left out
    assert near_duplicates(feats, samples, ["b", "a"], exclude={frozenset(g.paths)}) == []
    # an unrelated exclusion leaves it in
    assert len(near_duplicates(feats, samples, ["b", "a"], exclude={frozenset({"/d/a/1.png", "/d/b/2.png"})})) == 1
    # without the copy there is nothing
    assert near_duplicates(base, samples[:6], ["b", "a"]) == []
    assert near_duplicates(feats[:1], samples[:1], ["b", "a"]) == []


def test_near_duplicates_centre_away_the_shared_direction():
    # all-positive features share a large common component; raw cosine would call them all alike
    gen = torch.Generator().manual_seed(1)
    feats = 10.0 + torch.randn(8, 16, generator=gen)
    raw = torch.nn.functional.normalize(feats, dim=1)
    assert float((raw @ raw.T).min()) > NEAR_DUPLICATE_COSINE
    samples = [Sample(path=f"/d/x/{i}.png", label=0, split="train") for i in range(8)]
    assert near_duplicates(feats, samples, ["x"]) == []


def test_near_duplicates_group_transitively():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(6, 32, generator=gen)
    feats = torch.cat([base, base[0:1] * 1.0001, base[0:1] * 0.9999, base[3:4] + 1e-4])
    samples = [Sample(path=f"/d/c/{i:02d}.png", label=0, split="train") for i in range(9)]
    groups = near_duplicates(feats, samples, ["c"])
    assert [[Path(p).stem for p in g.paths] for g in groups] == [["00", "06", "07"], ["03", "08"]]
    # row blocks of any height find the same groups (a block boundary between a pair's two rows included)
    for chunk in (1, 2, 4, 7):
        assert near_duplicates(feats, samples, ["c"], chunk=chunk) == groups


# --------------------------------------------------------------------------- the profile


@pytest.fixture
def profile_dataset_dir(tmp_path) -> Path:
    """Split folders: train 8 red / 8 blue / 6 grey; val 2 / 2 / 2 plus one train image copied into val."""
    root = tmp_path / "ds"
    write_class_images(root / "train", {"red": 8, "blue": 8}, seed=0)
    write_class_images(root / "val", {"red": 2, "blue": 2}, seed=1)
    _grey_images(root / "train" / "grey", 6, seed=2)
    _grey_images(root / "val" / "grey", 2, seed=3)
    shutil.copyfile(root / "train" / "red" / "red_003.png", root / "val" / "red" / "leaked.png")
    return root


def _check_profile(profile, root: Path) -> None:
    assert profile.layout == "split-folders" and profile.split_source == "folders"
    assert profile.backbone == "test/tiny-cnn" and profile.input_size == 32
    assert profile.classes == ["blue", "grey", "red"] and profile.num_classes == 3
    assert profile.images_total == 29
    assert profile.images_per_split == {"train": 22, "val": 7}
    assert profile.train_per_class == {"blue": 8, "grey": 6, "red": 8}
    assert profile.train_images == 22
    assert profile.train_per_class_min == 6
    assert profile.train_per_class_median == 8.0
    assert profile.imbalance_ratio == pytest.approx(8 / 6, abs=1e-3)
    # 40 px images are not smaller than the 32 px input
    assert profile.smaller_than_input == 0
    assert profile.greyscale_by_mode == 8

    exact = profile.exact_duplicates
    assert len(exact) == 1
    assert sorted(Path(p).name for p in exact[0].paths) == ["leaked.png", "red_003.png"]
    assert exact[0].crosses_splits and not exact[0].conflicting_labels
    assert profile.cross_split_duplicates >= 1
    assert profile.cross_split_duplicates == sum(1 for g in exact + profile.near_duplicates if g.crosses_splits)
    # the exact pair is not reported again as a near duplicate
    assert all(frozenset(g.paths) != frozenset(exact[0].paths) for g in profile.near_duplicates)
    assert profile.near_duplicate_sample == 29  # the whole (small) dataset is the sample

    share = profile.greyscale_share
    assert share is not None
    assert share.value == pytest.approx(8 / 29)
    assert share.low <= share.value <= share.high
    assert share.low < 8 / 29 < share.high

    sim = profile.similarity
    assert sim is not None and sim.sample_size == 29 and sim.backbone == "test/tiny-cnn"
    signals = {s.name: s for s in sim.signals}
    assert not signals["kid"].available and "build_reference.py" in signals["kid"].unavailable_reason
    assert not signals["frechet"].available
    assert signals["bn_shift"].available and signals["bn_shift"].scale == DEFAULT_SCALES["bn_shift"]
    assert [d.stage for d in sim.bn_by_depth] == ["stage1", "stage2", "stage3"]
    assert 0.0 <= sim.score.low <= sim.score.value <= sim.score.high <= 1.0
    assert profile.skipped == [] and profile.dataset == str(root)


def test_profile_dataset_measures_the_dataset(profile_dataset_dir):
    profile, bb, scan = profile_dataset(profile_dataset_dir, backbone="test/tiny-cnn", device="cpu",
                                        num_workers=0, rounds=50)
    assert bb.name == "test/tiny-cnn" and scan.num_images == 29
    _check_profile(profile, profile_dataset_dir)
    assert profile.similarity.bootstrap_rounds == 50
    # where the profile's time went, stage by stage, in the order they ran
    stages = list(profile.stage_seconds)
    assert stages[:4] == ["scan", "backbone", "exact duplicates", "features"] and "similarity" in stages
    assert all(v >= 0 for v in profile.stage_seconds.values())


def test_second_profile_does_no_forward_pass(profile_dataset_dir, monkeypatch):
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    calls: list[int] = []
    original = bb.forward_taps

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(bb, "forward_taps", counting)
    scan = scan_dataset(profile_dataset_dir)
    stages: list[str] = []
    first = build_profile(scan, bb, device="cpu", num_workers=0, rounds=50,
                          progress=lambda stage, done, total: stages.append(stage))
    # 28 distinct contents (the leaked copy shares its cache key with the original)
    assert 28 <= sum(calls) <= 29
    assert "features" in stages and "similarity" in stages
    _check_profile(first, profile_dataset_dir)

    calls.clear()
    second = build_profile(scan, bb, device="cpu", num_workers=0, rounds=50)
    assert calls == []
    timing = {"probe_cv_seconds_per_unit", "stage_seconds"}  # measured times, not functions of the data
    assert second.model_dump(exclude=timing) == first.model_dump(exclude=timing)
    assert second.probe_cv_seconds_per_unit > 0

    # the greyscale interval is the bootstrap of the sample's grey flags, with the profile's rounds and seed
    fs = extract_features(scan.samples, bb, taps=[PRE_LOGITS], bn_moments=True, device="cpu", num_workers=0)
    assert calls == []
    assert first.greyscale_share == greyscale_share(fs, rounds=50, seed=0)


def _block_noise_images(folder: Path, n: int, rng: np.random.Generator, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = int(rng.integers(4, 20))
        small = rng.integers(0, 256, (k, k, 3)).astype(np.uint8)
        Image.fromarray(small).resize((40, 40), Image.NEAREST).save(folder / f"{prefix}_{i}.png")


def test_profile_reports_an_exact_duplicate_once(tmp_path):
    """Distinct random images: the only near pair is the exact copy, which is not reported twice."""
    root = tmp_path / "noise"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in ("a", "b"):
            _block_noise_images(root / split / c, n, rng, c)
    shutil.copyfile(root / "train" / "a" / "a_0.png", root / "val" / "b" / "relabelled.png")
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    profile = build_profile(scan_dataset(root), bb, device="cpu", num_workers=0, rounds=20)
    assert [sorted(Path(p).name for p in g.paths) for g in profile.exact_duplicates] == [["a_0.png", "relabelled.png"]]
    assert profile.near_duplicates == []
    assert profile.cross_split_duplicates == 1 and profile.conflicting_label_duplicates == 1
    assert profile.greyscale_share.value == 0.0 and profile.greyscale_by_mode == 0
    # without the exclusion, the copy is a near duplicate of its original (cosine 1)
    fs = extract_features(scan_dataset(root).samples, bb, taps=[PRE_LOGITS], device="cpu", num_workers=0)
    scan = scan_dataset(root)
    near = near_duplicates(fs.features[PRE_LOGITS], [scan.samples[i] for i in fs.index], scan.classes)
    assert [sorted(Path(p).name for p in g.paths) for g in near] == [["a_0.png", "relabelled.png"]]
    assert near[0].similarity == pytest.approx(1.0)


def test_profile_sample_size_limits_the_forward_pass(profile_dataset_dir, monkeypatch):
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    calls: list[int] = []
    original = bb.forward_taps
    monkeypatch.setattr(bb, "forward_taps", lambda x, *a, **k: calls.append(x.shape[0]) or original(x, *a, **k))
    scan = scan_dataset(profile_dataset_dir)
    profile = build_profile(scan, bb, sample_size=12, device="cpu", num_workers=0, rounds=20)
    assert sum(calls) <= 12
    assert profile.near_duplicate_sample == 12
    assert profile.similarity is not None and profile.similarity.sample_size == 12
    # the file-level facts still cover every image
    assert profile.images_total == 29 and len(profile.exact_duplicates) == 1
    # fewer than 4 sampled images: no similarity, but the rest of the profile is there
    tiny = build_profile(scan, bb, sample_size=3, device="cpu", num_workers=0, rounds=20)
    assert tiny.similarity is None and tiny.near_duplicate_sample == 3
    assert tiny.greyscale_share is not None


def test_a_few_shot_training_split_beside_a_large_validation_split_still_fills_the_label_reading_sample():
    from advisor.measure.profiler import profiling_sample, stratified_sample

    few = [Sample(path=f"/d/train/c{c}/{i}.png", label=c, split="train") for c in range(5) for i in range(5)]
    val = [Sample(path=f"/d/val/c{c}/{i}.png", label=c, split="val") for c in range(5) for i in range(170)]
    picked = profiling_sample(few + val, 300, seed=0)
    assert len(picked) == 300 and sum(s.split == "train" for s in picked) == 25  # every training image
    assert Counter(s.label for s in picked if s.split == "val") == {c: 55 for c in range(5)}  # the rest, stratified
    # a proportional draw would have left about one training image per class: too few to cross-validate
    assert sum(s.split == "train" for s in stratified_sample(few + val, 300, seed=0)) < 15
    # the usual 80/20 split: the sample is training images (what a run extracts too), stratified
    usual = [Sample(path=f"/d/{sp}/c{c}/{i}.png", label=c, split=sp) for c in range(4)
             for sp, n in (("train", 160), ("val", 40)) for i in range(n)]
    picked = profiling_sample(usual, 300, seed=0)
    assert all(s.split == "train" for s in picked) and Counter(s.label for s in picked) == {c: 75 for c in range(4)}
    assert profiling_sample(usual[:30], 300, seed=0) == usual[:30]  # a dataset smaller than the sample: all of it


def test_stage_clock_adds_up_a_stage_entered_twice_and_counts_a_failing_one():
    import time

    from advisor.core.clock import StageClock, top_stages

    clock = StageClock()
    for _ in range(2):
        with clock("a"):
            time.sleep(0.01)
    try:
        with clock("b"):
            raise ValueError("stops here")
    except ValueError:
        pass
    assert list(clock.seconds) == ["a", "b"] and clock.seconds["a"] >= 0.02 and clock.seconds["b"] >= 0
    assert top_stages({"x": 1.0, "y": 3.0, "z": 2.0}, 2) == "y 3.0 s, z 2.0 s"


def test_what_chooses_the_strategy_reads_no_validation_label(profile_dataset_dir, tmp_path):
    # The validation split is what runs report on: relabelling it (red and blue swapped) must leave every
    # profile figure the decision and forecast read unchanged (a selection made on it would not be).
    first, _, _ = profile_dataset(profile_dataset_dir, backbone="test/tiny-cnn", device="cpu", num_workers=0, rounds=20,
                                  cache_dir=tmp_path / "c1")
    swapped = tmp_path / "swapped"
    shutil.copytree(profile_dataset_dir, swapped)
    (swapped / "val" / "red").rename(swapped / "val" / "tmp")
    (swapped / "val" / "blue").rename(swapped / "val" / "red")
    (swapped / "val" / "tmp").rename(swapped / "val" / "blue")
    second, _, _ = profile_dataset(swapped, backbone="test/tiny-cnn", device="cpu", num_workers=0, rounds=20,
                                   cache_dir=tmp_path / "c2")
    assert first.probe_cv and first.probe_cv == second.probe_cv
    assert first.probe_cv_images == second.probe_cv_images == 22
    assert [e.model_dump() for e in first.tap_evidence] == [e.model_dump() for e in second.tap_evidence]
    assert [c.model_dump() for c in first.probe_curve] == [c.model_dump() for c in second.probe_curve]
    assert first.flip_check == second.flip_check
    assert "probe_holdout" not in first.model_dump()


def test_a_class_with_one_training_image_still_gets_the_probe_cv_and_the_learning_curve(tmp_path):
    # One rare class used to stop the profile's cross-validation, so the forecast, the learning curve (what more
    # images buy) and the flip check were all missing; the rare class is now dealt into fewer folds.
    root = tmp_path / "rare"
    write_class_images(root / "train", {"red": 12, "green": 12, "blue": 1})
    write_class_images(root / "val", {"red": 3, "green": 3, "blue": 2}, seed=1)
    profile, _, _ = profile_dataset(root, backbone="test/tiny-cnn", device="cpu", num_workers=0, rounds=20)
    assert profile.train_per_class_min == 1
    assert PRE_LOGITS in profile.probe_cv and profile.probe_cv[PRE_LOGITS] > 0.9  # colour classes: easy
    assert [p.per_class for p in profile.probe_curve] == [4.8, 9.6]  # 6 and 12 of the common classes, 4/5 in a fold
    assert profile.flip_check is not None and profile.flip_check.folds == 5
