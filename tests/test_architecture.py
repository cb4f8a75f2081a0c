"""The house keeps its shape: one package per pipeline stage, imports that only point down, no circle, no long module.

The graph is built from the source (``ast``), so an import inside a function counts as much as
one at the top of a module: a circle that only closes at call time is still a circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# The pipeline's stages, lowest first (docs/architecture.md): a module may import its own stage and
# those below it, never one above. `strategies/` is top level by design, between decide and report.
STAGES = ["advisor.core", "advisor.data", "advisor.backbones", "advisor.measure", "advisor.decide", "strategies",
          "advisor.report", "advisor.execute", "advisor.api", "advisor.cli"]


def _modules() -> dict[str, Path]:
    found = {}
    for top in ("advisor", "strategies"):
        for path in (REPO / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """The advisor/strategies modules ``name`` imports anywhere in its source (function bodies included)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if _is_package(name) else name.rpartition(".")[0]
    targets: set[str] = set()

    def resolve(module: str) -> str | None:
        while module and module not in MODULES:  # `advisor.x.Name` -> `advisor.x`
            module = module.rpartition(".")[0]
        return module or None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets.add(resolve(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else resolve(base))
    return {t for t in targets if t and t != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def stage_of(name: str) -> int | None:
    """The stage index of a module; None for the package roots (`advisor`, `advisor.__main__`, `strategies`)."""
    for i, stage in sorted(enumerate(STAGES), key=lambda s: -len(s[1])):
        if name == stage or name.startswith(stage + "."):
            return i
    return None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_names_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_imports_inside_functions():
    # advisor.decide.advise imports the layer-probe candidates inside a function only.
    assert "advisor.decide.rules.thresholds" in GRAPH["advisor.decide.advise"]
    assert stage_of("advisor.decide.rules.thresholds") == STAGES.index("advisor.decide")
    assert stage_of("strategies.loop") == STAGES.index("strategies")


def test_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_lower_stages_never_import_higher_ones():
    upward = [f"{src} ({STAGES[stage_of(src)]}) imports {dst} ({STAGES[stage_of(dst)]})"
              for src, dsts in GRAPH.items() for dst in dsts
              if stage_of(src) is not None and stage_of(dst) is not None and stage_of(dst) > stage_of(src)]
    assert not upward, "\n".join(upward)


def test_the_report_receives_finished_results():
    # It renders what runs wrote; it never runs or compares anything itself.
    for name, dsts in GRAPH.items():
        if name.startswith("advisor.report"):
            assert not {d for d in dsts if d.startswith(("advisor.execute", "advisor.cli"))}, name


def test_every_stage_says_what_it_owns_and_may_import():
    for stage in STAGES:
        assert stage in MODULES, stage
        doc = ast.get_docstring(ast.parse(MODULES[stage].read_text()))
        assert doc and "import" in doc.lower(), f"{stage}/__init__.py: say what it owns and what it may import"


def test_no_module_over_500_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split along concerns): {long}"


def test_no_compatibility_shims_of_the_old_flat_modules():
    # The stages' modules moved for good: nothing forwards from the old flat names.
    for old in ("data", "features", "models", "runner", "advise", "forecast", "profiler", "classifier", "distributed",
                "errors", "io", "results", "rules", "compare", "export", "predict", "timing", "recipe"):
        assert not (REPO / "advisor" / f"{old}.py").exists(), old
    assert not (REPO / "advisor" / "rules").exists()


@pytest.mark.parametrize("forbidden", ["cpu_cores", "free_cores", "env_switch"])
def test_the_package_face_is_the_users(forbidden):
    out = subprocess.run([sys.executable, "-c", "import advisor; print(' '.join(dir(advisor)))"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    assert forbidden not in out
    assert {"__version__", "profile", "recommend", "run", "compare", "load", "AdvisorError"} <= set(out)


def test_architecture_md_names_only_what_exists():
    import re

    text = (REPO / "docs" / "architecture.md").read_text()
    missing = [p for p in re.findall(r"\b((?:advisor|strategies)(?:/\w+)*/\w+\.py)", text) if not (REPO / p).exists()]
    for dotted in re.findall(r"`((?:advisor|strategies)(?:\.\w+)+)", text):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in MODULES:
                rest = parts[i:]
                source = MODULES[".".join(parts[:i])].read_text()
                if not rest:
                    break
                defines = rf"^(def|class) {rest[0]}\b|^{rest[0]} = "
                if _is_package(".".join(parts[:i])):  # a package face re-exports its modules' names
                    defines += rf"|^\s+{rest[0]},?$|^from \S+ import .*\b{rest[0]}\b"
                if not re.search(defines, source, re.M):
                    missing.append(dotted)
                break
        else:
            missing.append(dotted)
    for name in re.findall(r"`(\w+)`", text):  # every function the tour names is defined somewhere
        if name.islower() and "_" in name and not any(re.search(rf"^\s*def {name}\b", p.read_text(), re.M)
                                                      for p in MODULES.values()):
            missing.append(name)
    assert not missing, missing
