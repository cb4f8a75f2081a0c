"""Executable transfer-learning strategies, registered under stable names.

``linear-probe`` and ``layer-probe`` (strategies/linear.py) train linear classifiers on cached
features; ``partial-finetune`` and ``full-finetune`` (strategies/finetune.py) share one
training loop built from the pieces in strategies/training.py.
"""

from strategies import linear  # noqa: F401  (registers linear-probe, layer-probe)
from strategies.base import get_strategy, register_strategy, strategy_names

from strategies import finetune  # noqa: F401  (registers partial-finetune, full-finetune)

__all__ = ["get_strategy", "register_strategy", "strategy_names"]
