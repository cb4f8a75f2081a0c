"""Fuzz every file advisor reads back (tests/fuzzing.py): a fixed set of seeded mutations per reader, in bounded time.

benchmarks/fuzz_readback.py runs the same cases with as many seeds as asked.
"""

from __future__ import annotations

import pytest
from fuzzing import clean_outcomes, fuzz_case, prepare_world, readers

SEEDS = range(3)  # per reader: 8 readers x 3 = 24 mutated files in CI


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import os

    old = os.environ.get("ADVISOR_CACHE_DIR")
    root = prepare_world(tmp_path_factory.mktemp("fuzz-world"))
    scratch = tmp_path_factory.mktemp("fuzz-scratch") / "w"
    clean = clean_outcomes(root, scratch)
    yield root, scratch, clean
    if old is None:
        os.environ.pop("ADVISOR_CACHE_DIR", None)
    else:
        os.environ["ADVISOR_CACHE_DIR"] = old


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reader", readers(), ids=lambda r: r.name.split()[0])
def test_a_mutated_file_gives_a_correct_result_a_recomputation_or_one_line(world, reader, seed, monkeypatch):
    root, scratch, clean = world
    monkeypatch.setenv("ADVISOR_CACHE_DIR", str(scratch / "cache"))
    fuzz_case(root, scratch, reader, 1000 * hash(reader.name) % 997 + seed, clean)
