"""The terminal: consoles, names made safe to print, progress bars, and one renderer per result type.

Renderers take the core's finished pydantic results and print them; they compute nothing.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from advisor.core.names import printable

out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
progress_console = Console(stderr=True, highlight=False)  # bars and epoch lines; --quiet silences it, not errors


def shown(value: object) -> str:
    """A user-controlled string made safe for the terminal and for rich markup.

    Undecodable bytes of a file name and control characters are shown as ``\\xNN`` escapes,
    and ``[`` is escaped so that rich prints ``evil[red].jpg`` as it is, never as markup.
    """
    return escape(printable(value))


# What each stage's progress counts: the training bar counts optimiser steps, not images.
_STAGE_UNITS = {"train": "step"}


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        unit = task.fields.get("unit", "img")
        if not unit:
            return Text("")
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} {unit}/s" if speed else f"   -- {unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str):
    """A rich progress bar on stderr; yields the ``(done, total)`` callback the core expects."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=progress_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_json(model, **dump) -> None:
    """Plain JSON on stdout: rich would wrap long lines and break strings for machines."""
    if out.quiet:  # a rank other than 0 under torchrun
        return
    text = model.model_dump_json(indent=2, **dump) if hasattr(model, "model_dump_json") else json.dumps(model, indent=2)
    typer.echo(text)


def render_scan(scan) -> None:
    from advisor.data.imagefile import IMAGE_EXTENSIONS

    splits = sorted(scan.counts, key=["train", "val", "test"].index)
    out.print(f"[bold]{shown(scan.root)}[/bold]  layout {scan.layout}, split from {scan.split_source}"
              + (f" (val {scan.val_fraction:.0%}, seed {scan.split_seed})" if scan.split_seed is not None else ""),
              soft_wrap=True)
    table = Table()
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for c in scan.classes:
        row = [scan.counts[s].get(c, 0) for s in splits]
        table.add_row(shown(c), *map(str, row), str(sum(row)))
    totals = [sum(scan.counts[s].values()) for s in splits]
    table.add_row("[bold]all[/bold]", *map(str, totals), f"[bold]{sum(totals)}[/bold]")
    out.print(table)
    if "test" in scan.counts:
        out.print("test: scored once at the end of every run; strategies choose on val only")
    sz = scan.sizes
    out.print(f"image size: min {sz.min_width}x{sz.min_height}, median {sz.median_width:.0f}x{sz.median_height:.0f}, "
              f"max {sz.max_width}x{sz.max_height}; shorter side below " +
              ", ".join(f"{k}px: {v}" for k, v in sorted(sz.smaller_than.items())))
    out.print("colour modes: " + ", ".join(f"{m} {n}" for m, n in sorted(scan.modes.items(), key=lambda kv: -kv[1])))
    out.print(f"ignored: {scan.ignored_hidden} hidden, {scan.ignored_non_image} non-image files, "
              f"{scan.ignored_unlabeled} images outside any class folder")
    if scan.ignored_extensions:
        exts = ", ".join(f"{shown(e or '(none)')} {n}" for e, n in sorted(scan.ignored_extensions.items(), key=lambda kv: -kv[1]))
        out.print(f"  non-image files by extension: {exts} (advisor reads {', '.join(sorted(IMAGE_EXTENSIONS))})",
                  soft_wrap=True)
    if scan.external_links:
        out.print(f"followed {scan.external_links} symlink(s) to files or class folders outside {shown(scan.root)}",
                  soft_wrap=True)
    if scan.skipped:
        out.print(f"[yellow]skipped {len(scan.skipped)} unusable file(s):[/yellow]")
        for s in scan.skipped:
            out.print(f"  [yellow]{shown(s.path)}[/yellow]: {shown(s.reason)}", soft_wrap=True)
    else:
        out.print("skipped: none")


@contextmanager
def stage_bars():
    """Progress bars for the core's stages: yields its ``(stage, done, total)`` callback.

    The callback also has an ``event`` hook the runner passes on: each finished epoch prints a line
    above the bars (loss, held-out accuracy, learning rate), as fastai and Lightning do.
    """
    with Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=progress_console, transient=True) as bar:
        tasks: dict[str, int] = {}
        noted: list[bool] = []

        class Reporter:
            def __call__(self, stage: str, done: int, total: int) -> None:
                # A one-shot solve (the probe's fit) has no steps to count: a pulsing bar, not "0/1".
                one_shot = total == 1 and done == 0
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=None if one_shot else total, unit=_STAGE_UNITS.get(stage, "img")
                                                if not one_shot else "")
                bar.update(tasks[stage], completed=done, total=None if one_shot else total)

            def event(self, record: dict) -> None:
                if record.get("event") != "epoch":
                    return
                share, whole = record.get("curve_images"), record.get("val_images")
                if not noted and isinstance(share, int) and isinstance(whole, int) and 0 < share < whole:
                    noted.append(True)  # once, above the first epoch line
                    bar.console.print(f"val figures per epoch: a stratified {share} of the {whole} validation images "
                                      "(the final accuracy: all of them)", highlight=False, soft_wrap=True)
                hold = record.get("holdout_accuracy")
                bar.console.print(
                    f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f}  val loss {record['val_loss']:.4f}  "
                    f"val acc {record['val_accuracy']:.4f}" + (f"  hold-out acc {hold:.4f}" if hold is not None else "")
                    + f"  lr {record['lr']:.2e}  {record['seconds']:.0f} s", highlight=False, soft_wrap=True)

        yield Reporter()


