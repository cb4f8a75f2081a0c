"""A seeded mutator over every file advisor reads back, and the outcome each reader must give.

Shared by tests/test_fuzz.py (a fixed, small number of examples in CI) and
benchmarks/fuzz_readback.py (as many as asked). Start from valid files written by a real tiny
run, mutate one (truncation, bit flips, type changes, NaN/inf/huge/negative numbers, missing and
extra keys, wrong shapes, a non-regular file), run the command that reads it, and accept only:
a correct result (the clean one), a counted recomputation, or exit 2 with one line. Never exit 1,
a traceback, a hang (an alarm fails the case) or a silently different result.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

HANG_SECONDS = 120

ODD_VALUES = [float("nan"), float("inf"), -float("inf"), 1e308, -1, 0, -1e9, 2**70, "x", None, [], {}, True, ""]


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    kind = rng.choice(["truncate", "flip", "empty", "append"])
    if kind == "truncate" and data:
        return kind, data[: rng.randrange(len(data))]
    if kind == "flip" and data:
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return kind, bytes(b)
    if kind == "append":
        return kind, data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return "empty", b""


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    yield path


def mutate_json(obj, rng: random.Random) -> tuple[str, object]:
    obj = json.loads(json.dumps(obj))
    paths = [p for p in _leaves(obj) if p]
    kind = rng.choice(["value", "value", "drop", "extra", "type"])
    if not paths:
        return "replace", rng.choice(ODD_VALUES)
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if kind == "drop" and isinstance(parent, dict):
        del parent[key]
        return f"drop {'.'.join(map(str, path))}", obj
    if kind == "extra" and isinstance(parent, dict):
        parent[f"unexpected_{rng.randrange(99)}"] = rng.choice(ODD_VALUES)
        return "extra key", obj
    if kind == "type":
        parent[key] = {"nested": parent[key]} if rng.random() < 0.5 else [parent[key]]
        return f"type {'.'.join(map(str, path))}", obj
    value = rng.choice(ODD_VALUES)
    parent[key] = value
    return f"{'.'.join(map(str, path))}={value!r}", obj


def write_mutation(path: Path, rng: random.Random, *, is_json: bool, jsonl: bool = False) -> str:
    """Replace ``path`` by a mutated version; returns what was done (for the failure message)."""
    roll = rng.random()
    if roll < 0.08:  # not a regular file where one was written
        path.unlink()
        if rng.random() < 0.5:
            os.mkfifo(path)
            return "fifo"
        path.mkdir()
        return "directory"
    data = path.read_bytes()
    if is_json and roll < 0.7:
        if jsonl:
            lines = data.decode().splitlines()
            i = rng.randrange(len(lines))
            what, new = mutate_json(json.loads(lines[i]), rng)
            lines[i] = json.dumps(new, allow_nan=True)
            path.write_text("\n".join(lines) + "\n")
            return f"line {i + 1}: {what}"
        what, new = mutate_json(json.loads(data), rng)
        path.write_text(json.dumps(new, allow_nan=True))
        return what
    what, new = mutate_bytes(data, rng)
    path.write_bytes(new)
    return what


@dataclass
class Outcome:
    code: int
    out: str
    err: str


class Hang(Exception):
    pass


def run_cli(args: list) -> Outcome:
    """``advisor ARGS`` in this process, with an alarm against hangs; the exit code and what it printed."""
    from advisor.cli.app import main

    out, err = StringIO(), StringIO()

    def alarm(*_):
        raise Hang(f"advisor {' '.join(map(str, args))} ran past {HANG_SECONDS} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(HANG_SECONDS)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(code, out.getvalue(), err.getvalue())


def check_clean_or_one_line(o: Outcome, what: str) -> None:
    assert "Traceback" not in o.err and "internal error" not in o.err, f"{what}: {o.err}"
    assert o.code in (0, 2), f"{what}: exit {o.code}: {o.err}"
    if o.code == 2:
        lines = [line for line in o.err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: {o.err}"


@dataclass
class Reader:
    """One file advisor reads back: where it is in the prepared world, and the command that reads it."""

    name: str
    file: Callable[[Path], Path]
    command: Callable[[Path], list]
    is_json: bool = True
    jsonl: bool = False
    # How the clean result compares with a mutated run's that exits 0 (None: any exit-0 output is correct).
    same: Callable[[Outcome, Outcome], bool] | None = None


def predictions(o: Outcome) -> list:
    return [(p["path"], p["top"][0]["label"], round(p["top"][0]["probability"], 4)) for p in json.loads(o.out)["predictions"]]


def features_equal(world: Path) -> Callable[[Outcome, Outcome], bool]:
    def same(clean: Outcome, mutated: Outcome) -> bool:
        return json.loads(mutated.out)["images"] == json.loads(clean.out)["images"]
    return same


def same_seen(clean: Outcome, mutated: Outcome) -> bool:
    a, b = json.loads(clean.out), json.loads(mutated.out)
    counted = (b["seen_train"], b["seen_val"]) == (a["seen_train"], a["seen_val"]) and b["seen_note"] is None
    return b["accuracy"] == a["accuracy"] and (counted or (b["seen_note"] or "").endswith("so it was not trusted"))


def readers() -> list[Reader]:
    def run_dir(w: Path) -> Path:
        return next((w / "runs").iterdir())

    return [
        Reader("plan.json (run --plan)", lambda w: w / "plan.json",
               lambda w: ["run", "--plan", w / "plan.json", "--runs-dir", w / "fuzz-runs", "--cache-dir", w / "cache", "--json"]),
        Reader("model.json (predict)", lambda w: run_dir(w) / "model.json",
               lambda w: ["predict", run_dir(w), w / "data" / "red", "--json"], same=lambda a, b: predictions(a) == predictions(b)),
        Reader("model.safetensors (predict)", lambda w: run_dir(w) / "model.safetensors",
               lambda w: ["predict", run_dir(w), w / "data" / "red", "--json"], is_json=False,
               same=lambda a, b: predictions(a) == predictions(b)),
        Reader("run.json (resume)", lambda w: run_dir(w) / "run.json", lambda w: ["run", "--resume", run_dir(w), "--json"]),
        # the run's own images, scored anyway: a mutated seen.json is read as it was, or not trusted and said so
        Reader("seen.json (evaluate)", lambda w: run_dir(w) / "seen.json",
               lambda w: ["evaluate", run_dir(w), w / "data", "--include-seen", "--json"], same=same_seen),
        Reader("feature shard (features)", lambda w: next((w / "cache" / "features").rglob("*.safetensors")),
               lambda w: ["features", w / "data", "--backbone", "test/tiny-cnn", "--cache-dir", w / "cache", "--json"],
               is_json=False, same=lambda a, b: json.loads(a.out)["images"] == json.loads(b.out)["images"]),
        Reader("step_times.json (recommend)", lambda w: w / "cache" / "step_times.json",
               lambda w: ["recommend", w / "data", "--backbone", "test/tiny-cnn", "--cache-dir", w / "cache",
                          "--input-size", "32", "--json"]),
        Reader("track_record.jsonl (calibrate)", lambda w: w / "cache" / "track_record.jsonl",
               lambda w: ["calibrate", "--json"], jsonl=True),
    ]


def prepare_world(root: Path) -> Path:
    """A tiny dataset, a finished probe run with its plan, a feature cache, step timings and a local track record."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_class_images

    import advisor

    os.environ["ADVISOR_CACHE_DIR"] = str(root / "cache")
    data = write_class_images(root / "data", {"red": 6, "blue": 6}, size=36)
    advisor.recommend(data, backbone="test/tiny-cnn", input_size=32, cache_dir=root / "cache", save_plan=root / "plan.json")
    advisor.run(data, backbone="test/tiny-cnn", input_size=32, runs_dir=root / "runs", cache_dir=root / "cache")
    assert (root / "cache" / "track_record.jsonl").exists() and (root / "cache" / "step_times.json").exists()
    return root


