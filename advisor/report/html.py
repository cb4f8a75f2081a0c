"""``report.html``: one self-contained page per run, comparison or recommendation.

Figures are inline SVG, thumbnails are data URIs, the style sheet is inline: the file reads
offline, without JavaScript, on a phone and on paper. Every string that came from the user's
files (paths, class names, rationales that quote them) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from advisor.core.version import __version__
from advisor.core.io import write_text_atomic
from advisor.core.names import printable
from advisor.decide.advise import save_plan
from advisor.decide.models import Recommendation, RunPlan
from advisor.report import CALIBRATION_NOTE, TEST_NOTE, calibration_phrase, score_phrase
from strategies.results import RunResult

GALLERY_SIZE = 12
THUMB_PX = 112

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0 auto;max-width:60rem;padding:1rem}
h1{font-size:1.5rem;margin:.2rem 0 .6rem}h2{font-size:1.15rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
.caption{color:#555;font-size:.9rem;margin:.2rem 0 .6rem}.key{font-size:1.1rem}.num{font-variant-numeric:tabular-nums}
figure{margin:.4rem 0}svg.fig{width:100%;height:auto;max-width:100%}figure.narrow svg.fig{max-width:30rem}
table{border-collapse:collapse;font-size:.9rem;margin:.4rem 0;display:block;overflow-x:auto}
td,th{border-bottom:1px solid #e4e4e4;padding:.25rem .55rem;text-align:left}th{background:#f6f6f6}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(8rem,1fr));gap:.5rem}
.gallery figure{margin:0;font-size:.78rem;word-break:break-word}.gallery img{width:100%;height:auto;border:2px solid #D55E00}
.gallery.wide{grid-template-columns:repeat(auto-fill,minmax(15rem,1fr))}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}pre{background:#f6f6f6;padding:.5rem;overflow-x:auto;white-space:pre-wrap}
.warn{color:#8a4b00}.tag{display:inline-block;border:1px solid #999;border-radius:.3rem;padding:0 .3rem;font-size:.8rem}
@media print{body{max-width:none}h2{break-after:avoid}figure,table{break-inside:avoid}}
"""


def esc(value: object) -> str:
    """Text for HTML: printable first (no raw ESC or direction marks), then HTML-escaped."""
    return html.escape(printable(value), quote=True)


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body)
            + f"\n<footer class=\"caption\">advisor {esc(__version__)}</footer>\n</body></html>\n")


def _figure(svg: str | None, caption: str, *, narrow: bool = False) -> list[str]:
    if not svg:
        return []
    css = ' class="narrow"' if narrow else ""
    return [f"<figure{css}>{svg}<figcaption class=\"caption\">{esc(caption)}</figcaption></figure>"]


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"num\">{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def track_record() -> list[dict]:
    """The shipped reference cells (the track record's measured outcomes) the map places a dataset among."""
    from advisor.decide.records import shipped_track_record

    return shipped_track_record()


# --------------------------------------------------------------------------- sections


