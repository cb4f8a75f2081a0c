"""Shared fixtures: tiny synthetic datasets and an isolated feature cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The random-weight test backbone (test/tiny-cnn) is hidden from users; tests and the
# subprocesses they start may build it.
os.environ["ADVISOR_TEST_BACKBONES"] = "1"
# Runs compared to the bit need the same thread count whatever the machine's load (see
# advisor.core.distributed.apply_thread_policy); the policy itself is measured by benchmarks/busy_cpu.py.
os.environ["ADVISOR_THREADS"] = "default"
# The suite's expectations (exact resumes, float32 references) are the CPU's: "auto" means the CPU
# on a GPU machine too. Tests of the CUDA paths name the device and are marked to need one.
os.environ["ADVISOR_DEVICE"] = "cpu"
EXAMPLE = REPO / "examples" / "ants-bees"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache; the user's ~/.cache is never touched."""
    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(tmp_path_factory.mktemp("advisor-cache")))


def write_class_images(root: Path, classes: dict[str, int], *, size: int = 40, seed: int = 0, ext: str = ".png") -> Path:
    """Write ``classes[name]`` images per class; each class has its own colour, so tasks are separable."""
    rng = random.Random(seed)
    for ci, (name, n) in enumerate(classes.items()):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        base = np.array([(ci * 97) % 256, (ci * 53 + 80) % 256, (ci * 151 + 160) % 256], dtype=np.float32)
        for i in range(n):
            noise = np.array([[rng.gauss(0, 20) for _ in range(3)] for _ in range(size * size)], dtype=np.float32)
            arr = np.clip(base + noise.reshape(size, size, 3), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{name}_{i:03d}{ext}")
    return root


def write_splits(root: Path, per_class: dict[str, int], *, classes=("red", "green", "blue"), size: int = 36) -> Path:
    """Split folders (``per_class``: split -> images per class), each split drawn with its own seed."""
    for seed, (split, n) in enumerate(per_class.items()):
        write_class_images(root / split, dict.fromkeys(classes, n), size=size, seed=seed)
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """Two colour classes, 6 images each, flat class folders."""
    return write_class_images(tmp_path / "tiny", {"red": 6, "blue": 6})
