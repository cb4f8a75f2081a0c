"""torchrun + DDP on the CPU (gloo, 2 processes): same result as one process, artifacts once, a killed rank fails
cleanly and ``--resume`` finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_class_images

from advisor.cli.launch import without_devices
from advisor.core import distributed
from strategies.resume import EpochBatchSampler

pytestmark = pytest.mark.skipif(not distributed.dist.is_available(), reason="torch.distributed is not available")


@pytest.fixture
def colours3(tmp_path) -> Path:
    return write_class_images(tmp_path / "colours3", {"red": 16, "blue": 16, "green": 16})


def _plan(tmp_path: Path, dataset: Path, strategy: str, epochs: int = 3, **fields) -> Path:
    plan = {"dataset": str(dataset), "backbone": "test/tiny-cnn", "strategy": strategy, "rule_ids": ["test"],
            "input_size": 32, "batch_size": 8, **fields}
    if strategy.endswith("finetune"):
        plan["recipe"] = {"epochs": epochs, "warmup_epochs": 1}
    path = tmp_path / f"{strategy}-{epochs}.json"
    path.write_text(json.dumps(plan))
    return path


def _advisor(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advisor", "-q", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "ADVISOR_DIST_TIMEOUT": "60"})


def test_each_rank_gets_its_share_of_the_same_global_batches():
    whole = list(EpochBatchSampler(20, 8, seed=3, epoch=1))
    shares = [list(EpochBatchSampler(20, 8, seed=3, epoch=1, rank=r, world=2)) for r in range(2)]
    for b, batch in enumerate(whole):
        assert sorted(shares[0][b] + shares[1][b]) == sorted(batch)
        assert not set(shares[0][b]) & set(shares[1][b])
    assert without_devices(["run", "--devices", "2", "--auto", "x", "--devices=3"]) == ["run", "--auto", "x"]


@pytest.mark.parametrize("strategy", ["full-finetune", "linear-probe"])
def test_two_gloo_processes_give_the_one_process_result_and_write_artifacts_once(tmp_path, colours3, strategy):
    plan = _plan(tmp_path, colours3, strategy, val_fraction=0.45)  # 21 validation images: enough to calibrate
    one = _advisor("run", "--plan", str(plan), "--runs-dir", "one", "--device", "cpu", "--json", cwd=tmp_path)
    two = _advisor("run", "--plan", str(plan), "--runs-dir", "two", "--device", "cpu", "--devices", "2", "--json",
                   cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)  # one JSON document: only rank 0 prints
    assert r2["result"]["metrics"]["val_accuracy"] == r1["result"]["metrics"]["val_accuracy"]
    # Every rank fits the temperature on the same gathered validation logits: the one process's.
    c1, c2 = r1["result"]["calibration"], r2["result"]["calibration"]
    assert c1["n"] == c2["n"] == 21 and c2["applied"] == c1["applied"]
    assert c2["temperature"] == pytest.approx(c1["temperature"], rel=1e-3)
    # Same global batches, gradients averaged over the world, loss normalised by the global batch:
    # the curves agree to float32 rounding.
    for key in ("train_loss", "val_loss"):
        for a, b in zip(r1["result"]["curves"].get(key, []), r2["result"]["curves"].get(key, []), strict=True):
            assert b == pytest.approx(a, rel=1e-4, abs=1e-5)
    (run_dir,) = (tmp_path / "two").iterdir()  # one run directory, not one per rank
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("finished") == 1
    assert (run_dir / "model.safetensors").is_file() and json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def _descendants(pid: int) -> list[tuple[int, str]]:
    rows = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    children: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        parts = row.split(None, 2)
        if len(parts) >= 2:
            children.setdefault(int(parts[1]), []).append((int(parts[0]), parts[2] if len(parts) > 2 else ""))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def test_a_killed_rank_stops_the_run_without_a_hang_and_resume_finishes_it_in_one_process(tmp_path, colours3):
    plan = _plan(tmp_path, colours3, "full-finetune", epochs=40)
    proc = subprocess.Popen([sys.executable, "-m", "advisor", "-q", "run", "--plan", str(plan), "--runs-dir", "runs",
                             "--device", "cpu", "--devices", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ADVISOR_DIST_TIMEOUT": "60"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # wait for the first epoch's checkpoint
            logs = list((tmp_path / "runs").glob("*/events.jsonl"))
            if logs and '"epoch"' in logs[0].read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        workers = [pid for pid, args in _descendants(proc.pid) if "-m advisor" in args and "torch.distributed" not in args]
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)  # torchrun stops the other rank: no hang
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGKILL" in err and "advisor run --resume RUN_DIR --devices 2" in err
    assert "Traceback" not in err  # torchrun's report is summarised in one line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoints").is_dir() and not (run_dir / "model.safetensors").exists()

    # Checkpoints count global batches, so the run resumes under another world size: one process here.
    done = _advisor("run", "--resume", str(run_dir), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)["result"]
    assert result["selected"]["resumed"] and result["epochs_completed"] == 40
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("finished") == 1 and (run_dir / "model.safetensors").is_file()


def test_compare_under_two_processes_writes_one_comparison(tmp_path, colours3):
    res = _advisor("compare", str(colours3), "--backbone", "test/tiny-cnn", "--strategies", "linear-probe,full-finetune",
                   "--input-size", "32", "--epochs", "2", "--runs-dir", "runs", "--device", "cpu", "--devices", "2",
                   "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    (folder,) = (tmp_path / "runs").iterdir()  # rank 0 names the folder; nobody else makes one
    assert (tmp_path / out["saved_to"]) == folder / "compare.json" and (folder / "report.html").is_file()
    assert {r["strategy"] for r in out["rows"]} >= {"linear-probe", "full-finetune"}
    bad = _advisor("compare", str(colours3), "--strategies", "nope", "--devices", "2", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("unknown strategies") == 1  # checked before any rank starts


def test_more_processes_than_gpus_is_refused_before_any_starts(monkeypatch):
    import torch

    from advisor.cli.launch import relaunch
    from advisor.core.errors import AdvisorError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("ADVISOR_DEVICE", raising=False)
    with pytest.raises(AdvisorError, match="--devices 2 runs one process per GPU, but this machine has 1"):
        relaunch(2, "auto")
    monkeypatch.setenv("ADVISOR_DEVICE", "cpu")  # "auto" means the CPU here: gloo processes are fine
    monkeypatch.setattr("advisor.core.distributed.launch", lambda argv, nproc: (0, None))
    with pytest.raises(SystemExit) as done:
        relaunch(2, "auto")
    assert done.value.code == 0


def test_features_under_torchrun_fill_one_cache_that_one_process_then_reads(colours3, tmp_path):
    import torch

    from advisor.backbones import create_backbone
    from advisor.data.scan import scan_dataset
    from advisor.measure.features import extract_features

    cache = tmp_path / "cache"
    cmd = distributed.torchrun_command(["-q", "features", str(colours3), "-b", "test/tiny-cnn", "--device", "cpu",
                                        "--workers", "0", "--batch-size", "5", "--cache-dir", str(cache), "--json"], nproc=2)
    two = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "ADVISOR_DIST_TIMEOUT": "60"})
    assert two.returncode == 0, two.stderr[-2000:]
    summary = json.loads(two.stdout)  # one JSON document: only rank 0 prints
    assert summary["images"] == 48 and summary["computed"] == 48 and summary["from_cache"] == 0

    bb = create_backbone("test/tiny-cnn")
    samples = scan_dataset(colours3).samples
    cached = extract_features(samples, bb, cache_dir=cache, device="cpu", num_workers=0)
    assert cached.summary.from_cache == 48 and cached.summary.computed == 0  # both ranks' shares are in the cache
    fresh = extract_features(samples, bb, use_cache=False, device="cpu", num_workers=0, batch_size=5)
    for tap, values in fresh.features.items():
        torch.testing.assert_close(cached.features[tap], values, rtol=1e-5, atol=1e-6, msg=tap)
