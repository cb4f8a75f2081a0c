"""The report stage: finished results made readable. The wording every surface shares (this module),
report.md, report.html and its figures (``html``, ``plots``).

Imports the stages below it and strategies (for their result types); never a runner or compare.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from advisor.core.names import markdown, printable
from advisor.decide.models import Recommendation, RunPlan
from strategies.results import Calibration, Metrics, RunResult, SplitScore
from strategies.temperature import MIN_IMAGES


def accuracy_phrase(m: Metrics, *, emphasis: Callable[[str], str] = str, loss: bool = True) -> str:
    """'0.9000 (95 % CI 0.815-0.948, 80 images), loss 0.3120', the accuracy through ``emphasis``."""
    lo, hi = m.val_accuracy_ci
    return (f"{emphasis(f'{m.val_accuracy:.4f}')} (95 % CI {lo:.3f}-{hi:.3f}, {m.n_val} images)"
            + (f", loss {m.val_loss:.4f}" if loss else ""))


def score_phrase(t: SplitScore, *, emphasis: Callable[[str], str] = str) -> str:
    """'0.9100 (95 % CI 0.850-0.948, 200 images, 1 unreadable), loss 0.2811' for a split scored once."""
    lo, hi = t.accuracy_ci
    unread = f", {t.skipped} unreadable" if t.skipped else ""
    top5 = f", top-5 {t.top5_accuracy:.4f}" if t.top5_accuracy is not None else ""
    ece = "" if t.ece is None else f", calibration error {100 * t.ece:.1f} %"
    if t.ece is not None and t.ece_uncalibrated is not None:
        ece += f" ({100 * t.ece_uncalibrated:.1f} % uncalibrated)"
    return (f"{emphasis(f'{t.accuracy:.4f}')} (95 % CI {lo:.3f}-{hi:.3f}, {t.n} images{unread}){top5}, "
            f"loss {t.loss:.4f}{ece}")


def calibration_phrase(c: Calibration, *, short: bool = False) -> str:
    """'calibrated (temperature 1.42): calibration error 6.1 % -> 1.8 % ...' or why the model was left as trained;
    ``short``: one screen line, without the where and why."""
    if c.applied:
        if c.source == "validation":
            where = "" if short else " on held-out parts of validation"
            if c.n < MIN_IMAGES:  # a small fine-tune's T, kept without the check its folds cannot make
                where += f" ({c.n} images: kept without a held-out check)"
        else:
            where = (" on out-of-fold training predictions" if short else
                     " on held-out parts of the training split's out-of-fold predictions (too few validation images)")
        return (f"calibrated (temperature {c.temperature:.3g}): calibration error {100 * c.ece_before:.1f} % -> "
                f"{100 * c.ece_after:.1f} %{where}")
    why = "" if short else f" ({c.reason})"
    return f"left as trained{why}: calibration error {100 * c.ece_before:.1f} %"


CALIBRATION_NOTE = ("Temperature scaling: the head's logits are divided by one number fitted on the validation split "
                    "(a probe with under 20 validation images: on its out-of-fold training predictions; a fine-tune with 8-19: "
                    "on them, kept without a held-out check), so that a predicted probability of 0.8 is right about 80 % of the time; the predicted class, and "
                    "so the accuracy, does not change. The calibration error is the mean gap between confidence and "
                    "accuracy over confidence bins; its 'after' figure is measured on each fifth of those images with the "
                    "temperature fitted on the other four.")


TEST_NOTE = "scored once by the saved classifier after training; nothing was chosen on it"


def readable(value: object) -> str:
    """A value as a person reads it: lists joined, floats to 4 significant digits, dicts as 'key value' pairs."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(readable(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {readable(v)}" for k, v in value.items())
    return "none" if value is None else str(value)


def selected_items(result: RunResult) -> dict[str, str]:
    """What the strategy chose, readable, without the bulky CV table."""
    return {k: readable(v) for k, v in result.selected.items() if k != "cv_table"}


