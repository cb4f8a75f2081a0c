"""Run every strategy under one budget on the same split and backbone; measure the advice's regret."""

from __future__ import annotations

import datetime
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from advisor.backbones import create_backbone
from advisor.core import distributed
from advisor.core.errors import AdvisorError
from advisor.core.io import write_text_atomic
from advisor.core.stats import paired_bootstrap
from advisor.data.scan import DEFAULT_VAL_FRACTION
from advisor.decide.advise import recommend_once
from advisor.decide.models import STRATEGIES
from advisor.decide.rules import plan_for_strategy
from advisor.execute.runner import DEFAULT_RUNS_DIR, apply_overrides, run_plan
from strategies.results import CompareRow, Comparison


def check_strategies(strategies: Sequence[str] | None) -> list[str]:
    """The strategies to compare (default: all four); an unknown name is a one-line error."""
    names = list(strategies or STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise AdvisorError(f"unknown strategies {unknown}", hint=f"choose from {', '.join(STRATEGIES)}")
    return names


def compare(
    dataset: str | os.PathLike,
    *,
    strategies: Sequence[str] | None = None,
    backbone: str = "efficientnet_lite0",
    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR,
    input_size: int | None = None,
    epochs: int | None = None,
    sample_size: int = 300,
    seed: int = 0,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress=None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    batch_size: int | None = None,
) -> Comparison:
    """Recommend, then run each strategy (same split, backbone, input size and epoch cap) and rank them.

    The winner is the most accurate strategy (ties: fewer trained parameters); regret is the
    winner's validation accuracy minus the recommended strategy's, with a paired bootstrap
    interval over the validation images; a strategy whose interval behind the winner reaches 0
    is reported as tied with it (the data cannot separate them).
    """
    names = check_strategies(strategies)
    t0 = time.perf_counter()
    rec = recommend_once(dataset, backbone=backbone, sample_size=sample_size, seed=seed, device=device,
                         cache_dir=cache_dir, num_workers=num_workers, progress=progress, epochs_cap=epochs,
                         input_size=input_size, batch_size=batch_size, val_fraction=val_fraction)
    recommend_seconds = time.perf_counter() - t0
    if rec.strategy not in names:
        names.append(rec.strategy)  # regret needs the recommended strategy's own result
    taps = create_backbone(backbone).taps
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"compare-{re.sub(r'[^A-Za-z0-9_.-]+', '_', Path(dataset).resolve().name)}-{stamp}"
    base = Path(distributed.broadcast(str(base)))  # under DDP: rank 0's clock names the folder
    rows, predictions = [], {}
    t1 = time.perf_counter()
    for name in names:
        plan = plan_for_strategy(rec, name, taps=taps)
        cap = min(epochs, plan.recipe.epochs) if epochs and plan.recipe is not None else None
        plan = apply_overrides(plan, input_size=input_size, epochs=cap)  # the batch: already the recommendation's
        ts = time.perf_counter()
        out = run_plan(plan, dataset=dataset, run_dir=base / name, device=device, cache_dir=cache_dir,
                       num_workers=num_workers, progress=progress, recommendation=rec)
        r, m = out.result, out.result.metrics
        predictions[name] = r.predictions
        rows.append(CompareRow(
            strategy=name, val_accuracy=m.val_accuracy, ci=tuple(m.val_accuracy_ci), n_val=m.n_val,
            seconds=round(time.perf_counter() - ts, 2), trainable_params=r.trainable_params, total_params=r.total_params,
            input_size=plan.input_size, epochs=r.epochs_completed, run_dir=out.run_dir,
            selected={k: v for k, v in r.selected.items() if k in ("taps", "l2", "frozen_stages", "best_epoch", "epochs_run")},
        ))
    compare_seconds = time.perf_counter() - t1
    best = max(rows, key=lambda row: (row.val_accuracy, -row.trainable_params))
    recommended = next(row for row in rows if row.strategy == rec.strategy)
    correct = _paired_correct(predictions)
    for row in rows:
        row.winner = row is best
        row.recommended = row is recommended
        if row is not best:
            diff, lo, hi = paired_bootstrap(correct[best.strategy], correct[row.strategy], seed=seed)
            row.behind_best, row.behind_best_ci = round(100 * diff, 3), (round(100 * lo, 3), round(100 * hi, 3))
            row.tied_with_best = lo <= 0
    tied = [row.strategy for row in rows if row.tied_with_best and row is not best]
    if recommended is best:
        verdict = f"the recommended {rec.strategy} scored best"
    elif recommended.tied_with_best:
        verdict = (f"{best.strategy} scored best, but the recommended {rec.strategy} is tied with it on these "
                   f"{best.n_val} validation images: the regret interval includes 0")
    else:
        verdict = f"{best.strategy} beat the recommended {rec.strategy}: the regret interval excludes 0"
    if tied and recommended is best:
        verdict += f"; tied with it (the data cannot separate them): {', '.join(tied)}"
    result = Comparison(
        dataset=str(Path(dataset).resolve()), backbone=backbone, recommended=rec.strategy, winner=best.strategy,
        regret_points=round(100 * (best.val_accuracy - recommended.val_accuracy), 3),
        regret_ci=recommended.behind_best_ci, verdict=verdict, rows=rows,
        input_size=input_size, epochs_cap=epochs, recommend_seconds=round(recommend_seconds, 2),
        compare_seconds=round(compare_seconds, 2),
        recommend_cost_fraction=round(recommend_seconds / compare_seconds, 4) if compare_seconds else 0.0,
        saved_to=str(base / "compare.json"), recommendation=rec,
    )
    if not distributed.is_main():  # rank 0 writes
        return result
    write_text_atomic(base / "compare.json", result.model_dump_json(indent=2))
    from advisor.report.html import write_report_html  # the report module reads Comparison from here

    write_report_html(base)
    return result


def _paired_correct(predictions: dict[str, list]) -> dict[str, torch.Tensor]:
    """1/0 correctness per strategy on the validation images every strategy evaluated, in one order."""
    by_path = {name: {p: int(t == q) for p, t, q in rows} for name, rows in predictions.items()}
    common = sorted(set.intersection(*(set(v) for v in by_path.values()))) if by_path else []
    if not common:
        raise AdvisorError("the strategies share no evaluated validation image; nothing to compare",
                           hint="check that the validation images decode")
    return {name: torch.tensor([v[p] for p in common], dtype=torch.float64) for name, v in by_path.items()}
