"""advisor: measure an image dataset, place it in the transfer-learning 2x2 table, run the advice.

The Python API (docs/api.md)::

    import advisor
    rec = advisor.recommend("path/to/images")        # profile, forecast, decide; nothing printed
    out = advisor.run("path/to/images")              # strategy="auto": the decision runs
    clf = advisor.load(out.run_dir)
    clf.predict("new_images/", top_k=3)

``profile``, ``recommend``, ``run``, ``resume``, ``compare``, ``load`` (-> ``Classifier``) and the
one error type, ``AdvisorError``, are loaded on first use, so ``import advisor`` stays cheap. The
pipeline's stages are one package each (docs/architecture.md).
"""

from advisor.core.machine import apply_shared_cpu_policy as _apply_shared_cpu_policy
from advisor.core.version import __version__

__all__ = ["AdvisorError", "Classifier", "compare", "load", "profile", "recommend", "resume", "run", "__version__"]

# Before anything imports torch: OpenMP reads its wait policy when it loads.
_apply_shared_cpu_policy()
del _apply_shared_cpu_policy


def __getattr__(name: str):
    if name in __all__:
        from advisor import api

        return getattr(api, name)
    raise AttributeError(f"module 'advisor' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