def _advice_sections(rec: Recommendation, *, forced: str | None = None, probe_cv: dict[str, float] | None = None,
                     chosen_tap: str | None = None) -> list[str]:
    from advisor.report import plots

    p = rec.profile
    out = ["<h2>Where the dataset sits</h2>"]
    sim = p.similarity.score if p.similarity else None
    sim_text = f"similarity {sim.value:.3f} [95 % {sim.low:.3f}, {sim.high:.3f}]" if sim else "similarity not measured"
    out.append(f"<p class=\"key\">{esc(p.train_images)} training images, median {esc(f'{p.train_per_class_median:g}')} per "
               f"class, {esc(sim_text)}: <b>{esc(rec.size_class)}, {esc(rec.similarity_class)}</b> "
               f"(<span class=\"rule\">{esc(rec.quadrant_rule)}</span>) → <b>{esc(rec.strategy)}</b></p>")
    if rec.decision is not None:
        out.append(f"<p class=\"key decision\"><b>Why {esc(rec.strategy)}:</b> {esc(rec.decision.sentence)}</p>")
    out += _figure(plots.quadrant_map(rec, track_record()),
                   "Read it like the CS231n table: right of the dashed line is 'large', above it 'similar'. The orange "
                   "point is this dataset with its 95 % similarity interval; the other points are the shipped reference "
                   "datasets, each marked with the strategy that measured best there, so the boundaries can be judged by eye.")
    out += _figure(plots.depth_profile(p, chosen_tap=chosen_tap, probe_cv=probe_cv),
                   "Left: how far this data's BatchNorm statistics sit from ImageNet's, per depth (rising late = "
                   "semantic shift, high early = input-level shift). Right: how separable the classes are from each "
                   "depth's features (higher is better); the dotted line marks the tap the probe used.")
    if forced:
        out.append(f"<p class=\"warn\">The strategy was forced to <b>{esc(forced)}</b>; the rules below are what the "
                   f"advice said (<b>{esc(rec.strategy)}</b>).</p>")
    if rec.forecast is not None and rec.forecast.strategies:
        out.append("<h2>Forecast before training</h2><p class=\"caption\">What each strategy was expected to score (80 % "
                   "interval) and cost on this machine, before anything was trained; how each number was made is in the "
                   "last column.</p>")
        out.append(_table(["strategy", "accuracy", "80 % interval", "seconds", "how"],
                          [(f.strategy, f"{f.accuracy:.3f}", f"{f.low:.3f}-{f.high:.3f}",
                            "-" if f.seconds is None else f"{f.seconds:.0f}", f.method) for f in rec.forecast.strategies]))
        extra = [f"extrapolating: {n}" for n in rec.forecast.extrapolating]
        extra += [*rec.forecast.notes, *dict.fromkeys(f"times: {f.time_source}" for f in rec.forecast.strategies if f.time_source)]
        if extra:
            warn = ' class="warn"'
            out.append("<ul>" + "".join(f"<li{warn if n.startswith('extrapolating') else ''}>{esc(n)}</li>"
                                        for n in extra) + "</ul>")
    out += _more_data_section(rec) + _label_section(p)
    out.append("<h2>Why: the rules that fired</h2><p class=\"caption\">Each rule has a stable ID; its rationale quotes "
               "the measured values and the thresholds.</p><ul>")
    out += [f"<li><b class=\"rule\">{esc(h.id)}</b> <span class=\"tag\">{esc(h.kind)}</span> {esc(h.title)}: "
            f"{esc(h.rationale)}</li>" for h in rec.hits]
    out.append("</ul>")
    notes = [*rec.warnings, *rec.evidence_notes]
    if p.cross_split_duplicates:
        notes.append(f"{p.cross_split_duplicates} duplicate groups span the training and validation splits (leakage)")
    if notes:
        out.append("<h2>Warnings</h2><ul>" + "".join(f"<li class=\"warn\">{esc(n)}</li>" for n in notes) + "</ul>")
    return out


def _more_data_section(rec: Recommendation) -> list[str]:
    m = rec.more_data
    if m is None or len(m.rows) < 2:
        return []
    names = list(m.rows[0].strategies)
    rows = [(f"{r.per_class:.0f}" + (" (today)" if r.factor == 1 else f" ({r.factor}x)"),
             *[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in (r.strategies[n] for n in names)]) for r in m.rows]
    curve = ", ".join(f"{c.per_class:g}/class: {c.accuracy:.3f}" for c in m.curve)
    return ["<h2>What more images would buy</h2><p class=\"caption\">Each strategy's forecast (80 % interval) at today's "
            "training images per class and at 2x and 4x as many. The probes' gain is the probe's own learning curve, "
            f"measured on nested subsamples of the profiling sample ({esc(curve)}) and extrapolated by a saturating power "
            "law (its bootstrap spread widens every interval); the fine-tunes' comes from the forecaster at the larger size.</p>",
            _table(["training images per class", *names], rows), f"<p>{esc(m.boundary)}</p>",
            *[f"<p class=\"warn\">{esc(n)}</p>" for n in m.notes]]


