"""The strategies stage: executable transfer-learning strategies, registered under stable names.

``linear-probe`` and ``layer-probe`` (strategies/linear.py) train linear classifiers on cached
features; ``partial-finetune`` and ``full-finetune`` (strategies/finetune.py) share one training
loop (strategies/loop.py) built from the pieces in strategies/training.py. Imports every advisor
stage up to ``advisor.decide``; ``advisor.report`` and ``advisor.execute`` import it.
"""

from advisor.core.errors import AdvisorError
from strategies import finetune, linear  # noqa: F401  (importing them registers the four strategies)
from strategies.base import _REGISTRY, Strategy, register_strategy

__all__ = ["get_strategy", "register_strategy", "strategy_names"]


def get_strategy(name: str) -> Strategy:
    """The registered strategy called ``name``; an unknown name is a one-line error listing the known ones."""
    if name not in _REGISTRY:
        raise AdvisorError(f"unknown strategy {name!r}", hint=f"choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def strategy_names() -> list[str]:
    """The registered strategies' names, sorted."""
    return sorted(_REGISTRY)