def fuzz_case(world: Path, scratch: Path, reader: Reader, seed: int, clean: dict[str, Outcome]) -> str:
    """Copy the world, mutate one file with ``seed``, run its reader; returns what was mutated (asserts the outcome)."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(world, scratch, symlinks=True)
    os.environ["ADVISOR_CACHE_DIR"] = str(scratch / "cache")
    rng = random.Random(seed)
    if reader.name.startswith("run.json"):  # resume reads it only for a run that did not finish
        state = json.loads((reader.file(scratch)).read_text())
        reader.file(scratch).write_text(json.dumps({**state, "status": "interrupted"}))
    what = f"{reader.name}, seed {seed}: " + write_mutation(reader.file(scratch), rng, is_json=reader.is_json,
                                                            jsonl=reader.jsonl)
    outcome = run_cli(reader.command(scratch))
    check_clean_or_one_line(outcome, what)
    if outcome.code == 0 and reader.same is not None:
        assert reader.same(clean[reader.name], outcome), f"{what}: a silently different result"
    return what


def clean_outcomes(world: Path, scratch: Path) -> dict[str, Outcome]:
    out = {}
    for reader in readers():
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(world, scratch, symlinks=True)
        os.environ["ADVISOR_CACHE_DIR"] = str(scratch / "cache")
        if reader.name.startswith("run.json"):
            continue
        o = run_cli(reader.command(scratch))
        assert o.code == 0, (reader.name, o.err)
        out[reader.name] = o
    return out