def _iv(iv, fmt: str = ".3f") -> str:
    return f"{iv.value:{fmt}} [{iv.low:{fmt}}, {iv.high:{fmt}}]"


def render_profile(p) -> None:
    splits = ", ".join(f"{k} {v}" for k, v in p.images_per_split.items())
    out.print(f"[bold]{shown(p.dataset)}[/bold]: {p.images_total} images, {p.num_classes} classes ({splits}); split from {p.split_source}"
              + (f" (seed {p.split_seed})" if p.split_seed is not None else ""), soft_wrap=True)
    out.print(f"training images per class: min {p.train_per_class_min}, median {p.train_per_class_median:.0f}; "
              f"imbalance (largest/smallest) {p.imbalance_ratio:.2f}")
    sz = p.sizes
    out.print(f"image size: median {sz.median_width:.0f}x{sz.median_height:.0f} (min {sz.min_width}x{sz.min_height}); "
              f"{p.smaller_than_input} with shorter side below the backbone's {p.input_size} px input")
    if p.greyscale_share is not None:
        out.print(f"greyscale: {_iv(p.greyscale_share, '.0%')} of the sample ({p.greyscale_by_mode} files stored single-channel)")
    out.print(f"duplicates: {len(p.exact_duplicates)} exact groups (all images), {len(p.near_duplicates)} near groups "
              f"(cosine >= {p.near_duplicate_threshold} on the {p.near_duplicate_sample}-image sample); "
              f"{p.cross_split_duplicates} cross the train/val split, {p.conflicting_label_duplicates} with conflicting labels")
    for g in (p.exact_duplicates + p.near_duplicates)[:5]:
        out.print(f"  [dim]{g.kind}: " + "  ".join(f"{shown(path)} ({s}/{shown(lab)})" for path, s, lab in zip(g.paths, g.splits, g.labels)) + "[/dim]", soft_wrap=True)
    if p.skipped:
        out.print(f"[yellow]skipped {len(p.skipped)} unusable file(s)[/yellow] (advisor inspect lists them)")
    sim = p.similarity
    if sim is None:
        out.print("[yellow]similarity not measured (fewer than 4 usable images)[/yellow]")
        return
    t = Table(title=f"Similarity to ImageNet ({sim.backbone}, {sim.sample_size} images, {sim.bootstrap_rounds} bootstrap resamples)",
              title_justify="left")
    for c in ("signal", "measured [95% CI]", "ImageNet-like", "similarity [95% CI]", "in score"):
        t.add_column(c)
    for s in sim.signals:
        if not s.available:
            t.add_row(s.name, f"[dim]unavailable: {shown(s.unavailable_reason)}[/dim]", "", "", "no")
            continue
        t.add_row(s.name, _iv(s.raw), "" if s.null is None else f"{s.null:.3f}",
                  _iv(s.similarity) if s.similarity else "", "yes" if s.in_score else "no")
    t.add_row("[bold]combined[/bold]", "", "", f"[bold]{_iv(sim.score)}[/bold]", "")
    out.print(t)
    if sim.bn_by_depth:
        d = Table(title="BatchNorm shift by depth (per-channel Fréchet distance / running variance)", title_justify="left")
        for c in ("depth", "layers", "shift [95% CI]", "excess over ImageNet", "dead channels"):
            d.add_column(c)
        for row in sim.bn_by_depth:
            d.add_row(row.stage, str(row.layers), _iv(row.shift), "" if row.excess is None else f"{row.excess:+.3f}",
                      str(row.skipped_channels))
        out.print(d)
        out.print(f"shift pattern: [bold]{sim.shift_pattern}[/bold]: {shown(sim.shift_pattern_reason)}")
    if p.tap_evidence:
        e = Table(title=f"Transferability by depth ({sim.sample_size}-image sample)", title_justify="left")
        for c in ("tap", "dim", "LogME", "k-NN accuracy (5-fold)"):
            e.add_column(c)
        best = max(p.tap_evidence, key=lambda r: (r.knn_accuracy, r.logme)).tap
        for r in p.tap_evidence:
            mark = " [bold]<- best[/bold]" if r.tap == best else ""
            e.add_row(r.tap, str(r.dim), f"{r.logme:.3f}", f"{r.knn_accuracy:.3f}{mark}")
        out.print(e)
    for s in sim.signals:
        if s.available and s.method:
            out.print(f"[dim]{s.name}: {shown(s.method)}[/dim]", soft_wrap=True)
    out.print(f"[dim]combined: {shown(sim.method)}[/dim]", soft_wrap=True)


