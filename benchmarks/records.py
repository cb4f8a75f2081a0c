"""The track record at the settings users run: full sets and k-shot subsamples, every strategy, resumable.

    python benchmarks/records.py [--out docs/records/cpu.jsonl] [--phases kshot128,full128,seeds128,full64]
        [--datasets a,b] [--kshot-datasets a,b] [--k 2,5,10,20,50] [--epochs 8] [--hours H] [--dry-run]
        [--data DIR] [--device cuda] [--backbone NAME]

One cell is (dataset, k, input size, epoch cap, seed): `compare` runs all four strategies on it
(k: a seeded draw of k training images per class, the validation split kept whole) and one JSON
line goes to OUT with everything the policy and forecaster studies need: size, similarity with
its interval, each strategy's accuracy, interval, paired gap to the best (and whether it is tied
with it), wall time, schedule share, the probes' training-split CV, the recommendation, the
device, the machine's load while it ran, and the profile. A cell already in OUT is skipped, so
an interrupted run loses at most the cell in progress; `--hours` stops cleanly before starting a
cell once that much time has passed.

Phases, in the order they run (cheap, informative cells first):
  kshot128  k-shot subsamples of the k-shot datasets at 128 px, seed 0
  full128   every shared set at 128 px, seed 0
  seeds128  seeds 1 and 2 of every 128-px cell whose training split has fewer than 1,000 images
  full64    every shared set at 64 px, seed 0 (and seeds 1, 2 under 1,000 training images)
  kshot224  10, 5, 2, 20, then 50 images per class of each k-shot dataset at 224 px (the default size), seed 0, on the CPU
  seeds224  seeds 1 and 2 of the 224-px cells at 2, then 5 images per class (the few-shot end's noise floor)
  full224   every set at 224 px with the full schedule (no epoch cap): the GPU step of benchmarks/gpu_records.sh
The runs' local track record is kept out of the forecasts (a dedicated cache folder whose record
is emptied before each cell): a dataset's own earlier outcome must not count as evidence for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from advisor.core.machine import load_average
from advisor.core.stats import paired_bootstrap

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
# Six sets spanning the similarity range (two similar, two in between, two different), plus a
# low-resolution greyscale one: where the probes start to win was never measured on any of them.
KSHOT_DATASETS = ["caltech20", "flowers", "dtd10", "plantvillage", "eurosat", "brain-mri", "fashion-mnist"]
KS = [2, 5, 10, 20, 50]
SEEDS_BELOW = 1000  # training splits smaller than this get 3 seeds: the noise floor


def cell_key(c: dict) -> tuple:
    return (c["dataset"], c.get("k"), c["input_size"], c["epochs_cap"], c["seed"])


# At 224 px on the CPU, similar and different sets first, the largest validation split (the most costly cell) last.
ORDER_224 = ["caltech20", "eurosat", "brain-mri", "dtd10", "plantvillage", "fashion-mnist", "flowers"]


def _order224(kshot: list[str]) -> list[str]:
    return sorted(kshot, key=lambda d: ORDER_224.index(d) if d in ORDER_224 else len(ORDER_224))


def plan_cells(phases: list[str], datasets: list[str], kshot: list[str], ks: list[int], epochs: int,
               train_sizes: dict[str, int]) -> list[dict]:
    cells = []
    for phase in phases:
        if phase == "kshot128":
            cells += [dict(dataset=d, k=k, input_size=128, epochs_cap=epochs, seed=0) for k in ks for d in kshot]
        elif phase == "full128":
            cells += [dict(dataset=d, k=None, input_size=128, epochs_cap=epochs, seed=0) for d in datasets]
        elif phase == "seeds128":
            for seed in (1, 2):
                cells += [dict(dataset=d, k=k, input_size=128, epochs_cap=epochs, seed=seed) for k in ks for d in kshot]
                cells += [dict(dataset=d, k=None, input_size=128, epochs_cap=epochs, seed=seed) for d in datasets
                          if train_sizes.get(d, 0) < SEEDS_BELOW]
        elif phase == "kshot224":  # the default input size on the CPU: 10, 5, 2, 20, then 50 per class, one seed (1-15 min a cell)
            cells += [dict(dataset=d, k=k, input_size=224, epochs_cap=epochs, seed=0) for k in (10, 5, 2, 20, 50)
                      for d in _order224(kshot)]
        elif phase == "seeds224":  # the few-shot end at the default size, where seed noise and regret are largest
            cells += [dict(dataset=d, k=k, input_size=224, epochs_cap=epochs, seed=seed) for k in (2, 5) for seed in (1, 2)
                      for d in _order224(kshot)]
        elif phase == "full224":
            cells += [dict(dataset=d, k=None, input_size=224, epochs_cap=None, seed=0) for d in datasets]
        elif phase == "full64":
            cells += [dict(dataset=d, k=None, input_size=64, epochs_cap=epochs, seed=s) for s in (0, 1, 2) for d in datasets
                      if s == 0 or train_sizes.get(d, 0) < SEEDS_BELOW]
        else:
            sys.exit(f"unknown phase {phase!r}: choose from kshot128, full128, seeds128, full64, kshot224, seeds224, full224")
    return cells


def done_keys(out: Path) -> set:
    keys = set()
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                keys.add(cell_key(json.loads(line)))
            except (json.JSONDecodeError, KeyError):
                continue
    return keys


def probe_gap_inputs(c: dict) -> dict:
    """What the forecaster's probe-gap model reads of a cell: its sizes, the images' median shorter side and
    the size its profile ran at. Cells measured before the profile recorded the CV's size: the training
    images its sample could hold (300)."""
    from advisor.data.scan import SizeSummary

    p = c["profile"]
    side = SizeSummary.model_validate(p["sizes"]).median_side if p.get("sizes") else None
    return {"train_images": c["train_images"], "cv_images": p.get("probe_cv_images") or min(c["train_images"], 300),
            "image_side": side, "profile_size": p.get("input_size")}


def read_cells(paths: list[Path]) -> list[dict]:
    """Every complete cell (all four strategies) in these records files; damaged lines are skipped.

    A legacy cell (an older suite's run, benchmarks/legacy_records.py) gives way to a fresh cell of
    the same key: the same setting must not count twice, and the fresh one has its load and timings.
    """
    from advisor.decide.models import STRATEGIES

    cells = []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            try:
                c = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(c, dict) and set(STRATEGIES) <= set(c.get("strategies", {})):
                cells.append(c)
    fresh = {cell_key(c) for c in cells if not c.get("legacy")}
    cells = [c for c in cells if not (c.get("legacy") and cell_key(c) in fresh)]
    add_profile_cv(cells, [Path(p).with_name(PROFILE_CV_FILE) for p in paths])
    add_remeasured_probes(cells, [Path(p).with_name(PROBES_FILE) for p in paths])
    return cells


def keyed_lines(files: list[Path], key) -> dict:
    """Every JSON line of the files that exist, by ``key(line)`` (a later line of the same key wins); damaged
    lines are skipped."""
    found = {}
    for f in dict.fromkeys(files):
        if f.exists():
            for line in f.read_text().splitlines():
                try:
                    h = json.loads(line)
                    found[key(h)] = h
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue
    return found


# benchmarks/profile_cv.py: the profile's probe CV of recorded cells, measured again by today's profiler
PROFILE_CV_FILE = "profile_holdout.jsonl"


def add_profile_cv(cells: list[dict], files: list[Path]) -> None:
    """Give each cell the profile's probe CV profile_cv.py measured for its (dataset, k, seed) with today's
    profiler (the same sample, the same seed); the recorded one is kept as ``recorded_probe_cv``. The lines'
    holdout probes (a study that read validation labels) are not read."""
    found = keyed_lines(files, lambda h: (h["dataset"], h.get("k"), h.get("seed", 0)))
    for c in cells:
        h = found.get((c["dataset"], c.get("k"), c.get("seed", 0)))
        # a cell of today's profiler has the same CV (same draw, seed and code); one overlay only
        if h and "recorded_probe_cv" not in c["profile"]:
            c["profile"] = {**c["profile"], "probe_cv": h["probe_cv"], "recorded_probe_cv": c["profile"].get("probe_cv")}


def add_profile_cv_at_size(cells: list[dict], file: Path) -> int:
    """A study (docs/forecast_error.md): give each cell below 224 px the probe CV ``profile_cv.py --at-input-size``
    measured on features at the cell's own input size, and say its profile ran at that size (the probe-gap
    model's "resolution lost" then reads 0). Cells without such a line are dropped; returns how many got one."""
    found = keyed_lines([file], lambda h: (h["dataset"], h.get("k"), h.get("seed", 0), h["input_size"]))
    kept, n = [], 0
    for c in cells:
        if c["input_size"] != 224:
            h = found.get((c["dataset"], c.get("k"), c.get("seed", 0), c["input_size"]))
            if h is None:
                continue
            c["profile"] = {**c["profile"], "probe_cv": h["probe_cv"], "input_size": c["input_size"]}
            n += 1
        kept.append(c)
    cells[:] = kept
    return n


def run_cell(cell: dict, *, work: Path, cache: Path, sample_size: int, data: Path = SHARED, device: str | None = None,
             backbone: str = "efficientnet_lite0") -> dict:
    from sweeps import subsample

    from advisor.core.distributed import resolve_device
    from advisor.decide.recipe import finetune_schedule
    from advisor.execute.compare import compare

    path = data / cell["dataset"]
    if cell["k"] is not None:
        path = subsample(str(path), cell["k"], work / f"data-{cell['dataset']}-k{cell['k']}-s{cell['seed']}", seed=cell["seed"])
    (cache / "track_record.jsonl").unlink(missing_ok=True)  # no dataset is its own reference
    load0, t0 = load_average(), time.time()
    res = compare(str(path), runs_dir=work / "runs", input_size=cell["input_size"], epochs=cell["epochs_cap"],
                  sample_size=sample_size, seed=cell["seed"], cache_dir=cache, device=device, backbone=backbone)
    rec, p = res.recommendation, res.recommendation.profile
    schedule = finetune_schedule(p.train_images)[1]
    strategies = {}
    for r in res.rows:
        result = json.loads((Path(r.run_dir) / "result.json").read_text())
        strategies[r.strategy] = {
            "accuracy": r.val_accuracy, "ci": list(r.ci), "seconds": r.seconds, "trainable_params": r.trainable_params,
            "behind_best": r.behind_best, "behind_best_ci": list(r.behind_best_ci), "tied_with_best": r.tied_with_best,
            "winner": r.winner, "epochs": r.epochs, "cv": result.get("selected", {}).get("cv_accuracy"),
            "selected": r.selected,
        }
    sim = p.similarity.score if p.similarity else None
    fc = {f.strategy: f.model_dump(mode="json") for f in rec.forecast.strategies} if rec.forecast else {}
    return {
        **cell, "backbone": res.backbone, "device": str(resolve_device(device)), "num_classes": len(p.classes),
        "train_images": p.train_images, "train_per_class_median": p.train_per_class_median,
        "train_per_class_min": p.train_per_class_min, "n_val": res.rows[0].n_val,
        "similarity": sim.value if sim else None, "similarity_ci": [sim.low, sim.high] if sim else None,
        "schedule_epochs": schedule, "schedule_share": round(min(1.0, cell["epochs_cap"] / schedule), 4) if cell["epochs_cap"] else 1.0,
        "strategies": strategies, "best": res.winner, "recommended": res.recommended, "regret_points": res.regret_points,
        "rule": "+".join(h.id for h in rec.hits if h.kind in ("quadrant", "override")), "forecast": fc,
        "recommend_seconds": res.recommend_seconds, "compare_seconds": res.compare_seconds,
        "load_before": load0, "load_after": load_average(), "wall_seconds": round(time.time() - t0, 1),
        "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "profile": p.model_dump(mode="json", exclude={"skipped", "exact_duplicates", "near_duplicates"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "records" / "cpu.jsonl"))
    ap.add_argument("--phases", default="kshot128,full128,seeds128,full64")
    ap.add_argument("--datasets", default=None, help="full-set phases [default: every shared set]")
    ap.add_argument("--kshot-datasets", default=",".join(KSHOT_DATASETS))
    ap.add_argument("--k", default=",".join(map(str, KS)))
    ap.add_argument("--epochs", type=int, default=8, help="the fine-tunes' epoch cap (the full224 phase runs the full schedule)")
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--hours", type=float, default=None, help="start no new cell after this long")
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "records"))
    ap.add_argument("--dry-run", action="store_true", help="list the cells still to run and stop")
    ap.add_argument("--data", default=str(SHARED), help="the folder holding the datasets [default: ../shared/data]")
    ap.add_argument("--device", default=None)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"{data} not found: the records are measured on the shared datasets")
    datasets = args.datasets.split(",") if args.datasets else sorted(
        p.name for p in data.iterdir() if p.is_dir() and p.name != "imagenet-sample")
    # training-split sizes decide which cells get 3 seeds; counted from the folders (a 20 % split when there is none)
    sizes = {}
    for d in datasets:
        root = data / d
        n = sum(1 for f in (root / "train" if (root / "train").is_dir() else root).rglob("*") if f.is_file())
        sizes[d] = n if (root / "train").is_dir() else int(0.8 * n)
    datasets = sorted(datasets, key=lambda d: sizes[d])  # small sets first: a session cut short still covers the range
    cells = plan_cells(args.phases.split(","), datasets, args.kshot_datasets.split(","),
                       [int(k) for k in args.k.split(",")], args.epochs, sizes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(out)
    todo = [c for c in cells if cell_key(c) not in done]
    print(f"{len(cells)} cells planned, {len(cells) - len(todo)} already recorded, {len(todo)} to run", flush=True)
    if args.dry_run:
        for c in todo:
            print(" ", c)
        return
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["ADVISOR_CACHE_DIR"] = str(cache)
    start = time.time()
    for c in todo:
        if args.hours is not None and time.time() - start > args.hours * 3600:
            print(f"stopping: {args.hours} h passed; {len(todo)} cells planned, rerun to continue", flush=True)
            break
        work = Path(tempfile.mkdtemp(prefix="records-"))
        try:
            row = run_cell(c, work=work, cache=cache, sample_size=args.sample_size, data=data, device=args.device,
                           backbone=args.backbone)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with open(out, "a") as fh:  # one whole line per finished cell
            fh.write(json.dumps(row) + "\n")
        accs = " ".join(f"{s}={v['accuracy']:.3f}" for s, v in row["strategies"].items())
        print(f"{c['dataset']} k={c['k']} {c['input_size']}px seed={c['seed']}: {accs} best={row['best']} "
              f"rec={row['recommended']} ({row['wall_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()


PROBES_FILE = "probes_remeasured.jsonl"  # benchmarks/remeasure_probes.py: the probes with today's recipe
COST_ORDER = ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")  # ties go to the cheaper, as compare does


def _half_width(p: float, q: float, n: int) -> float:
    """95 % half-width of the difference of two accuracies on the same n images, were they independent."""
    return 1.96 * math.sqrt(max(p * (1 - p) + q * (1 - q), 1e-12) / max(n, 1))


def paired_ratio(cells: list[dict]) -> float:
    """Median of (the record's paired 95 % half-width) / (the independent one) over every recorded pair:
    how much narrower pairing made the intervals, applied where a pair can no longer be formed."""
    ratios = []
    for c in cells:
        s = c["strategies"]
        best = s[c["best"]]["accuracy"]
        for v in s.values():
            lo, hi = v.get("behind_best_ci") or (0.0, 0.0)
            free = _half_width(best, v["accuracy"], c["n_val"])
            if hi > lo and free > 0:
                ratios.append((hi - lo) / 200 / free)
    ratios.sort()
    return ratios[len(ratios) // 2] if ratios else 1.0


def add_remeasured_probes(cells: list[dict], files: list[Path]) -> None:
    """Replace each cell's probe accuracies by those remeasure_probes.py measured with today's recipe, and
    work out again which strategy is best and which are tied with it.

    Ties as compare decides them (the paired 95 % interval behind the best reaches 0): between the two
    probes, paired on their per-image hits; a fine-tune against the fine-tune the record found best, as
    recorded; any other pair (the fine-tunes' per-image hits were not kept), the independent interval
    narrowed by the record's median paired/independent ratio. The recorded values stay under
    ``recorded_probes``; the probes' seconds are the recorded ones (the recipe did not change their cost).
    A fine-tune's recorded interval is reused only against the fine-tune the record found best: against a
    probe whose accuracy changed it is stale.
    """
    found = keyed_lines(files, lambda h: tuple(h["key"]))
    if not found:
        return
    ratio = paired_ratio(cells)
    for c in cells:
        h = found.get(tuple(cell_key(c)))
        if not h or c.get("recorded_probes"):
            continue
        old = {n: dict(c["strategies"][n]) for n in COST_ORDER}
        new = {n: dict(v) for n, v in c["strategies"].items()}
        for n in COST_ORDER[:2]:
            new[n].update(accuracy=h[n]["accuracy"], cv=h[n]["cv"])
        best = max(COST_ORDER, key=lambda n: (new[n]["accuracy"], -COST_ORDER.index(n)))
        for n in COST_ORDER:
            new[n]["winner"] = n == best
            diff = new[best]["accuracy"] - new[n]["accuracy"]
            if n == best:
                new[n].update(tied_with_best=False, behind_best=0.0, behind_best_ci=[0.0, 0.0])
                continue
            if n in COST_ORDER[:2] and best in COST_ORDER[:2]:
                a = torch.tensor([int(ch) for ch in h[best]["correct"]])
                b = torch.tensor([int(ch) for ch in h[n]["correct"]])
                _, lo, hi = paired_bootstrap(a, b, seed=c.get("seed", 0))
            elif n in COST_ORDER[2:] and best in COST_ORDER[2:] and best == c["best"]:  # both as recorded
                lo, hi = (v / 100 for v in old[n]["behind_best_ci"])
            else:
                half = ratio * _half_width(new[best]["accuracy"], new[n]["accuracy"], c["n_val"])
                lo, hi = diff - half, diff + half
            new[n].update(tied_with_best=lo <= 0, behind_best=round(100 * diff, 3),
                          behind_best_ci=[round(100 * lo, 3), round(100 * hi, 3)])
        c["recorded_probes"] = {n: {k: old[n][k] for k in ("accuracy", "cv") if k in old[n]} for n in COST_ORDER[:2]}
        c["recorded_best"] = c["best"]
        c["strategies"], c["best"] = new, best
