"""The figures of ``report.html``: matplotlib drawn to inline SVG (no files, no network, no JavaScript)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

from advisor.core.names import figure_label
from advisor.decide.models import Recommendation
from advisor.measure.models import DatasetProfile

# Colour-blind-safe (Okabe-Ito) colours, one per strategy.
STRATEGY_COLOURS = {"linear-probe": "#0072B2", "layer-probe": "#56B4E9", "partial-finetune": "#E69F00",
                    "full-finetune": "#D55E00"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "advisor", "svg.fonttype": "path"})
    return plt


def to_svg(fig) -> str:
    """The figure as an inline ``<svg>`` element that scales to its container (viewBox kept, fixed size dropped)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    # width/height in pt would pin the size; the viewBox keeps the aspect ratio when CSS scales it.
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="fig" role="img"', svg, count=1)
    return svg


# The strategy that measured best at a reference dataset: a marker and a colour-blind-safe colour each.
BEST_MARKERS = {"linear-probe": ("o", "#0072B2"), "layer-probe": ("s", "#009E73"),
                "partial-finetune": ("^", "#CC79A7"), "full-finetune": ("D", "#E69F00")}


def quadrant_map(rec: Recommendation, references: Sequence[dict]) -> str:
    """The 2x2 table as a plane: training images per class (log) by similarity, the boundaries, this dataset with its interval."""
    plt = _pyplot()
    t = rec.thresholds
    p = rec.profile
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    # One scatter per best strategy, not per reference: a scatter call costs ~15 ms, and the track
    # record holds over a hundred cells (the map took 2.6 s of every run's report when drawn point by point).
    groups: dict[str | None, list[tuple[float, float]]] = {}
    for ref in references:
        if ref.get("similarity") is None:
            continue
        best = ref.get("best") or (max(ref["accuracy"], key=ref["accuracy"].get) if ref.get("accuracy") else None)
        groups.setdefault(best, []).append((ref["train_per_class_median"], ref["similarity"]))
        if not ref.get("k"):  # subsamples share their dataset's name: label the full set only
            ax.annotate(figure_label(ref["dataset"]), (ref["train_per_class_median"], ref["similarity"]), fontsize=7, color="#666666",
                        xytext=(3, 3), textcoords="offset points")
    for best, points in groups.items():
        marker, colour = BEST_MARKERS.get(best, ("o", "#999999"))
        ax.scatter([x for x, _ in points], [y for _, y in points], s=26, marker=marker, color=colour, zorder=2,
                   label=f"best measured: {best}" if best else None)
    x = max(p.train_per_class_median, 1.0)
    if p.similarity is not None:
        s = p.similarity.score
        ax.errorbar([x], [s.value], yerr=[[max(0.0, s.value - s.low)], [max(0.0, s.high - s.value)]], fmt="o", color="#D55E00",
                    ms=8, capsize=4, zorder=3, label=f"this dataset ({rec.quadrant_rule})")
    else:
        ax.axvline(x, color="#D55E00", lw=2, alpha=0.6, label="this dataset (similarity not measured)")
    xs = [x, t["large_per_class"]] + [r["train_per_class_median"] for r in references if r.get("train_per_class_median")]
    lo, hi = min(xs) / 2, max(xs) * 2
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1)
    ax.axvline(t["large_per_class"], color="#333333", lw=1, ls="--")
    ax.axhline(t["similarity"], color="#333333", lw=1, ls="--")
    cells = {(0, 1): "R1 small, similar\nlinear probe", (0, 0): "R2 small, different\nlayer probe",
             (1, 1): "R3 large, similar\npartial fine-tune", (1, 0): "R4 large, different\nfull fine-tune"}
    for (right, top), label in cells.items():
        ax.text(hi / 1.15 if right else lo * 1.15, 0.97 if top else 0.03, label, ha="right" if right else "left",
                va="top" if top else "bottom", fontsize=7.5, color="#333333")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("median training images per class (log scale)")
    ax.set_ylabel("similarity to ImageNet")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7.5, frameon=False, ncol=3)
    return to_svg(fig)


def depth_profile(profile: DatasetProfile, *, chosen_tap: str | None = None, probe_cv: dict[str, float] | None = None) -> str | None:
    """BatchNorm shift by depth (left) and the per-depth evidence (right), the chosen tap marked."""
    sim = profile.similarity
    if (sim is None or not sim.bn_by_depth) and not profile.tap_evidence:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.6, 3.0))
    if sim is not None and sim.bn_by_depth:
        rows = sim.bn_by_depth
        names = [r.stage for r in rows]
        values = [r.excess if r.excess is not None else r.shift.value for r in rows]
        err = [[max(0.0, r.shift.value - r.shift.low) for r in rows], [max(0.0, r.shift.high - r.shift.value) for r in rows]]
        a.errorbar(range(len(rows)), values, yerr=err, fmt="o-", color="#0072B2", capsize=3)
        a.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        a.set_ylabel("BatchNorm shift over ImageNet's")
        a.set_title(f"shift by depth ({sim.shift_pattern})", fontsize=9)
    else:
        a.axis("off")
    ev = profile.tap_evidence
    if ev:
        taps = [e.tap for e in ev]
        b.plot(range(len(ev)), [e.knn_accuracy for e in ev], "o-", color="#009E73", label="k-NN accuracy")
        if probe_cv:
            b.plot([i for i, t in enumerate(taps) if t in probe_cv], [probe_cv[t] for t in taps if t in probe_cv], "s-",
                   color="#E69F00", label="probe CV accuracy")
        b.set_ylim(0, 1.02)
        b.set_ylabel("accuracy")
        logme = b.twinx()
        logme.plot(range(len(ev)), [e.logme for e in ev], "^--", color="#CC79A7", label="LogME")
        logme.set_ylabel("LogME")
        logme.spines["top"].set_visible(False)
        b.set_xticks(range(len(ev)), taps, rotation=30, ha="right")
        if chosen_tap in taps:
            b.axvline(taps.index(chosen_tap), color="#D55E00", lw=1.2, ls=":")
            b.annotate("chosen", (taps.index(chosen_tap), 0.04), color="#D55E00", fontsize=8, ha="center")
        handles = b.get_legend_handles_labels()[0] + logme.get_legend_handles_labels()[0]
        b.legend(handles=handles, fontsize=7, loc="lower right", frameon=False)
        b.set_title("evidence by depth", fontsize=9)
    else:
        b.axis("off")
    fig.tight_layout()
    return to_svg(fig)