def render_result(outcome, *, verbose: bool = False) -> None:
    """A finished run: the accuracy, where the report is; ``verbose`` adds what the strategy chose and per-class scores."""
    from advisor.report import TEST_NOTE, accuracy_phrase, calibration_phrase, score_phrase, selected_items

    r = outcome.result
    m = r.metrics
    out.print(f"[bold green]{r.strategy}[/bold green]: validation accuracy "
              + accuracy_phrase(m, emphasis=lambda s: f"[bold]{s}[/bold]", loss=verbose))  # the loss: in the report
    if r.test is not None:
        out.print("test accuracy " + score_phrase(r.test, emphasis=lambda s: f"[bold]{s}[/bold]") + f" ({TEST_NOTE})")
    if r.calibration is not None:
        out.print(f"probabilities {calibration_phrase(r.calibration, short=not verbose)}")
    out.print(f"trained {r.trainable_params:,} of {r.total_params:,} parameters in {r.seconds:.1f} s on {r.device}")
    invalid = int(r.selected.get("cache_invalid") or 0) + int(r.selected.get("decoded_cache_invalid") or 0)
    if invalid:
        out.print(f"[yellow]{invalid} cached entr{'y was' if invalid == 1 else 'ies were'} invalid and "
                  f"{'was' if invalid == 1 else 'were'} recomputed[/yellow]")
    if not verbose:
        out.print(f"report: [bold]{shown(display_path(Path(outcome.run_dir) / 'report.html'))}[/bold]")
        out.print(f"predict: advisor predict {shown(display_path(outcome.run_dir))} IMAGES")
        return
    sel = selected_items(r)
    if sel:
        t = Table(title="What the strategy chose", title_justify="left", show_header=False)
        t.add_column("setting", style="bold")
        t.add_column("value", overflow="fold")
        for k, v in sel.items():
            t.add_row(k, shown(v))
        out.print(t)
    if r.sweep:
        t = Table(title="Layer sweep (cross-validated on the training split)", title_justify="left")
        for c in ("taps", "dim", "CV accuracy", "L2"):
            t.add_column(c)
        for row in r.sweep:
            t.add_row(", ".join(row["taps"]), str(row["dim"]), f"{row['cv_accuracy']:.4f}", f"{row['l2']:g}")
        out.print(t)
    out.print(_per_class_table("Validation per class", m.per_class))
    out.print(f"artifacts in [bold]{shown(outcome.run_dir)}[/bold]: model.safetensors + model.json, metrics.json, report.md, events.jsonl",
              soft_wrap=True)
    out.print(f"report: [bold]{shown(Path(outcome.run_dir) / 'report.html')}[/bold] (open it in a browser)", soft_wrap=True)
    out.print(f"predict with: advisor predict {shown(outcome.run_dir)} IMAGE_OR_FOLDER", soft_wrap=True)


