"""Calibrating a fine-tune whose validation split is too small to fit a temperature on.

    python benchmarks/finetune_small_calibration.py DATASET... [--seeds 3] [--per-class 20]
        [--strategies full-finetune] [--held 40] [--json F]
    python benchmarks/finetune_small_calibration.py --analyse F

Temperature scaling (strategies/temperature.py) needs 20 validation images; a folder of 2-4 classes x 20
images carves 8-16, so its fine-tune keeps the recipe's probabilities, and the recipe (label smoothing, an
average of its weights) leaves a fine-tune underconfident (docs/temperature.jsonl: fitted temperatures
0.41-0.85 in 14 of 15 kept). Each scenario draws C classes (2, 3 or 4 by seed) and K images per class from a
shared set (seeded), writes them as a plain class-folder dataset (the runner carves its usual 20 %
validation split), trains the strategy exactly as ``advisor run --strategy`` does, and keeps the raw
logits of its small validation split and of up to ``--held`` other images per class of those classes.
Rows (with the logits, rounded) are appended as they finish; a rerun skips those done.

``--analyse`` scores candidate rules for the temperature on the held-out images (log-loss, ECE 15 bins):
as trained; the shipped fit on the small split (with and without its cross-fitted check); one temperature
from the other datasets' runs (the one with their lowest held-out log-loss); and the small split's fit under a
prior centred there. The rule is chosen leave-one-dataset-out (the lowest mean held-out log-loss on the other
sets) and its error is reported on the set left out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import advisor
from advisor.backbones.classifier import load_classifier
from advisor.core.stats import expected_calibration_error
from advisor.data.scan import scan_dataset
from advisor.execute.predict import forward_batches
from strategies import temperature as tmod


def draw(dataset: str, n_classes: int, per_class: int, held: int, seed: int):
    """(class names, {class: training paths}, {class: held-out paths}), every split of the set pooled."""
    scan = scan_dataset(dataset)
    by_class: dict[int, list[str]] = {}
    for s in scan.samples:
        by_class.setdefault(s.label, []).append(s.path)
    rng = random.Random(f"{Path(dataset).name}-{seed}")
    labels = sorted(c for c, v in by_class.items() if len(v) > per_class)
    chosen = sorted(rng.sample(labels, min(n_classes, len(labels))))
    train, rest = {}, {}
    for c in chosen:
        paths = sorted(by_class[c])
        rng.shuffle(paths)
        train[scan.classes[c]], rest[scan.classes[c]] = paths[:per_class], paths[per_class:per_class + held]
    return train, rest


def scenario(dataset: str, strategy: str, *, n_classes: int, per_class: int, held: int, seed: int) -> dict:
    train, rest = draw(dataset, n_classes, per_class, held, seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for name, paths in train.items():
            (data / name).mkdir(parents=True)
            for i, p in enumerate(paths):
                os.symlink(p, data / name / f"{i:03d}{Path(p).suffix}")
        out = advisor.run(dataset=data, strategy=strategy, runs_dir=Path(tmp) / "runs", seed=0)
        r = out.result
        t = r.calibration.temperature if r.calibration and r.calibration.applied else 1.0
        model, card = load_classifier(out.run_dir)
        classes = list(card.classes)
        paths = [(p, classes.index(name)) for name, ps in rest.items() for p in ps]
        logits = torch.zeros(len(paths), len(classes))
        for pos, z, _ in forward_batches(model, [p for p, _ in paths], batch_size=64):
            logits[pos] = z.float()
        logits = logits * card.metrics.get("temperature", 1.0)
    return {"dataset": Path(dataset).name, "strategy": strategy, "seed": seed, "classes": len(train),
            "per_class": per_class, "n_val": len(r.val_labels), "seconds": round(r.seconds, 1),
            "val_accuracy": r.metrics.val_accuracy,
            "val_logits": [[round(v, 3) for v in row] for row in (r.val_logits.float() * t).tolist()],
            "val_labels": r.val_labels.tolist(),
            "held_logits": [[round(v, 3) for v in row] for row in logits.tolist()],
            "held_labels": [y for _, y in paths]}


# ---- the analysis: candidate rules for T, chosen leave-one-dataset-out ----

def _tensors(row: dict, part: str):
    return torch.tensor(row[f"{part}_logits"], dtype=torch.float64), torch.tensor(row[f"{part}_labels"])


def nll(z, y, t: float) -> float:
    return float(F.cross_entropy(z / t, y))


def oracle_t(row: dict) -> float:
    """The held-out images' own best temperature (plain fit): what a perfect rule would use."""
    z, y = _tensors(row, "held")
    grid = torch.linspace(math.log(0.05), math.log(20), 801, dtype=torch.float64).tolist()
    return math.exp(min(grid, key=lambda u: nll(z, y, math.exp(u))))


