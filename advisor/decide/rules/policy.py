"""The decision policy: which strategy runs when the 2x2 table and the forecast disagree, in one sentence.

Three policies are defined so that ``benchmarks/policy.py`` can compare them leave one dataset out
on the track record; :data:`DEFAULT_POLICY` is the one that comparison chose.

* ``table``: the 2x2 table (with its overrides) decides; the forecast is shown beside it.
* ``forecast``: the strategy with the best forecast, except that the cheapest strategy whose
  forecast lies within one standard error of the best wins (a difference the forecast cannot
  resolve is not worth the extra time).
* ``hybrid``: the forecast decides the row (probe or fine-tune, one-standard-error rule toward
  the probe), the table's similarity column decides which probe or which fine-tune.
* ``best-forecast``: the highest forecast, no tie-break (what the forecast alone would say).
* ``per-setting``: ``hybrid`` below :data:`PER_SETTING_BOUNDARY` training images per class (median),
  ``best-forecast`` from there up. Below 20 per class the forecast rests on a probe CV of a handful
  of images, too noisy to rank four strategies by their best forecast (one wrong pick cost up to 27
  points); asking it only probe or fine-tune, with a one-standard-error margin toward the probe, and
  letting the similarity column pick which, halves the worst case. From 20 up the forecast is close
  enough to rank them. The boundary and the two policies are what benchmarks/policy.py picks on the
  track record (lowest total regret); chosen nested, leave one dataset out (for each held-out dataset
  on the other ten alone), the procedure scores mean regret 1.42 and max 12.4 against best-forecast's
  1.48 and 27.0; six of eleven folds pick exactly this rule, two more differ above 20 only.

Whatever decides, :attr:`Decision.sentence` says what the table said, what the forecast said,
which one chose and why, with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel

from advisor.decide.models import Decision

PolicyName = Literal["table", "forecast", "hybrid", "best-forecast", "per-setting"]
POLICIES: tuple[str, ...] = ("table", "forecast", "hybrid", "best-forecast", "per-setting")
DEFAULT_POLICY: PolicyName = "per-setting"
PER_SETTING_BOUNDARY = 20  # training images per class (median): below it hybrid, from it up best-forecast
PER_SETTING = ("hybrid", "best-forecast")
COST_ORDER = ("linear-probe", "layer-probe", "partial-finetune", "full-finetune")
PROBES = COST_ORDER[:2]
# the table's column -> (its probe, its fine-tune)
COLUMN = {"similar": ("linear-probe", "partial-finetune"), "different": ("layer-probe", "full-finetune")}


class StrategyView(BaseModel):
    """What the policy reads of one strategy's forecast: accuracy, its standard error, its time."""

    strategy: str
    accuracy: float
    sd: float
    seconds: float | None = None
    gain_sd: float | None = None  # fine-tunes: the error of the gain over the probe alone

    def se_against(self, other: StrategyView) -> float:
        """The standard error that separates this forecast from ``other``'s.

        A fine-tune's forecast is a probe's plus a gain, so against a probe only the gain's error
        counts; otherwise this forecast's own.
        """
        if self.gain_sd is not None and other.strategy in PROBES:
            return self.gain_sd
        return self.sd


def views(forecast) -> list[StrategyView]:
    """The policy's reading of a :class:`advisor.decide.forecast.Forecast` (None: nothing)."""
    if forecast is None:
        return []
    return [StrategyView(strategy=f.strategy, accuracy=f.accuracy, sd=f.sd, seconds=f.seconds, gain_sd=f.gain_sd)
            for f in forecast.strategies]


def _cost_key(v: StrategyView, timed: bool) -> tuple:
    return (v.seconds if timed else 0.0, COST_ORDER.index(v.strategy) if v.strategy in COST_ORDER else 99)


def one_se_choice(candidates: Sequence[StrategyView]) -> StrategyView | None:
    """The cheapest candidate whose forecast is within one standard error of the best forecast."""
    if not candidates:
        return None
    best = max(candidates, key=lambda v: v.accuracy)
    timed = all(v.seconds is not None for v in candidates)
    close = [v for v in candidates if v.accuracy >= best.accuracy - best.se_against(v)]
    return min(close, key=lambda v: _cost_key(v, timed))


def forecast_choice(fc: Sequence[StrategyView]) -> StrategyView | None:
    return one_se_choice(fc)


def hybrid_choice(fc: Sequence[StrategyView], column: str) -> StrategyView | None:
    """The forecast picks probe or fine-tune (the best of each, one-SE rule toward the probe); the column picks which."""
    by = {v.strategy: v for v in fc}
    probe_name, finetune_name = COLUMN[column]
    probe, finetune = by.get(probe_name), by.get(finetune_name)
    if probe is None or finetune is None:
        return probe or finetune
    # Within one standard error the probe, the cheaper row, wins.
    if finetune.accuracy > probe.accuracy + finetune.se_against(probe):
        return finetune
    # The layer probe sweeps earlier taps; where the profile's CV put none ahead of pre_logits its forecast is the
    # linear probe's, and the linear probe costs less for the same forecast.
    linear = by.get("linear-probe")
    return linear if probe.strategy == "layer-probe" and linear is not None and linear.accuracy >= probe.accuracy else probe


