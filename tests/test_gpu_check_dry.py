"""benchmarks/gpu_check.sh's new steps, dry run on the CPU with tiny sizes (GPU_CHECK_SMALL=1): they run,
print their figures and leave the summary file the session copies into docs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_class_images

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_prints_the_bare_settings_and_the_stage_profile(tmp_path):
    data = write_class_images(tmp_path / "tiny", {"a": 6, "b": 6}, size=40)
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_SMALL": "1", "STEPS": "bare profile photos", "DATA": str(data), "OUT": str(out),
           "PY": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fastest training step:" in proc.stdout and "timm's 3090 channels_last figure 2100" in proc.stdout
    profile = json.loads((out / "profile.json").read_text())
    sites = {r["site"]: r for r in profile["results"]}
    assert set(sites) == {"workers", "device"}
    for r in sites.values():
        assert r["images_per_second"] > 0 and 0 < r["device_busy_serial"] <= 1
        assert {"read", "decode", "crop", "forward", "backward", "step", "overhead"} <= set(r["stages"])
    assert "augment (device)" in sites["device"]["stages"] and "augment (workers)" in sites["workers"]["stages"]
    summary = (out / "gpu_throughput_cpu.txt").read_text()
    assert "### bare" in summary and "### profile" in summary and "### photos" in summary
    # the photo step times both decoders and compares their features
    assert "device / CPU workers:" in summary and "pre_logits cosine, (a) vs (b)" in summary
