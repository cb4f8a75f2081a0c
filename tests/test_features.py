"""Feature extraction and its on-disk cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import advisor.measure.cache as feature_cache
import advisor.measure.features as F
from advisor.backbones import create_backbone
from advisor.core.errors import AdvisorError, DeviceMemoryError
from advisor.data.scan import scan_dataset
from advisor.measure.cache import FeatureCache
from advisor.measure.features import extract_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    return create_backbone("test/tiny-cnn", pretrained=False, seed=0)


def _count_forwards(monkeypatch, backbone) -> list[int]:
    calls: list[int] = []
    original = backbone.forward_taps

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(backbone, "forward_taps", counting)
    return calls


def _extract(samples, bb, cache, **kw):
    return extract_features(samples, bb, cache_dir=cache, num_workers=0, batch_size=4, **kw)


def test_every_tap_in_one_pass_and_second_run_is_served_from_cache(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    calls = _count_forwards(monkeypatch, tiny)
    first = _extract(scan.samples, tiny, tmp_path / "c")
    assert sum(calls) == len(scan.samples)  # one forward per image, all taps at once
    assert set(first.features) == {t.name for t in tiny.taps} | {F.GREY}
    for t in tiny.taps:
        assert first.features[t.name].shape == (len(scan.samples), t.channels)
    assert first.summary.computed == len(scan.samples) and first.summary.from_cache == 0
    assert first.labels.tolist() == [s.label for s in scan.samples]

    calls.clear()
    second = _extract(scan.samples, tiny, tmp_path / "c")
    assert calls == []  # no forward pass at all
    assert second.summary.from_cache == len(scan.samples) and second.summary.computed == 0
    for t in first.features:
        assert torch.equal(first.features[t], second.features[t])


def test_cached_features_match_a_direct_forward(tiny_dataset, tiny, tmp_path):
    scan = scan_dataset(tiny_dataset)
    fs = _extract(scan.samples[:3], tiny, tmp_path / "c")
    from advisor.data.imagefile import load_image

    tf = tiny.transform_config.eval_transform()
    x = torch.stack([tf(load_image(s.path)) for s in scan.samples[:3]])
    with torch.inference_mode():
        direct = tiny.forward_taps(x)
    for t, v in direct.items():
        torch.testing.assert_close(fs.features[t], v.float(), rtol=1e-5, atol=1e-5)


def test_partial_cache_computes_only_the_new_images(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    _extract(scan.samples[:5], tiny, tmp_path / "c")
    calls = _count_forwards(monkeypatch, tiny)
    fs = _extract(scan.samples, tiny, tmp_path / "c")
    assert sum(calls) == len(scan.samples) - 5
    assert fs.summary.from_cache == 5


def test_cache_namespace_depends_on_weights_and_transform(tiny_dataset, tmp_path):
    a = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    b = create_backbone("test/tiny-cnn", pretrained=False, seed=1)
    ca, cb = FeatureCache.for_backbone(tmp_path, a), FeatureCache.for_backbone(tmp_path, b)
    assert ca.dir != cb.dir
    c = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    c = c.with_input_size(48)
    assert FeatureCache.for_backbone(tmp_path, c).dir != ca.dir
    # same backbone, same weights -> same namespace
    assert FeatureCache.for_backbone(tmp_path, create_backbone("test/tiny-cnn", pretrained=False, seed=0)).dir == ca.dir


def test_same_content_under_another_path_hits_the_cache(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    _extract(scan.samples, tiny, tmp_path / "c")
    copy = tmp_path / "copy"
    copy.mkdir()
    for s in scan.samples:
        (copy / Path(s.path).name).write_bytes(Path(s.path).read_bytes())
    calls = _count_forwards(monkeypatch, tiny)
    _extract(sorted(copy.iterdir()), tiny, tmp_path / "c")
    assert calls == []


def test_stat_keys_miss_after_the_file_changes(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    _extract(scan.samples, tiny, tmp_path / "c", key_mode="stat")
    target = Path(scan.samples[0].path)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    calls = _count_forwards(monkeypatch, tiny)
    _extract(scan.samples, tiny, tmp_path / "c", key_mode="stat")
    assert sum(calls) == 1


def test_an_interrupted_write_leaves_no_readable_entry(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    real_save = feature_cache.save_file

    def dies_mid_write(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # half-written file, then the process "dies"
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(feature_cache, "save_file", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        _extract(scan.samples, tiny, tmp_path / "c")
    monkeypatch.setattr(feature_cache, "save_file", real_save)
    cache = FeatureCache.for_backbone(tmp_path / "c", tiny)
    assert list(cache.dir.glob("*.safetensors")) == []
    assert cache.index() == {}
    calls = _count_forwards(monkeypatch, tiny)
    fs = _extract(scan.samples, tiny, tmp_path / "c")
    assert sum(calls) == len(scan.samples)
    assert fs.summary.computed == len(scan.samples)


def test_kill_9_during_a_cache_write_leaves_no_entry(tiny_dataset, tmp_path):
    """A real SIGKILL between writing the temp file and renaming it."""
    cache = tmp_path / "c"
    ready = tmp_path / "ready"
    child = textwrap.dedent(f"""
        import os, time
        import advisor.measure.features as F
        from advisor.backbones import create_backbone
        from advisor.data.scan import scan_dataset
        real_replace = os.replace
        def stall(src, dst):
            if not str(dst).endswith(".safetensors"):  # the digest memo's write: not the one under test
                return real_replace(src, dst)
            open({str(ready)!r}, "w").close()
            time.sleep(600)
        F.os.replace = stall
        bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
        F.extract_features(scan_dataset({str(tiny_dataset)!r}).samples, bb, cache_dir={str(cache)!r}, num_workers=0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=REPO)
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert proc.poll() is None, "child exited before reaching the cache write"
            assert time.time() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    bb = create_backbone("test/tiny-cnn", pretrained=False, seed=0)
    fc = FeatureCache.for_backbone(cache, bb)
    assert list(fc.dir.glob(".*.tmp")), "the temp file of the killed write should be there"
    assert fc.index() == {}
    fs = _extract(scan_dataset(tiny_dataset).samples, bb, cache)
    assert fs.summary.computed == 12