def resolve(policy: str, per_class: float | None) -> str:
    """The policy that decides for a dataset of ``per_class`` training images per class (``per-setting`` dispatches;
    without a size it is best-forecast)."""
    if policy != "per-setting":
        return policy
    return PER_SETTING[0] if per_class is not None and per_class < PER_SETTING_BOUNDARY else PER_SETTING[1]


def choose(policy: str, *, table: str, column: str, fc: Sequence[StrategyView],
           per_class: float | None = None) -> tuple[str, str | None]:
    """(the strategy the policy runs, the forecast's own choice); without a forecast the table decides."""
    policy = resolve(policy, per_class)
    own = forecast_choice(fc)
    if policy == "table" or not fc:
        return table, own.strategy if own else None
    if policy == "forecast":
        return (own.strategy if own else table), own.strategy if own else None
    if policy == "hybrid":
        pick = hybrid_choice(fc, column)
        return (pick.strategy if pick else table), own.strategy if own else None
    if policy == "best-forecast":
        top = max(fc, key=lambda v: (v.accuracy, -COST_ORDER.index(v.strategy) if v.strategy in COST_ORDER else 0))
        return top.strategy, own.strategy if own else None
    raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def decide(policy: str, *, table: str, table_rule: str, column: str, forecast=None,
           reason_hint: str | None = None, per_class: float | None = None) -> Decision:
    """Apply ``policy`` (for a dataset of ``per_class`` training images per class) and say in one sentence
    which source decided and why."""
    fc = views(forecast)
    named, policy = policy, resolve(policy, per_class)
    chosen, own = choose(policy, table=table, column=column, fc=fc)
    by = {v.strategy: v for v in fc}
    if not fc:
        sentence = f"the table says {table} ({table_rule}); no forecast could be made, so the table decides."
        return Decision(policy=named, table=table, table_rule=table_rule, forecast_best=None, chosen=table, agree=True,
                        sentence=sentence)
    best = max(fc, key=lambda v: v.accuracy)
    agree = chosen == table and (own is None or own == table)
    if agree:
        sentence = f"the table ({table_rule}) and the forecast agree: {table}"
        if best.strategy != table and table in by:
            sentence += (f"; {best.strategy} is forecast {_pts(best.accuracy - by[table].accuracy)} points, within one "
                         f"standard error ({100 * best.se_against(by[table]):.1f}), not worth its extra time")
        return Decision(policy=named, table=table, table_rule=table_rule, forecast_best=own, chosen=chosen, agree=True,
                        sentence=sentence + ".")
    other = own if chosen == table else chosen
    other = other if other != table else best.strategy
    parts = [f"the table says {table} ({table_rule})"]
    if other in by and table in by:
        a, b = by[table], by[other]
        diff, half = b.accuracy - a.accuracy, 1.2816 * math.hypot(a.sd, b.sd)
        cost = f" for {b.seconds / a.seconds:.1f}x the time" if a.seconds and b.seconds else ""
        parts.append(f"{other} is forecast {_pts(diff)} points [80 % {_pts(diff - half)}, {_pts(diff + half)}]{cost}")
    if chosen == table:
        why = reason_hint or {"table": "the table decides under the 'table' policy",
                              "best-forecast": "it has the best forecast",
                              "hybrid": "the forecast does not put a fine-tune of its column more than one standard "
                                        "error ahead of its probe" if table in PROBES else
                                        "the forecast puts the fine-tune more than one standard error ahead of the probe",
                              "forecast": "it is the forecast's choice too"}[policy]
    elif policy == "hybrid":
        probe_view = by.get(COLUMN[column][0])
        finetune_view = by.get(COLUMN[column][1])
        se = finetune_view.se_against(probe_view) if finetune_view and probe_view else best.sd
        if chosen not in PROBES:
            why = (f"the forecast puts {chosen} more than one standard error of its gain ({100 * se:.1f} points) "
                   f"ahead of the column's probe")
        else:
            why = f"the fine-tune is not forecast more than one standard error of its gain ({100 * se:.1f} points) ahead of "
            why += (f"{chosen}, the cheaper row" if chosen == COLUMN[column][0] else
                    "the probes, and the linear probe is forecast level with the layer probe (no earlier tap ahead of "
                    "pre_logits in the profile's CV) for less time")
    elif policy == "best-forecast":
        why = "it has the best forecast"
    else:
        why = (f"the forecast decides: {chosen} is the cheapest strategy within one standard error "
               f"({100 * best.sd:.1f} points) of the best forecast")
    if named == "per-setting" and per_class is not None:
        b = PER_SETTING_BOUNDARY
        why += (f" (below {b} training images per class, here {per_class:g}; from {b} up, the best forecast decides)"
                if per_class < b else
                f", which decides from {b} training images per class (here {per_class:g})")
    parts.append(f"chosen: {chosen}, because {why}")
    return Decision(policy=named, table=table, table_rule=table_rule, forecast_best=own, chosen=chosen, agree=False,
                    sentence="; ".join(parts) + ".")