def _per_class_table(title: str, per_class) -> Table:
    t = Table(title=title, title_justify="left")
    for c in ("class", "precision", "recall", "f1", "support"):
        t.add_column(c)
    for c in per_class:
        t.add_row(shown(c.name), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    return t


def render_score(score) -> None:
    """``advisor evaluate``: the accuracy with its interval, then per class (the classes present)."""
    from advisor.report import score_phrase

    out.print(f"{score.split} accuracy " + score_phrase(score, emphasis=lambda s: f"[bold]{s}[/bold]")
              + f" on {shown(display_path(score.dataset))}" + (", each image averaged with its mirror image" if score.tta else ""),
              soft_wrap=True)
    seen = score.seen_train + score.seen_val
    if seen and score.seen_included:
        out.print(f"[yellow]{seen} of the {score.n} images scored are the run's own ({score.seen_train} trained on, "
                  f"{score.seen_val} validated on): this is not a test accuracy[/yellow]", soft_wrap=True)
    elif seen:
        out.print(f"left out {seen} image(s) the run trained or validated on ({score.seen_train} trained on, "
                  f"{score.seen_val} validated on; --include-seen scores them too)", soft_wrap=True)
    elif score.seen_note:
        out.print(f"[yellow]the images were not checked against the run's own: {score.seen_note}[/yellow]", soft_wrap=True)
    out.print(_per_class_table(f"{score.split.capitalize()} per class", [c for c in score.per_class if c.support]))
    names = [c.name for c in score.per_class]
    pairs = sorted(((n, t, p) for t, row in enumerate(score.confusion) for p, n in enumerate(row) if n and t != p), reverse=True)
    if pairs:
        out.print("most confused (true -> predicted): " + ", ".join(f"{shown(names[t])} -> {shown(names[p])} {n}"
                                                                    for n, t, p in pairs[:3]), soft_wrap=True)
    if score.skipped:
        out.print(f"[yellow]{score.skipped} image(s) could not be read and were not scored[/yellow]")
    if score.evidence_dir:
        out.print(f"evidence pictures: {score.evidence_pictures} in {shown(score.evidence_dir)}, one per mistake, the most "
                  "confident first (the crop the model saw, beside it vermillion where the image favours the predicted "
                  "class, blue where the true one)", soft_wrap=True)


def display_path(path: str | os.PathLike) -> str:
    """A path as short as it can be said: relative to the working folder when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def shorten_left(text: str, width: int) -> str:
    """``text`` cut from the left to ``width`` characters (file names keep their ends: the part that differs)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def render_predictions(rep, *, top_k: int) -> None:
    """``advisor predict``: one row per image, its name cut from the left when it must be."""
    tta = ", each image averaged with its mirror image" if rep.tta else ""
    t = Table(title=f"{rep.strategy} model from {shown(rep.run_dir)}{tta}", title_justify="left")
    t.add_column("image", no_wrap=True)
    for i in range(min(top_k, len(rep.classes))):
        t.add_column(f"top {i + 1}")
    # Each file's name, cut from the left when it must be (the end is what tells images apart).
    name_width = max(16, out.width - 2 - sum(14 for _ in range(min(top_k, len(rep.classes)))) - 4)
    for p in rep.predictions:
        t.add_row(shown(shorten_left(display_path(p.path), name_width)), *[f"{shown(c.label)} {c.probability:.3f}" for c in p.top])
    out.print(t)
    if rep.skipped:
        out.print(f"[yellow]skipped {len(rep.skipped)} file(s):[/yellow]")
        for s in rep.skipped:
            out.print(f"  [yellow]{shown(s.path)}[/yellow]: {shown(s.reason)}", soft_wrap=True)
    if rep.ignored:
        out.print(f"ignored {rep.ignored} non-image or hidden file(s)")
    if rep.evidence_dir:
        n = sum(p.evidence is not None for p in rep.predictions)
        out.print(f"evidence pictures: {n} in {shown(rep.evidence_dir)} (the crop the model saw, beside it vermillion "
                  "where the image favours the top class, blue where the runner-up)", soft_wrap=True)


def write_predictions_csv(rep, path: Path) -> None:
    """``advisor predict --csv``: the file written atomically, and said on stderr (stdout may be --json)."""
    from advisor.core.io import write_text_atomic
    from advisor.report import predictions_csv

    err_console.print(f"predictions written to {shown(write_text_atomic(path, predictions_csv(rep)))}", soft_wrap=True)


def render_calibration(res, record_path) -> None:
    """``advisor calibrate``: the local record, the recorded forecasts' error, the refit's held-out error."""
    out.print(f"local track record: {shown(record_path)}, {res.local_runs} runs", soft_wrap=True)
    if res.skipped_lines:
        out.print(f"[yellow]{len(res.skipped_lines)} damaged line(s) skipped[/yellow] (lines "
                  f"{', '.join(map(str, res.skipped_lines[:10]))}{'...' if len(res.skipped_lines) > 10 else ''})")
    if res.mean_abs_error_points is not None:
        out.print(f"recorded forecasts: mean |forecast - achieved| {res.mean_abs_error_points:.2f} points; the 80 % "
                  f"interval held the achieved value in {res.interval_coverage:.0%} of runs")
    for s, before in res.gain_error_shipped.items():
        after = res.gain_error_with_local.get(s)
        out.print(f"{s} gain, held out one dataset at a time: {before:.2f} points on the shipped records"
                  + (f"; {after:.2f} with this machine's added" if after is not None else ""))
    if res.cv_gap_shipped is not None:
        out.print(f"probe validation-vs-CV gap (median): {res.cv_gap_shipped:+.2f} points on the shipped records; "
                  f"{res.cv_gap_with_local:+.2f} with this machine's added")
    out.print("the decision thresholds are calibrated by benchmarks/calibrate.py from the suite's measurements, "
              "not here", soft_wrap=True)
    out.print(f"records: {shown(', '.join(res.records))}", soft_wrap=True)


def render_comparison(res) -> None:
    """``advisor compare``: every strategy's accuracy, its paired gap to the best, time, what it chose; the verdict."""
    t = Table(title=f"{shown(res.dataset)}: strategies under one budget (input {res.input_size or 'default'} px, "
                    f"fine-tune epochs cap {res.epochs_cap or 'plan'})", title_justify="left")
    for c in ("strategy", "val accuracy [95% CI]", "behind best (points) [95% CI]", "wall time", "trainable params", "chose", ""):
        t.add_column(c)
    for r in res.rows:
        mark = " ".join(x for x in ("[green]recommended[/green]" if r.recommended else "", "[bold]best[/bold]" if r.winner else "",
                                    "tied" if r.tied_with_best and not r.winner else "") if x)
        chose = ", ".join(f"{k} {shown(v)}" for k, v in r.selected.items())
        behind = "-" if r.winner else f"{r.behind_best:.2f} [{r.behind_best_ci[0]:.2f}, {r.behind_best_ci[1]:.2f}]"
        t.add_row(r.strategy, f"{r.val_accuracy:.4f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}]", behind, f"{r.seconds:.1f} s",
                  f"{r.trainable_params:,}", chose, mark)
    out.print(t)
    out.print(f"{shown(res.verdict)}. Regret [bold]{res.regret_points:.2f}[/bold] accuracy points "
              f"[{res.regret_ci[0]:.2f}, {res.regret_ci[1]:.2f}]; recommend took {res.recommend_seconds:.1f} s = "
              f"{res.recommend_cost_fraction:.1%} of running the strategies ({res.compare_seconds:.1f} s)")
    out.print(f"saved to {shown(res.saved_to)}; report: [bold]{shown(Path(res.saved_to).parent / 'report.html')}[/bold]",
              soft_wrap=True)