def test_a_corrupt_shard_is_dropped_and_recomputed(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    first = _extract(scan.samples, tiny, tmp_path / "c")
    cache = FeatureCache.for_backbone(tmp_path / "c", tiny)
    (shard,) = cache.dir.glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:100])
    calls = _count_forwards(monkeypatch, tiny)
    again = _extract(scan.samples, tiny, tmp_path / "c")
    assert sum(calls) == len(scan.samples)
    torch.testing.assert_close(again.features["pre_logits"], first.features["pre_logits"])


def test_images_that_fail_to_decode_are_skipped_and_reported(tiny_dataset, tiny, tmp_path):
    scan = scan_dataset(tiny_dataset)
    bad = Path(scan.samples[2].path)
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 3])  # broken after the scan
    fs = _extract(scan.samples, tiny, tmp_path / "c")
    assert [f.path for f in fs.summary.failed] == [str(bad)]
    assert len(fs.paths) == len(scan.samples) - 1 and str(bad) not in fs.paths
    assert fs.features["pre_logits"].shape[0] == len(scan.samples) - 1


def test_without_cache_and_with_worker_processes(tiny_dataset, tiny, tmp_path):
    scan = scan_dataset(tiny_dataset)
    fs = extract_features(scan.samples, tiny, use_cache=False, num_workers=2, batch_size=5)
    assert fs.summary.cache_dir is None and fs.summary.computed == len(scan.samples)
    assert fs.index == list(range(len(scan.samples)))


def test_unknown_tap_is_a_clear_error(tiny_dataset, tiny, tmp_path):
    with pytest.raises(AdvisorError, match="no tap"):
        _extract(scan_dataset(tiny_dataset).samples, tiny, tmp_path / "c", taps=["nope"])