def learning_curves(curves: dict[str, list[float]]) -> str | None:
    """Training loss, held-out accuracy and the learning rate per epoch."""
    if not curves or not any(curves.values()):
        return None
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(8.4, 2.6))
    epochs = range(1, 1 + max(len(v) for v in curves.values()))

    def line(ax, key, label, colour):
        values = curves.get(key) or []
        if values and not all(isinstance(v, float) and math.isnan(v) for v in values):
            ax.plot(list(epochs)[:len(values)], values, "o-", ms=3, color=colour, label=label)

    line(a, "train_loss", "training", "#0072B2")
    line(a, "val_loss", "validation", "#D55E00")
    a.set_title("loss", fontsize=9)
    line(b, "val_accuracy", "validation", "#D55E00")
    line(b, "holdout_accuracy", "hold-out (train split)", "#009E73")
    b.set_title("accuracy", fontsize=9)
    line(c, "lr", "head", "#555555")
    c.set_title("learning rate (last step)", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b, c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def confusion_matrix(confusion: list[list[int]], classes: Sequence[str]) -> str:
    """Counts, rows true and columns predicted, shaded by each row's share."""
    plt = _pyplot()
    k = len(classes)
    size = min(9.0, max(3.2, 0.45 * k + 1.6))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    shares = [[v / max(1, sum(row)) for v in row] for row in confusion]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:
        for i, row in enumerate(confusion):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7 if k > 10 else 9,
                        color="white" if shares[i][j] > 0.6 else "black")
    labels = [figure_label(c, limit=14) for c in classes]
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.spines[:].set_visible(False)
    fig.tight_layout()
    return to_svg(fig)


def reliability_diagram(before: Sequence[Sequence[float]], after: Sequence[Sequence[float]] | None) -> str | None:
    """Accuracy against confidence per bin, as trained and calibrated: a calibrated model sits on the diagonal.
    Rows are (mean confidence, accuracy, images); the marker's area follows the images in the bin."""
    if not before:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.3))
    ax.plot([0, 1], [0, 1], ":", color="#888888", lw=1, label="calibrated")
    most = max(r[2] for rows in (before, after or []) for r in rows)
    for rows, label, colour, marker in ((before, "as trained", "#D55E00", "o"), (after, "temperature-scaled", "#0072B2", "s")):
        if rows:
            ax.plot([r[0] for r in rows], [r[1] for r in rows], "-", color=colour, lw=1, alpha=0.6)
            ax.scatter([r[0] for r in rows], [r[1] for r in rows], s=[12 + 80 * r[2] / most for r in rows], color=colour,
                       marker=marker, label=label, zorder=3)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return to_svg(fig)


def compare_bars(rows: Sequence[dict]) -> str:
    """Accuracy with its interval (left) and wall time (right) per strategy."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 2.8))
    names = [r["strategy"] for r in rows]
    acc = [r["val_accuracy"] for r in rows]
    # Wilson bounds can sit a rounding error inside the point estimate at 0 or 1: clamp.
    err = [[max(0.0, r["val_accuracy"] - r["ci"][0]) for r in rows], [max(0.0, r["ci"][1] - r["val_accuracy"]) for r in rows]]
    colours = [STRATEGY_COLOURS.get(n, "#777777") for n in names]
    a.barh(range(len(rows)), acc, xerr=err, color=colours, capsize=3)
    marks = [(" ★ best" if r.get("winner") else "") + (" ◆ recommended" if r.get("recommended") else "") for r in rows]
    a.set_yticks(range(len(rows)), [n + m for n, m in zip(names, marks)], fontsize=8)
    a.set_xlim(max(0.0, min(r["ci"][0] for r in rows) - 0.05), 1.0)
    a.set_xlabel("validation accuracy (95 % interval)")
    a.invert_yaxis()
    b.barh(range(len(rows)), [r["seconds"] for r in rows], color=colours)
    b.set_yticks(range(len(rows)), ["" for _ in rows])
    b.set_xlabel("wall time (s)")
    b.invert_yaxis()
    fig.tight_layout()
    return to_svg(fig)