def run_report_md(plan: RunPlan, result: RunResult, *, dataset: str, run_dir: Path,
                  recommendation: Recommendation | None = None) -> str:
    """``report.md`` of a finished run: headline, why this strategy, what it chose, per class, confusion, curves."""
    rec = recommendation
    m = result.metrics
    md = markdown  # every user-controlled string (paths, class names, rationales quoting them) as plain text
    lines = [f"# {md(Path(dataset).name)}: {plan.strategy}", "",
             f"- dataset: {md(dataset)}", f"- backbone: {md(plan.backbone)}, input {plan.input_size} px",
             f"- validation accuracy: {accuracy_phrase(m, emphasis=lambda s: f'**{s}**')}",
             *([f"- test accuracy: {score_phrase(result.test, emphasis=lambda s: f'**{s}**')} ({TEST_NOTE})"]
               if result.test else []),
             *([f"- probabilities: {calibration_phrase(result.calibration)}"] if result.calibration else []),
             f"- parameters trained: {result.trainable_params:,} of {result.total_params:,}",
             f"- wall time: {result.seconds:.1f} s on {result.device}", ""]
    if rec is not None:
        lines += ["## Why this strategy", ""]
        lines += [f"- **{h.id}** ({h.kind}) {md(h.title)}: {md(h.rationale)}" for h in rec.hits]
        lines += [f"- warning: {md(w)}" for w in rec.warnings] + [f"- evidence: {md(n)}" for n in rec.evidence_notes] + [""]
    if selected_items(result):
        lines += ["## What the strategy chose", ""]
        lines += [f"- {k}: {md(v)}" for k, v in selected_items(result).items()] + [""]
    if result.sweep:
        lines += ["## Layer sweep (cross-validated on the training split)", "", "| taps | dim | CV accuracy | L2 |", "|---|---|---|---|"]
        lines += [f"| {', '.join(r['taps'])} | {r['dim']} | {r['cv_accuracy']:.4f} | {r['l2']:g} |" for r in result.sweep] + [""]
    lines += ["## Per class", "", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {md(c.name)} | {c.precision:.3f} | {c.recall:.3f} | {c.f1:.3f} | {c.support} |" for c in m.per_class]
    names = [md(c.name) for c in m.per_class]
    lines += ["", "## Confusion matrix (rows: true, columns: predicted)", "", "| | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(map(str, row)) + " |" for n, row in zip(names, m.confusion)]
    if result.curves:
        lines += ["", "## Learning curves", "", "| epoch | " + " | ".join(result.curves) + " |", "|---" * (len(result.curves) + 1) + "|"]
        for i in range(max(len(v) for v in result.curves.values())):
            lines.append(f"| {i + 1} | " + " | ".join(f"{v[i]:.4f}" if i < len(v) else "" for v in result.curves.values()) + " |")
    lines += ["", "## Use the model", "", f"    advisor predict {printable(run_dir)} IMAGE_OR_FOLDER ...", "",
              "`model.safetensors` + `model.json` load without pickle: `advisor.backbones.classifier.load_classifier(run_dir)`.", ""]
    return "\n".join(lines)


LABEL_ISSUES_CSV = "label_issues.csv"


def label_issues_csv(report) -> str:
    """Every image the label check flagged, worst first: path, split, given, suggested, probabilities, why."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "split", "given", "suggested", "given_probability", "suggested_probability", "reason"])
    for i in report.issues if report is not None else []:
        w.writerow([printable(i.path), i.split, printable(i.given), printable(i.suggested),
                    "" if i.given_probability is None else i.given_probability,
                    "" if i.suggested_probability is None else i.suggested_probability, i.reason])
    return buf.getvalue()


def predictions_csv(report) -> str:
    """``advisor predict --csv``: a row per image (path, then label and probability for each rank), in input
    order, then a row per skipped file with its reason (as timm's inference script writes its top-k)."""
    import csv
    import io

    k = max((len(p.top) for p in report.predictions), default=0)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path"] + [f"{col}{r}" for r in range(1, k + 1) for col in ("label", "probability")] + ["skipped"])
    for p in report.predictions:
        w.writerow([printable(p.path)] + [v for c in p.top for v in (printable(c.label), c.probability)] + [""])
    for s in report.skipped:
        w.writerow([printable(s.path)] + [""] * (2 * k) + [printable(s.reason)])
    return buf.getvalue()