def test_progress_reports_reach_the_total(tiny_dataset, tiny, tmp_path):
    seen = []
    _extract(scan_dataset(tiny_dataset).samples, tiny, tmp_path / "c", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bn_moments_come_from_the_same_pass_and_are_cached(tiny_dataset, tiny, tmp_path, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    plain = _extract(scan.samples, tiny, tmp_path / "c")
    assert not any(k.startswith("bn:") for k in plain.features)
    calls = _count_forwards(monkeypatch, tiny)
    fs = _extract(scan.samples, tiny, tmp_path / "c", bn_moments=True)
    assert sum(calls) == len(scan.samples)  # cached rows lack the moments: one more pass
    names = F.bn_names(tiny)
    assert names and all(n in fs.features for n in names)
    layer = tiny.bn_layers()[0]
    assert fs.features[f"bn:{layer.name}:mean"].shape == (len(scan.samples), layer.channels)
    # the moments equal a hand-computed mean/var of the BN input
    from advisor.data.imagefile import load_image

    x = tiny.transform_config.eval_transform()(load_image(scan.samples[0].path)).unsqueeze(0)
    seen = {}
    h = tiny.model.get_submodule(layer.name).register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.inference_mode():
        tiny.model(x)
    h.remove()
    torch.testing.assert_close(fs.features[f"bn:{layer.name}:mean"][0], seen["x"][0].mean((1, 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fs.features[f"bn:{layer.name}:var"][0], seen["x"][0].var((1, 2), unbiased=False), rtol=1e-4, atol=1e-5)
    calls.clear()
    _extract(scan.samples, tiny, tmp_path / "c", bn_moments=True)
    _extract(scan.samples, tiny, tmp_path / "c")
    assert calls == []


def _memory_for(monkeypatch, backbone, fits: int) -> list[int]:
    """forward_taps raises torch's out-of-memory error above ``fits`` images, as a small GPU would."""
    calls: list[int] = []
    original = backbone.forward_taps

    def small_memory(x, *args, **kwargs):
        calls.append(x.shape[0])
        if x.shape[0] > fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(x, *args, **kwargs)

    monkeypatch.setattr(backbone, "forward_taps", small_memory)
    return calls


def test_a_batch_that_runs_out_of_memory_is_split_and_the_features_do_not_change(tiny_dataset, tiny, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    whole = extract_features(scan.samples, tiny, use_cache=False, num_workers=0, batch_size=4)
    calls = _memory_for(monkeypatch, tiny, fits=2)
    split = extract_features(scan.samples, tiny, use_cache=False, num_workers=0, batch_size=4, bn_moments=True)
    assert calls[0] == 4 and calls[1:] == [2] * 6  # halved once, and the halved size kept for later batches
    for tap, x in whole.features.items():
        torch.testing.assert_close(split.features[tap], x)
    assert split.summary.computed == len(scan.samples)


def test_running_out_of_memory_on_one_image_is_a_clear_error_and_other_errors_pass_through(tiny_dataset, tiny, monkeypatch):
    scan = scan_dataset(tiny_dataset)
    _memory_for(monkeypatch, tiny, fits=0)
    with pytest.raises(DeviceMemoryError, match=r"ran out of memory extracting the features of a single image.*--input-size"):
        extract_features(scan.samples, tiny, use_cache=False, num_workers=0, batch_size=4)

    def broken(x, *args, **kwargs):
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(tiny, "forward_taps", broken)
    with pytest.raises(RuntimeError, match="a bug, not memory"):
        extract_features(scan.samples, tiny, use_cache=False, num_workers=0, batch_size=4)


def test_greyscale_images_are_flagged(tmp_path, tiny):
    from PIL import Image

    root = tmp_path / "g"
    for cls, mode in (("grey", "L"), ("colour", "RGB")):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new(mode, (40, 40), 120 if mode == "L" else (200, 30, 60)).save(root / cls / f"{i}.jpg")
    scan = scan_dataset(root)
    fs = _extract(scan.samples, tiny, tmp_path / "c")
    grey = {Path(p).parent.name: bool(v) for p, v in zip(fs.paths, fs.features[F.GREY][:, 0].tolist())}
    assert grey == {"grey": True, "colour": False}


def test_busy_cores_are_read_off_the_cores_own_ticks_not_the_load_average(monkeypatch):
    from advisor.core import machine

    stat = ("cpu  900 0 300 5000 100 0 0 0 0 0\n"
            "cpu0 400 0 100 2000 50 0 0 0 0 0\n"
            "cpu1 500 0 200 3000 50 0 0 0 0 0\n"
            "cpu7 999 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n")
    assert machine._cpu_jiffies({0, 1}, stat) == (1200, 6300)  # idle and iowait are free time; cpu7 is not ours
    assert machine._cpu_jiffies({5}, stat) is None
    # 2 cores for 1 s (200 ticks at 100/s): 150 busy ticks, 0.5 s of them this process's own
    assert machine.busy_from_samples((0, 0), (150, 200), 0.5, 2, 100.0) == pytest.approx(1.0)
    assert machine.busy_from_samples((0, 0), (10, 200), 0.5, 2, 100.0) == 0.0  # never below 0
    assert machine.busy_from_samples((5, 5), (5, 5), 0.0, 2, 100.0) == 0.0
    # A command that ended seconds ago still weighs on the 1-minute load average, not on the cores
    monkeypatch.setattr(machine, "cpu_cores", lambda: 2)
    monkeypatch.setattr(machine, "load_average", lambda: 1.9)
    monkeypatch.setattr(machine, "busy_cores", lambda: 0.0)
    assert machine.free_cores() == 2
    monkeypatch.setattr(machine, "busy_cores", lambda: 1.1)
    assert machine.free_cores() == 1
    monkeypatch.setattr(machine, "busy_cores", lambda: None)  # no /proc/stat: the load average
    assert machine.free_cores() == 1


def test_passive_openmp_only_when_other_work_holds_cores_and_never_under_torchrun(monkeypatch):
    from advisor.core import machine

    monkeypatch.setattr(machine, "cpu_cores", lambda: 2)
    monkeypatch.setattr(machine, "free_cores", lambda: 1)
    monkeypatch.delenv("ADVISOR_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")  # the sibling ranks import at the same moment: not other work
    machine.apply_shared_cpu_policy()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delenv("WORLD_SIZE")
    machine.apply_shared_cpu_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setattr(machine, "free_cores", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    machine.apply_shared_cpu_policy()
    assert "OMP_WAIT_POLICY" not in os.environ


def test_busy_cores_watches_this_machine_when_it_can():
    from advisor.core import machine

    machine._last_busy = None
    busy = machine.busy_cores(window=0.05)
    if busy is None:
        pytest.skip("no /proc/stat here")
    assert 0.0 <= busy <= machine.cpu_cores()
    assert machine.busy_cores() == busy  # a measurement seconds old answers again


def test_default_workers_follow_the_free_cores_shared_among_local_ranks(monkeypatch):
    from advisor.core import distributed
    from advisor.core.distributed import MAX_WORKERS, default_num_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for free, expected in ((1, 1), (2, 1), (16, 15), (64, MAX_WORKERS)):
        monkeypatch.setattr(distributed, "free_cores", lambda free=free: free)
        assert default_num_workers() == expected, free
    monkeypatch.setattr(distributed, "free_cores", lambda: 16)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share its cores
    assert default_num_workers() == 7