def _label_section(profile) -> list[str]:
    rep = profile.labels
    if rep is None or not rep.issues:
        return []
    cells = []
    for issue in rep.issues[:GALLERY_SIZE]:
        thumb = _thumbnail(issue.path)
        conf = f"{issue.suggested_probability:.2f}" if issue.suggested_probability is not None else "duplicate"
        img = (f"<img src=\"{thumb[0]}\" alt=\"{esc(Path(issue.path).name)}\" width=\"{thumb[1]}\" height=\"{thumb[2]}\">"
               if thumb else "")
        cells.append(f"<figure>{img}<figcaption>given <b>{esc(issue.given)}</b>, the data says <b>{esc(issue.suggested)}</b> "
                     f"({esc(conf)})<br>{esc(Path(issue.path).name)} ({esc(issue.split)})</figcaption></figure>")
    return [f"<h2>Labels that look wrong</h2><p class=\"caption\">{len(rep.issues)} of the {rep.checked} sampled images: "
            f"{esc(rep.method)}, each class against its own confidence threshold (and identical images that carry "
            "different labels). Nothing was changed; label_issues.csv lists every path.</p>",
            *([f"<p class=\"warn\">{esc(rep.caution())}.</p>"] if rep.caution() else []),
            "<div class=\"gallery\">" + "".join(cells) + "</div>"]


def _thumbnail(path: str) -> tuple[str, int, int] | None:
    """(data URI, width, height) of a JPEG thumbnail, or None when the file no longer decodes."""
    from advisor.data.imagefile import load_image

    try:
        img = load_image(path, min_side=THUMB_PX)
        img.thumbnail((THUMB_PX, THUMB_PX))
        return _jpeg_uri(img.convert("RGB"))
    except Exception:  # an image that no longer decodes is left out of the gallery, not fatal
        return None


def _gallery(result: RunResult, classes: Sequence[str], run_dir: Path | None = None) -> list[str]:
    wrong = [(i, p) for i, p in enumerate(result.predictions) if p[1] != p[2]]
    if not wrong:
        return ["<h2>Most confidently wrong</h2><p>No validation image was misclassified.</p>"]
    conf = result.confidence if len(result.confidence) == len(result.predictions) else None
    if conf is not None:
        wrong.sort(key=lambda item: -conf[item[0]])
    shown = wrong[:GALLERY_SIZE]
    maps, why_not = _evidence(run_dir, [(path, pred, true) for _, (path, true, pred) in shown], classes)
    cells = []
    for n, (i, (path, true, pred)) in enumerate(shown):
        thumb = _jpeg_uri(maps[n].image(THUMB_PX)) if maps and not isinstance(maps[n], str) else _thumbnail(path)
        if thumb is None:
            continue
        uri, w, h = thumb
        c = f", {conf[i]:.0%} sure" if conf is not None else ""
        cells.append(f"<figure><img src=\"{uri}\" alt=\"{esc(Path(path).name)}\" width=\"{w}\" height=\"{h}\">"
                     f"<figcaption>true <b>{esc(classes[true])}</b>, predicted <b>{esc(classes[pred])}</b>{esc(c)}"
                     f"<br>{esc(Path(path).name)}</figcaption></figure>")
    order = "most confident first" if conf is not None else "in file order (this run did not record confidences)"
    how = (EVIDENCE_NOTE if maps else f"(No evidence maps: {why_not}.)")
    return ["<h2>Most confidently wrong</h2>",
            f"<p class=\"caption\">{len(wrong)} of {len(result.predictions)} validation images are misclassified; "
            f"the first {len(cells)}, {order}. Mislabelled or ambiguous images often show up here. {esc(how)}</p>",
            f"<div class=\"gallery{' wide' if maps else ''}\">" + "".join(cells) + "</div>"]


EVIDENCE_NOTE = ("Each image is shown as the model saw it (the centre crop) and again with its evidence map: vermillion "
                 "where the image pushed the model towards the class it predicted, blue where towards the true class, "
                 "stronger colour for stronger evidence. For this model the map is exact, not a gradient "
                 "approximation: its average over the image is the difference of the two classes' logits.")


