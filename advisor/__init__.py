"""advisor: measure a dataset, place it in the transfer-learning 2x2 table, run the advice.

The pipeline's stages, one package each (docs/architecture.md): ``data`` -> ``backbones`` ->
``measure`` -> ``decide`` -> ``strategies`` (top level) -> ``report`` -> ``execute`` -> ``cli``.
"""

from advisor.core.machine import apply_shared_cpu_policy as _apply_shared_cpu_policy

__version__ = "0.1.0"

# Before anything imports torch: OpenMP reads its wait policy when it loads.
_apply_shared_cpu_policy()
del _apply_shared_cpu_policy
