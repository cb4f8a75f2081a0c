"""Do the run's probabilities mean what they say? Calibration error before and after temperature scaling.

    python benchmarks/temperature_check.py [DATASET ...] [--strategies linear-probe,full-finetune]
        [--input-size 128] [--epochs 8] [--per-class K] [--out temperature.jsonl] [--logits DIR]
    python benchmarks/temperature_check.py --recompute --out temperature.jsonl --logits DIR
    python benchmarks/temperature_check.py --simulate

Every run fits one temperature on its validation split (strategies/temperature.py) and keeps it only
where held-out folds of that split say it lowers the log-loss. For each dataset and strategy this
runs the plan `advisor recommend` makes for that strategy and prints:

* the expected calibration error (ECE, 15 bins) and log-loss on validation, as trained and
  temperature-scaled, the latter cross-fitted (each fifth scored with the temperature fitted on the other four);
* where the dataset has a test split, the same two figures on it, where nothing was fitted: the
  honest check of the rule.

The raw (uncalibrated) validation and test logits of every run are kept in ``--logits`` so that
``--recompute`` re-derives every row with the current rule without training again. ``--per-class K``
cuts each training split to K images per class first (seeded; validation and test kept), the small-data
end users often have. Rows are appended to ``--out`` as they finish and a rerun skips the rows already
there, so a long sweep can be stopped and continued.

``--simulate``: 450 settings (validation images 20-500, 2-20 classes, three accuracy levels, true
temperatures 0.5-3, two draws each) with labels drawn from known probabilities; prints the test
log-loss regret against the best temperature of: no calibration, the unregularised fit, and the
shipped rule.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from suite import default_datasets
from sweeps import subsample

import advisor
from advisor.backbones.classifier import load_classifier
from advisor.data.scan import scan_dataset
from advisor.decide.advise import recommend_once
from advisor.execute.predict import forward_batches
from strategies.temperature import calibrate


def _raw_test_logits(run_dir: str, dataset: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The saved classifier's test-split logits with its temperature multiplied back out."""
    scan = scan_dataset(dataset)
    test = scan.split("test")
    if not test:
        return None
    model, card = load_classifier(run_dir)
    logits, labels = [], []
    for pos, out, _ in forward_batches(model, [s.path for s in test], batch_size=64):
        if out is not None:
            logits.append(out)
            labels += [test[n].label for n in pos]
    return torch.cat(logits) * card.metrics.get("temperature", 1.0), torch.tensor(labels)


def train(dataset: str, strategy: str, *, input_size: int, epochs: int | None, device: str | None) -> dict:
    plan = recommend_once(dataset, device=device, similarity=False, force_strategy=strategy, epochs_cap=epochs,
                          input_size=input_size).plan
    with tempfile.TemporaryDirectory() as runs:
        out = advisor.run(plan=plan, dataset=dataset, runs_dir=runs, device=device)
        r = out.result
        temperature = r.calibration.temperature if r.calibration else 1.0
        saved = {"val": (r.val_logits.float() * temperature, r.val_labels), "test": _raw_test_logits(out.run_dir, dataset),
                 "val_accuracy": r.metrics.val_accuracy, "seconds": r.seconds}
    return saved


def row_from(saved: dict) -> dict:
    """One table row from a run's raw logits, with the current rule."""
    val_logits, val_y = saved["val"]
    c = calibrate(val_logits, val_y)
    row = {"n_val": len(val_y), "val_accuracy": saved["val_accuracy"], "applied": c.applied, "temperature": c.temperature,
           "val_ece_before": c.ece_before, "val_ece_after": c.ece_after, "val_nll_before": c.nll_before,
           "val_nll_after": c.nll_after, "seconds": saved["seconds"]}
    if saved.get("test") is not None:
        from advisor.core.stats import expected_calibration_error

        z, y = saved["test"]
        row.update(n_test=len(y), test_ece_before=round(expected_calibration_error(z, y), 5),
                   test_ece=round(expected_calibration_error(z / c.temperature, y), 5),
                   test_nll_before=round(float(F.cross_entropy(z.double(), y)), 5),
                   test_nll=round(float(F.cross_entropy(z.double() / c.temperature, y)), 5))
    return row


def show(row: dict) -> str:
    kept = f"T {row['temperature']:.2f}" if row["applied"] else "left  "
    line = (f"{row['dataset']:18s} {row['strategy']:14s} {row['n_val']:4d} {kept}  val ECE {100 * row['val_ece_before']:4.1f} -> "
            f"{100 * row['val_ece_after']:4.1f} %  NLL {row['val_nll_before']:.3f} -> {row['val_nll_after']:.3f}")
    if "n_test" in row:
        line += (f" | test ({row['n_test']}) ECE {100 * row['test_ece_before']:4.1f} -> {100 * row['test_ece']:4.1f} %  "
                 f"NLL {row['test_nll_before']:.3f} -> {row['test_nll']:.3f}")
    return line