def record_t(rows: list[dict], leave_out: set[str]) -> float:
    """One temperature from other datasets' runs: the T with the lowest held-out log-loss, each set weighted equally
    (a grid over log T). A set whose held-out images are all right would drive a per-set optimum to the grid's end,
    so the sets' log-losses are pooled rather than their optima averaged."""
    per_set: dict[str, list[tuple]] = {}
    for r in rows:
        if r["dataset"] not in leave_out:
            per_set.setdefault(r["dataset"], []).append(_tensors(r, "held"))
    key = (tuple(sorted(per_set)), len(rows))
    if key not in _RECORD_MEMO:
        grid = torch.linspace(math.log(0.05), math.log(20), 241, dtype=torch.float64).tolist()
        _RECORD_MEMO[key] = math.exp(min(grid, key=lambda u: statistics.mean(
            statistics.mean(nll(z, y, math.exp(u)) for z, y in runs) for runs in per_set.values())))
    return _RECORD_MEMO[key]


_RECORD_MEMO: dict = {}


def rule_t(rule: str, row: dict, rows: list[dict], leave_out: set[str]) -> float:
    z, y = _tensors(row, "val")
    if rule == "as trained":
        return 1.0
    if rule == "shipped fit + check":  # the >= 20-image rule applied to the small split
        c = tmod.calibrate(z.float(), y, min_images=2)
        return c.temperature if c.applied else 1.0
    if rule == "shipped fit":  # what strategies/temperature.py does with a full fine-tune's 8-19 validation images
        return tmod.calibrate(z.float(), y, min_images=2, check=False).temperature
    t0 = record_t(rows, leave_out)
    if rule == "record T":
        return t0
    if rule == "fit, prior at record T":
        return tmod.fit_temperature(z / t0, y) * t0  # log T ~ N(log t0, sigma): the same fit on rescaled logits
    raise ValueError(rule)


RULES = ["as trained", "shipped fit + check", "shipped fit", "record T", "fit, prior at record T"]


