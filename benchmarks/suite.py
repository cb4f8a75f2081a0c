"""The advice's track record: `recommend` and `compare` on every dataset, as markdown and JSON.

    python benchmarks/suite.py [DATASET ...] [--input-size 128] [--epochs 4] [--out docs/suite]
        [--backbone NAME] [--sample-size 300] [--strategies a,b] [--device cuda]

Default datasets: every folder of ../shared/data except the ImageNet sample. Per dataset: size,
similarity with its interval, quadrant, recommended strategy, best strategy, the accuracy of
every strategy, regret (best minus recommended, accuracy points) and the cost of `recommend`
as a fraction of `compare`. Writes OUT.md and OUT.json. On a CPU use a reduced --input-size
and an --epochs cap for the fine-tunes; on a GPU run at 224 px with the plans' epochs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from advisor.core.distributed import resolve_device
from advisor.decide.models import STRATEGIES
from advisor.execute.compare import compare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_datasets() -> list[str]:
    return [str(p) for p in sorted(SHARED.iterdir()) if p.is_dir() and p.name != "imagenet-sample"] if SHARED.is_dir() else []


def run_suite(datasets: list[str], *, input_size: int | None, epochs: int | None, backbone: str, sample_size: int,
              runs_dir: str, num_workers: int | None = None, device: str | None = None, on_row=None,
              strategies: list[str] | None = None) -> list[dict]:
    rows = []
    for path in datasets:
        res = compare(path, strategies=strategies, backbone=backbone, runs_dir=runs_dir, input_size=input_size, epochs=epochs,
                      sample_size=sample_size, num_workers=num_workers, device=device)
        rec = res.recommendation
        sim = rec.profile.similarity
        rows.append({
            "dataset": Path(path).name, "images": rec.profile.images_total, "train_images": rec.profile.train_images,
            "train_per_class_median": rec.profile.train_per_class_median,
            "similarity": sim.score.model_dump() if sim else None,
            "quadrant": f"{rec.size_class}, {rec.similarity_class}",
            "rule": "+".join(h.id for h in rec.hits if h.kind in ("quadrant", "override")),
            "recommended": res.recommended, "best": res.winner, "regret_points": res.regret_points,
            "regret_ci": list(res.regret_ci), "verdict": res.verdict,
            "tied_with_best": [r.strategy for r in res.rows if r.tied_with_best and not r.winner],
            "accuracy": {r.strategy: r.val_accuracy for r in res.rows},
            "ci": {r.strategy: list(r.ci) for r in res.rows},
            "seconds": {r.strategy: r.seconds for r in res.rows},
            "recommend_seconds": res.recommend_seconds, "compare_seconds": res.compare_seconds,
            "recommend_cost_fraction": res.recommend_cost_fraction,
            "input_size": input_size or 224, "epochs_cap": epochs, "device": str(resolve_device(device)),
            # the profile lets benchmarks/calibrate.py re-run the rules under other thresholds
            "profile": rec.profile.model_dump(mode="json"),
        })
        if on_row is not None:
            on_row(rows)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| dataset | images (train, median/class) | similarity [95% CI] | quadrant | recommended | best | "
            + " | ".join(STRATEGIES) + " | regret (points) | recommend / compare |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["similarity"]
        sim = f"{s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]" if s else "n/a"
        accs = " | ".join(f"{r['accuracy'][k]:.3f}" if k in r["accuracy"] else "" for k in STRATEGIES)
        lines.append(f"| {r['dataset']} | {r['images']} ({r['train_images']}, {r['train_per_class_median']:.0f}) | {sim} | "
                     f"{r['quadrant']} ({r['rule']}) | {r['recommended']} | {r['best']} | {accs} | {r['regret_points']:.2f} | "
                     f"{r['recommend_cost_fraction']:.1%} |")
    # A fine-tune starts from the linear probe's head (LP-FT): ending below the probe's accuracy by more
    # than the probe's interval would mean training made the model worse.
    worse = [f"{r['dataset']} {k} {r['accuracy'][k]:.3f} < {r['ci']['linear-probe'][0]:.3f}" for r in rows if "ci" in r
             for k in ("partial-finetune", "full-finetune") if k in r["accuracy"] and "linear-probe" in r["ci"]
             and r["accuracy"][k] < r["ci"]["linear-probe"][0]]
    if rows:
        lines += ["", "fine-tunes below the linear probe's 95 % interval (their warm start): " + ("; ".join(worse) or "none")]
        regrets = [r["regret_points"] for r in rows]
        lines += ["", f"mean regret {sum(regrets) / len(regrets):.2f} points (target <= 1.0), max {max(regrets):.2f} "
                      f"(target <= 3.0); recommend costs at most {max(r['recommend_cost_fraction'] for r in rows):.1%} "
                      "of compare (target <= 5%)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--sample-size", type=int, default=300)
    ap.add_argument("--out", default="docs/suite")
    ap.add_argument("--runs-dir", default=None, help="keep the runs here [default: a temporary folder]")
    ap.add_argument("--device", default=None)
    ap.add_argument("--strategies", default=None, help="comma-separated subset [default: all four; the recommended one always runs]")
    args = ap.parse_args()
    # a bare name ("eurosat") means the shared dataset of that name
    datasets = [str(SHARED / d) if not Path(d).exists() and (SHARED / d).is_dir() else d
                for d in args.datasets] or default_datasets()
    if not datasets:
        sys.exit("no datasets given and ../shared/data not found")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:  # after every dataset: a run cut short keeps what it finished
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        out.with_suffix(".md").write_text(markdown(rows))
        print(f"{rows[-1]['dataset']}: done", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        rows = run_suite(datasets, input_size=args.input_size, epochs=args.epochs, backbone=args.backbone,
                         sample_size=args.sample_size, runs_dir=args.runs_dir or tmp, device=args.device, on_row=save,
                         strategies=args.strategies.split(",") if args.strategies else None)
    print(markdown(rows))


if __name__ == "__main__":
    main()
