"""Which backbone: each candidate measured on the profiling sample and forecast per strategy, ranked.

For every backbone asked for, the dataset is profiled on it (one extraction of the profiling
sample: k-NN accuracy and LogME per depth, the probes' cross-validated accuracy) and the
forecaster gives each strategy's accuracy and time on this device (the step timed per backbone).
The candidates are ranked by their best forecast; with a budget, the best (backbone, strategy)
pair whose forecast time fits it is chosen. Imports the stages below and advisor.decide.advise.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel

from advisor.core.errors import AdvisorError


class BackboneOption(BaseModel):
    backbone: str
    knn_accuracy: float | None  # the best depth's k-NN accuracy on the profiling sample
    logme: float | None  # pre_logits LogME on the profiling sample
    strategies: dict[str, tuple[float, float, float, float | None]]  # strategy -> (forecast, low, high, seconds)
    best_strategy: str
    best_accuracy: float
    fits_budget: bool | None = None


class BackboneRanking(BaseModel):
    options: list[BackboneOption]  # best forecast first
    chosen: str  # backbone of the plan that runs
    sentence: str


def option_of(rec) -> BackboneOption:
    ev = rec.profile.tap_evidence
    best_ev = max(ev, key=lambda e: (e.knn_accuracy, e.logme)) if ev else None
    top = next((e for e in ev if e.tap == "pre_logits"), None)
    strategies = {f.strategy: (f.accuracy, f.low, f.high, f.seconds) for f in (rec.forecast.strategies if rec.forecast else [])}
    best = max(strategies, key=lambda s: strategies[s][0]) if strategies else rec.strategy
    return BackboneOption(backbone=rec.profile.backbone, knn_accuracy=best_ev.knn_accuracy if best_ev else None,
                          logme=top.logme if top else None, strategies=strategies, best_strategy=best,
                          best_accuracy=strategies[best][0] if strategies else float("nan"))


def rank_backbones(recs: Sequence, *, budget_seconds: float | None = None) -> tuple[BackboneRanking, int]:
    """The ranking of the recommendations made on each backbone, and the index of the one whose plan runs."""
    if not recs:
        raise AdvisorError("no backbone to rank")
    return rank_options([option_of(r) for r in recs], budget_seconds=budget_seconds)


def rank_options(options: list[BackboneOption], *, budget_seconds: float | None = None) -> tuple[BackboneRanking, int]:
    """Best forecast first; the first option (the backbone asked for) keeps its plan unless a budget chooses the best
    (backbone, strategy) pair whose forecast time fits it."""
    order = sorted(range(len(options)), key=lambda i: -options[i].best_accuracy)
    chosen = 0
    if budget_seconds is not None:
        pairs = [(v[0], i, s) for i in range(len(options)) for s, v in options[i].strategies.items()
                 if v[3] is not None and v[3] <= budget_seconds]
        for i, o in enumerate(options):
            o.fits_budget = any(p[1] == i for p in pairs)
        if pairs:
            _, chosen, _ = max(pairs)
    best = options[order[0]]
    sentence = (f"best forecast: {best.backbone} with {best.best_strategy} ({best.best_accuracy:.3f}); "
                + (f"within the budget: {options[chosen].backbone}" if budget_seconds is not None
                   else f"the plan keeps {options[0].backbone} (give --budget to let time choose)"))
    return BackboneRanking(options=[options[i] for i in order], chosen=options[chosen].backbone, sentence=sentence), chosen