def _evidence(run_dir: Path | None, items: list[tuple[str, int, int]], classes: Sequence[str]):
    """Explanations of (path, predicted, true) with the run's saved model, or ([], why not)."""
    if run_dir is None or not items:
        return [], "no saved model"
    from advisor.backbones.classifier import load_classifier
    from advisor.core.errors import AdvisorError, one_line
    from advisor.report.evidence import explain

    try:
        model, _card = load_classifier(run_dir)
        return explain(model, classes, [p for p, _, _ in items], [(a, b) for _, a, b in items]), ""
    except AdvisorError as err:  # e.g. the weights are not on this machine, or a head that cannot be mapped
        return [], str(err).rstrip(".")
    except Exception as err:  # pictures are an extra: they never cost the report (or the run that writes it)
        return [], f"they failed ({type(err).__name__}: {one_line(err)})"


def _jpeg_uri(img) -> tuple[str, int, int]:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), img.width, img.height


def _run_sections(plan: RunPlan, result: RunResult, classes: Sequence[str], run_dir: Path | None = None) -> list[str]:
    from advisor.report import plots

    m = result.metrics
    out = ["<h2>Learning curves</h2>"]
    curves = plots.learning_curves(result.curves)
    if curves:
        n_curve = result.selected.get("curve_images")
        subset = (f" Each epoch's validation figures come from a stratified subset of {n_curve} of the {m.n_val} "
                  "validation images (a larger pass would have cost more than training); the reported accuracy "
                  "is on all of them." if isinstance(n_curve, int) and 0 < n_curve < m.n_val else "")
        out += _figure(curves, "Per epoch: training and validation loss, validation accuracy (recorded, never used to "
                               "select anything) and the learning rate at the epoch's last step." + subset)
    else:
        out.append("<p class=\"caption\">A probe is fitted in one solve: there are no epochs to plot.</p>")
    if result.sweep:
        out.append("<h2>Layer sweep</h2><p class=\"caption\">Cross-validated on the training split; the simplest candidate "
                   "within one standard error of the best is kept.</p>")
        out.append(_table(["taps", "dim", "CV accuracy", "L2"],
                          [(", ".join(r["taps"]), r["dim"], f"{r['cv_accuracy']:.4f}", f"{r['l2']:g}") for r in result.sweep]))
    out.append("<h2>Confusion matrix</h2>")
    out += _figure(plots.confusion_matrix(m.confusion, classes),
                   "Rows are the true classes, columns the predicted ones; the diagonal is what the model gets right, "
                   "shading is each row's share.", narrow=len(classes) <= 12)
    out.append("<h2>Per class</h2><p class=\"caption\">Precision: of the images predicted as the class, the share that "
               "were; recall: of the class's images, the share found.</p>")
    out.append(_table(["class", "precision", "recall", "f1", "support"],
                      [(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support) for c in m.per_class]))
    if (c := result.calibration) is not None:
        out.append(f"<h2>Calibration</h2><p class=\"caption\">{esc(CALIBRATION_NOTE)}</p><p>{esc(calibration_phrase(c))}.</p>")
        out += _figure(plots.reliability_diagram(c.reliability_before, c.reliability_after if c.applied else None),
                       (f"Validation images ({c.n})" if c.source == "validation" else
                        f"Out-of-fold predictions of the training split ({c.n} images, each from a probe that never "
                        "saw it: the validation split was too small)") + " per confidence bin; the marker's size "
                       "follows the images in it. "
                       "The temperature-scaled points are cross-fitted (each fifth scored with the temperature "
                       "fitted on the other four).", narrow=True)
    if (t := result.test) is not None:
        out.append(f"<h2>Test split</h2><p class=\"caption\">{esc(score_phrase(t))}: {TEST_NOTE}. Rows are the true "
                   "classes, columns the predicted ones.</p>")
        out += _figure(plots.confusion_matrix(t.confusion, classes), "The test split's confusion matrix.",
                       narrow=len(classes) <= 12)
        out.append(_table(["class", "precision", "recall", "f1", "support"],
                          [(c.name, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", c.support) for c in t.per_class]))
    out += _gallery(result, classes, run_dir)
    return out


# --------------------------------------------------------------------------- pages


def run_page(run_dir: str | Path) -> str:
    """The report of one run directory (written by ``advisor run``)."""
    from advisor.core.io import read_model

    rd = Path(run_dir)
    fix = "the run directory is incomplete: rerun it"
    plan = read_model(rd / "plan.json", RunPlan, fix=fix)
    result = read_model(rd / "result.json", RunResult, fix=fix)
    rec = read_model(rd / "recommendation.json", Recommendation, fix=fix) if (rd / "recommendation.json").exists() else None
    classes = [c.name for c in result.metrics.per_class]
    m = result.metrics
    lo, hi = m.val_accuracy_ci
    dataset = plan.dataset
    forced = plan.strategy if "user" in plan.rule_ids or (rec is not None and rec.strategy != plan.strategy) else None
    body = [f"<h1>{esc(Path(dataset).name)}: {esc(plan.strategy)}</h1>",
            f"<p class=\"key\">validation accuracy <b id=\"accuracy\" class=\"num\">{m.val_accuracy:.4f}</b> "
            f"(95 % interval {lo:.3f}-{hi:.3f}, {m.n_val} images), loss {m.val_loss:.4f}</p>",
            *([f"<p class=\"key\">test accuracy <b id=\"test-accuracy\" class=\"num\">{result.test.accuracy:.4f}</b> "
               f"{esc(score_phrase(result.test).split(' ', 1)[1])}: {TEST_NOTE}</p>"] if result.test else []),
            f"<p>{result.trainable_params:,} of {result.total_params:,} parameters trained in {result.seconds:.1f} s on "
            f"{esc(result.device)}; backbone <code>{esc(plan.backbone)}</code> at {plan.input_size} px.</p>"]
    predicted = next((f for f in (rec.forecast.strategies if rec is not None and rec.forecast else [])
                      if f.strategy == plan.strategy), None)
    if predicted is not None:
        inside = "inside" if predicted.low <= m.val_accuracy <= predicted.high else "outside"
        body.append(f"<p>Forecast before training: {predicted.accuracy:.3f} [80 % {predicted.low:.3f}, {predicted.high:.3f}]; "
                    f"achieved {m.val_accuracy:.3f}, {100 * (m.val_accuracy - predicted.accuracy):+.1f} points, {inside} "
                    f"the interval.</p>")
    if rec is not None:
        probe_cv = {r["taps"][0]: r["cv_accuracy"] for r in result.sweep if len(r["taps"]) == 1} or None
        taps = result.selected.get("taps") or []
        body += _advice_sections(rec, forced=forced, probe_cv=probe_cv, chosen_tap=taps[-1] if taps else None)
    elif forced:
        body.append(f"<p class=\"warn\">The strategy was chosen explicitly (<code>--strategy</code>, a saved plan or "
                    f"<code>compare</code>), not by the advice: <b>{esc(forced)}</b>.</p>")
    body += _run_sections(plan, result, classes, rd)
    body += ["<h2>Reproduce</h2><p class=\"caption\">The plan file holds every setting that ran.</p>",
             f"<pre>{esc(shlex.join(['advisor', 'run', dataset, '--plan', str(rd / 'plan.json')]))}</pre>",
             f"<pre>{esc(shlex.join(['advisor', 'predict', str(rd), 'IMAGE_OR_FOLDER']))}</pre>"]
    return _page(f"{Path(dataset).name}: {plan.strategy}", body)


def compare_page(compare_dir: str | Path) -> str:
    """The report of a ``compare`` directory: every strategy side by side, the advice's regret."""
    from advisor.core.io import read_model
    from advisor.report import plots
    from strategies.results import Comparison

    cd = Path(compare_dir)
    comp = read_model(cd / "compare.json", Comparison, fix="the compare directory is incomplete: rerun compare")
    rows = [r.model_dump() for r in comp.rows]
    lo, hi = comp.regret_ci
    body = [f"<h1>{esc(Path(comp.dataset).name)}: every strategy under one budget</h1>",
            f"<p class=\"key\">recommended <b>{esc(comp.recommended)}</b>, best <b>{esc(comp.winner)}</b>, regret "
            f"<b id=\"regret\" class=\"num\">{comp.regret_points:.2f}</b> points [95 % {lo:.2f}, {hi:.2f}]</p>",
            f"<p>{esc(comp.verdict)}</p>"]
    body += _figure(plots.compare_bars(rows), "Accuracy with its 95 % interval and wall time per strategy; ★ marks the "
                                              "most accurate, ◆ the recommended one. Overlapping intervals mean the data "
                                              "cannot order them (see 'tied').")
    forecasts = {f.strategy: f for f in (comp.recommendation.forecast.strategies if comp.recommendation.forecast else [])}

    def error(r: dict) -> str:
        f = forecasts.get(r["strategy"])
        return "-" if f is None else f"{f.accuracy:.3f} ({100 * (r['val_accuracy'] - f.accuracy):+.1f})"

    body.append(_table(["strategy", "accuracy", "95 % interval", "points behind best [95 %]", "tied", "seconds", "trained params",
                        "forecast (achieved - forecast, points)"],
                       [(r["strategy"], f"{r['val_accuracy']:.4f}", f"{r['ci'][0]:.3f}-{r['ci'][1]:.3f}",
                         f"{r['behind_best']:.2f} [{r['behind_best_ci'][0]:.2f}, {r['behind_best_ci'][1]:.2f}]",
                         "yes" if r["tied_with_best"] else "no", f"{r['seconds']:.1f}", f"{r['trainable_params']:,}", error(r))
                        for r in rows]))
    body += _advice_sections(comp.recommendation)
    body += ["<h2>Reproduce</h2>",
             f"<pre>{esc(shlex.join(['advisor', 'compare', comp.dataset] + (['--input-size', str(comp.input_size)] if comp.input_size else []) + (['--epochs', str(comp.epochs_cap)] if comp.epochs_cap else [])))}</pre>",
             "<p class=\"caption\">Each strategy's own report is in its run folder: "
             + ", ".join(f"<code>{esc(Path(r['run_dir']).name)}/report.html</code>" for r in rows) + "</p>"]
    return _page(f"{Path(comp.dataset).name}: compare", body)


def recommendation_page(rec: Recommendation) -> str:
    """The report of ``recommend --save-plan``: the advice before anything is trained."""
    body = [f"<h1>{esc(Path(rec.profile.dataset).name)}: advice</h1>",
            f"<p class=\"key\">recommended <b id=\"strategy\">{esc(rec.strategy)}</b></p>"]
    body += _advice_sections(rec)
    body += ["<h2>Run it</h2>", f"<pre>{esc(shlex.join(['advisor', 'run', '--auto', rec.profile.dataset]))}</pre>"]
    return _page(f"{Path(rec.profile.dataset).name}: advice", body)


def write_report_html(path: str | Path) -> Path:
    """(Re)build ``report.html`` in a run or compare directory; returns its path."""
    from advisor.core.errors import AdvisorError
    from advisor.core.io import write_text_atomic

    d = Path(path)
    if (d / "compare.json").is_file():
        page = compare_page(d)
    elif (d / "result.json").is_file():
        page = run_page(d)
    else:
        raise AdvisorError(f"{d} is neither a finished run nor a compare directory (no result.json or compare.json)",
                           hint="pass the folder `advisor run` or `advisor compare` printed")
    return write_text_atomic(d / "report.html", page)


def save_advice(rec: Recommendation, path: str | os.PathLike) -> tuple[Path, Path]:
    """The plan at ``path`` and, next to it, its report (``plan.json`` -> ``plan.html``)."""
    from advisor.report import LABEL_ISSUES_CSV, label_issues_csv

    plan_path = save_plan(rec.plan, path)
    if rec.profile.labels is not None and rec.profile.labels.issues:
        write_text_atomic(plan_path.with_name(LABEL_ISSUES_CSV), label_issues_csv(rec.profile.labels))
    return plan_path, write_text_atomic(plan_path.with_suffix(".html"), recommendation_page(rec))