def analyse(rows: list[dict]) -> None:
    for r in rows:
        r["oracle_t"] = oracle_t(r)
    sets = sorted({r["dataset"] for r in rows})
    if len(sets) < 3:
        print(f"{len(sets)} dataset(s) so far: leave-one-dataset-out needs 3 or more")
        return
    scores: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (rule, held-out set) -> [(nll, ece)] on that set

    def score(rule: str, row: dict, leave_out: set[str]) -> tuple[float, float]:
        z, y = _tensors(row, "held")
        t = rule_t(rule, row, rows, leave_out)
        return nll(z, y, t), expected_calibration_error((z / t).float(), y)

    print(f"{'dataset':14s} {'runs':>4s} {'oracle T':>8s} " + " ".join(f"{name[:22]:>22s}" for name in RULES))
    for d in sets:
        mine = [r for r in rows if r["dataset"] == d]
        cells = []
        for rule in RULES:
            s = [score(rule, r, {d}) for r in mine]
            scores[(rule, d)] = s
            cells.append(f"{statistics.mean(v[0] for v in s):>10.3f} {100 * statistics.mean(v[1] for v in s):>5.1f} %  ")
        t = math.exp(statistics.mean(math.log(r["oracle_t"]) for r in mine))
        print(f"{d:14s} {len(mine):>4d} {t:>8.2f} " + " ".join(f"{c:>22s}" for c in cells))
    allrows = len(rows)
    print(f"\nmean over {allrows} runs (log-loss, ECE), each set's record T from the other sets:")
    for rule in RULES:
        s = [v for d in sets for v in scores[(rule, d)]]
        worse = sum(a[0] > b[0] + 1e-9 for d in sets for a, b in zip(scores[(rule, d)], scores[("as trained", d)]))
        print(f"  {rule:24s} log-loss {statistics.mean(v[0] for v in s):.3f}  ECE {100 * statistics.mean(v[1] for v in s):5.1f} %"
              f"  worse than as trained in {worse} of {len(s)}")
    for rule in ("shipped fit",):
        pairs = [(r["n_val"], a[0], b[0]) for d in sets for r, a, b in
                 zip([r for r in rows if r["dataset"] == d], scores[("as trained", d)], scores[(rule, d)])]
        for n in sorted({p[0] for p in pairs}):
            mine = [p for p in pairs if p[0] == n]
            print(f"  {rule}, {n:2d} validation images ({len(mine)} runs): log-loss {statistics.mean(p[1] for p in mine):.3f} -> "
                  f"{statistics.mean(p[2] for p in mine):.3f}")
        print(f"  {rule}: worst change against as trained {max(p[2] - p[1] for p in pairs):+.3f} nats")
    # leave one dataset out: choose the rule on the other sets (their record T leaving out the chosen-on set too)
    chosen, held = [], []
    for d in sets:
        others = [o for o in sets if o != d]

        def on_others(rule: str) -> float:
            return statistics.mean(score(rule, r, {r["dataset"], d})[0] for r in rows if r["dataset"] in others)

        best = min(RULES, key=on_others)
        chosen.append(best)
        held += scores[(best, d)]
    print(f"\nleave-one-dataset-out: chosen {', '.join(f'{c} ({chosen.count(c)})' for c in dict.fromkeys(chosen))}; "
          f"held-out log-loss {statistics.mean(v[0] for v in held):.3f}, ECE {100 * statistics.mean(v[1] for v in held):.1f} %")
    print(f"record T over all sets (what would ship): {record_t(rows, set()):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--held", type=int, default=40)
    ap.add_argument("--strategies", default="full-finetune")
    ap.add_argument("--json", type=Path, default=Path("finetune_small_calibration.jsonl"))
    ap.add_argument("--analyse", type=Path, default=None)
    args = ap.parse_args()
    if args.analyse:
        rows = [json.loads(line) for line in args.analyse.read_text().splitlines() if line.strip()]
        for strategy in dict.fromkeys(r["strategy"] for r in rows):
            print(f"== {strategy}")
            analyse([r for r in rows if r["strategy"] == strategy])
        return
    done = set()
    if args.json.exists():
        done = {(r["dataset"], r["strategy"], r["seed"]) for r in map(json.loads, args.json.read_text().splitlines())}
    for seed in range(args.seeds):  # seeds outermost: a stopped sweep has every set at the same depth
        for ds in args.datasets:
            for strategy in args.strategies.split(","):
                if (Path(ds).name, strategy, seed) in done:
                    continue
                row = scenario(ds, strategy, n_classes=(2, 3, 4)[seed % 3], per_class=args.per_class, held=args.held,
                               seed=seed)
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{row['dataset']:14s} {strategy} seed {seed}: {row['classes']} classes, {row['n_val']} validation, "
                      f"val acc {row['val_accuracy']:.3f}, {row['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