def summary(rows: list[dict], strategies: list[str]) -> None:
    for strategy in strategies:
        mine = [r for r in rows if r["strategy"] == strategy]
        if not mine:
            continue
        print(f"{strategy}: temperature kept on {sum(r['applied'] for r in mine)} of {len(mine)}; median validation ECE "
              f"{100 * statistics.median(r['val_ece_before'] for r in mine):.1f} -> "
              f"{100 * statistics.median(r['val_ece_after'] for r in mine):.1f} % (cross-fitted); log-loss lower on "
              f"{sum(r['val_nll_after'] < r['val_nll_before'] for r in mine)} of {len(mine)}")
        tested = [r for r in mine if "n_test" in r]
        if tested:
            print(f"  test splits ({len(tested)}): ECE " + ", ".join(
                f"{r['dataset']} {100 * r['test_ece_before']:.1f} -> {100 * r['test_ece']:.1f} %" for r in tested)
                + f"; log-loss lower or equal on {sum(r['test_nll'] <= r['test_nll_before'] for r in tested)} of {len(tested)}")


def simulate() -> None:
    def nll(z, y):
        return float(F.cross_entropy(z.double(), y))

    def unregularised(z, y):  # the plain maximum-likelihood temperature: a fine grid over log T
        grid = torch.linspace(-math.log(20), math.log(20), 801, dtype=torch.float64).tolist()
        return math.exp(-min(grid, key=lambda u: nll(z * math.exp(u), y)))

    regret: dict[str, list[float]] = {"none": [], "unregularised fit": [], "shipped rule": []}
    worse = dict.fromkeys(regret, 0)
    for n, k, scale, t0, rep in itertools.product([20, 40, 80, 200, 500], [2, 5, 20], [1.5, 4, 8], [0.5, 0.8, 1.0, 1.5, 3.0],
                                                  range(2)):
        g = torch.Generator().manual_seed(hash((n, k, scale, t0, rep)) % 2**31)

        def draw(m):
            z = torch.randn(m, k, generator=g) * scale
            return z * t0, torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)

        (z, y), (zt, yt) = draw(n), draw(3000)
        base = nll(zt, yt)
        best = min(base, nll(zt / unregularised(zt, yt), yt))
        c = calibrate(z, y)
        for name, value in (("none", base), ("unregularised fit", nll(zt / unregularised(z, y), yt)),
                            ("shipped rule", nll(zt / c.temperature, yt))):
            regret[name].append(value - best)
            worse[name] += value > base + 0.01
    for name, values in regret.items():
        v = torch.tensor(values)
        print(f"{name:18s} test log-loss regret: mean {v.mean():.4f}, 90th percentile {v.quantile(0.9):.4f}, "
              f"max {v.max():.3f} nats; worse than no calibration (> 0.01) in {worse[name]} of {len(values)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help="default: every shared dataset")
    ap.add_argument("--strategies", default="linear-probe,full-finetune")
    ap.add_argument("--input-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=Path("temperature.jsonl"))
    ap.add_argument("--logits", type=Path, default=Path("temperature-logits"))
    ap.add_argument("--recompute", action="store_true", help="re-derive every row of --out from --logits")
    ap.add_argument("--simulate", action="store_true")
    args = ap.parse_args()
    if args.simulate:
        simulate()
        return
    strategies = args.strategies.split(",")
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()] if args.out.exists() else []
    if args.recompute:
        rows = [{"dataset": r["dataset"], "strategy": r["strategy"],
                 **row_from(torch.load(args.logits / f"{r['dataset']}-{r['strategy']}.pt", weights_only=True))}
                for r in rows]
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for row in rows:
        print(show(row), flush=True)
    done = {(r["dataset"], r["strategy"]) for r in rows}
    args.logits.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for ds in [] if args.recompute else args.datasets or default_datasets():
            name = Path(ds).name + (f"@{args.per_class}" if args.per_class else "")
            for strategy in strategies:
                if (name, strategy) in done:
                    continue
                path = (str(subsample(ds, args.per_class, Path(tmp) / name, keep_splits=("val", "test")))
                        if args.per_class else ds)
                saved = train(path, strategy, input_size=args.input_size, epochs=args.epochs, device=args.device)
                torch.save(saved, args.logits / f"{name}-{strategy}.pt")
                row = {"dataset": name, "strategy": strategy, **row_from(saved)}
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
                print(show(row), flush=True)
    summary(rows, strategies)


if __name__ == "__main__":
    main()
