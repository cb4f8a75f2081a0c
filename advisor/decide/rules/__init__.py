"""The decision rules: place a dataset in the CS231n 2x2 table and turn the placement into a plan.

The table (size x similarity to ImageNet) picks one of four strategies::

                 similar                        very different
    small        linear-probe on pre_logits     layer-probe over earlier taps
    large        partial-finetune (top stages)  full-finetune (all stages)

Every decision is a :class:`Rule` in :data:`RULES`, evaluated in that fixed order:

1. quadrant rules R1-R4 (exactly one fires) set the strategy;
2. override rules R5, R18, R6, R7 (at most one fires) replace it when the table's answer is unsafe
   (R15 and R16 are retired: a rule's ``retired`` note says why, and it never fires);
3. modifier rules R8-R10 and R17 adjust the plan of whichever strategy was chosen;
4. warning rules R11-R14 change nothing in the plan but are reported.

A rule's ``rationale`` is a ``str.format`` template over :meth:`RuleContext.values`, so every
report cites the measured numbers next to the thresholds they were compared with. All
thresholds live in :class:`Thresholds`, calibrated on measured outcomes (benchmarks/calibrate.py).
"""

from __future__ import annotations

from advisor.decide.recipe import finetune_schedule
from advisor.decide.rules.context import RuleContext, place
from advisor.decide.rules.engine import boundaries, build_context, plan_for_strategy, recommend
from advisor.decide.rules.render import rules_markdown, thresholds_markdown
from advisor.decide.rules.table import RULES, Rule
from advisor.decide.rules.thresholds import Thresholds, frozen_stages_for, probe_sweep_taps

__all__ = [
    "RULES",
    "RuleContext",
    "Rule",
    "Thresholds",
    "boundaries",
    "build_context",
    "finetune_schedule",
    "frozen_stages_for",
    "probe_sweep_taps",
    "place",
    "plan_for_strategy",
    "recommend",
    "rules_markdown",
    "thresholds_markdown",
]
