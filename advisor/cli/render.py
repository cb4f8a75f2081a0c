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


def render_recommendation(rec, *, verbose: bool = False) -> None:
    """The advice: compact by default (at most ~30 lines at 80 columns); ``verbose``: the whole profile and every rule."""
    if not verbose:
        return _render_recommendation_compact(rec)
    render_profile(rec.profile)
    th = rec.thresholds
    sim = rec.profile.similarity
    sim_txt = _iv(sim.score, ".2f") if sim else "not measured"
    grid = Table(title="Placement in the transfer-learning table", title_justify="left", show_lines=True)
    grid.add_column("")
    grid.add_column(f"similar (score >= {th['similarity']:.2f})")
    grid.add_column(f"different (score < {th['similarity']:.2f})")
    cells = {("small", "similar"): "linear-probe (R1)", ("small", "different"): "layer-probe (R2)",
             ("large", "similar"): "partial-finetune (R3)", ("large", "different"): "full-finetune (R4)"}
    for size, label in (("small", "small"), ("large", f"large (>= {th['large_per_class']:.0f}/class and >= {th['large_total']:.0f})")):
        row = [label]
        for simc in ("similar", "different"):
            text = cells[(size, simc)]
            here = (size, simc) == (rec.size_class, rec.similarity_class)
            row.append(f"[reverse bold] {text} [/reverse bold]" if here else f"[dim]{text}[/dim]")
        grid.add_row(*row)
    out.print(grid)
    p = rec.profile
    out.print(f"size: median {p.train_per_class_median:.0f} training images per class (threshold {th['large_per_class']:.0f}), "
              f"{p.train_images} in total (threshold {th['large_total']:.0f}) -> [bold]{rec.size_class}[/bold]")
    out.print(f"similarity: {sim_txt} (threshold {th['similarity']:.2f}) -> [bold]{rec.similarity_class}[/bold]")
    if p.flip_check is not None:
        fc = p.flip_check
        out.print(f"horizontal flips: probe accuracy {fc.accuracy:.3f} on held-out images, {fc.flipped_accuracy:.3f} mirrored "
                  f"(drop {fc.drop:+.3f} ± {fc.drop_se:.3f}, {fc.images} images) -> "
                  f"[bold]{'labels change: no flips' if 'R17' in rec.plan.rule_ids else 'labels survive: flips allowed'}[/bold]")
    out.print("[bold]Rules that fired[/bold]")
    for h in rec.hits:
        out.print(f"  [cyan]{h.id}[/cyan] ({h.kind}) {shown(h.title)}: {shown(h.rationale)}", soft_wrap=True)
    out.print("[bold]Boundaries[/bold]")
    for b in rec.boundaries:
        out.print(f"  {b.axis}: {shown(b.margin)}; {shown(b.flip)}", soft_wrap=True)
    for w in rec.warnings:
        out.print(f"[yellow]warning:[/yellow] {shown(w)}", soft_wrap=True)
    for n in rec.evidence_notes:
        out.print(f"[magenta]evidence:[/magenta] {shown(n)}", soft_wrap=True)
    plan = rec.plan
    out.print(f"[bold green]Recommended: {rec.strategy}[/bold green] (rules {', '.join(plan.rule_ids)})")
    if rec.decision is not None:
        out.print(f"[bold]why:[/bold] {shown(rec.decision.sentence)}", soft_wrap=True)
    r = plan.recipe
    fields = {"taps": ", ".join(plan.taps) or None, "frozen stages": plan.frozen_stages, "trainable stages": plan.trainable_stages,
              "batch size": plan.batch_size, "input size": plan.input_size, "class weighting": plan.class_weighting or None,
              "balanced sampler": plan.balanced_sampler or None}
    if r is not None:
        fields.update({"epochs": r.epochs, "lr head": f"{r.lr_head:.1e}", "lr backbone": f"{r.backbone_lr:.1e}",
                       "weight decay": f"{r.weight_decay:g}", "label smoothing": f"{r.label_smoothing:g}",
                       "augment": r.augment + (" + flips" if r.hflip else ", no flips"), "BatchNorm": r.bn,
                       "EMA": "off" if r.ema is None else f"window {r.ema:.0%} of steps",
                       "drop-path": f"{r.drop_path:g}" if r.drop_path else None,
                       "early stopping": r.early_stopping.policy if r.early_stopping.policy != "none" else "none (full schedule)"})
    out.print("plan: " + "; ".join(f"{k} {shown(v)}" for k, v in fields.items() if v is not None), soft_wrap=True)
    for n in plan.notes:
        out.print(f"  [dim]- {shown(n)}[/dim]", soft_wrap=True)
    if rec.forecast is not None and rec.forecast.strategies:
        t = Table(title="Forecast before training (accuracy with an 80 % interval; time on this device)", title_justify="left")
        for c in ("strategy", "accuracy", "80 % interval", "time", "from"):
            t.add_column(c, overflow="fold")
        for f in rec.forecast.strategies:
            when = f"{f.seconds:.0f} s" if f.seconds is not None else "-"
            if f.epochs and f.seconds_per_epoch is not None:
                when += f" ({f.epochs} x {f.seconds_per_epoch:.0f} s)"
            mark = " ◆" if f.strategy == rec.strategy else ""
            t.add_row(f.strategy + mark, f"{f.accuracy:.3f}", f"{f.low:.3f}-{f.high:.3f}", when, shown(f.method))
        out.print(t)
        for n in rec.forecast.notes:
            out.print(f"  [dim]- {shown(n)}[/dim]", soft_wrap=True)
        for n in rec.forecast.extrapolating:
            out.print(f"  [yellow]extrapolating:[/yellow] {shown(n)}", soft_wrap=True)
        sources = dict.fromkeys(f.time_source for f in rec.forecast.strategies if f.time_source)
        for n in sources:
            out.print(f"  [dim]- times: {shown(n)}[/dim]", soft_wrap=True)
    if rec.seconds is not None:
        out.print(f"[dim]measured in {rec.seconds:.1f} s[/dim]")


def render_result(outcome, *, verbose: bool = False) -> None:
    """A finished run: the accuracy, where the report is; ``verbose`` adds what the strategy chose and per-class scores."""
    from advisor.report import accuracy_phrase, selected_items

    r = outcome.result
    m = r.metrics
    out.print(f"[bold green]{r.strategy}[/bold green]: validation accuracy "
              + accuracy_phrase(m, emphasis=lambda s: f"[bold]{s}[/bold]"))
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
    t = Table(title="Validation per class", title_justify="left")
    for c in ("class", "precision", "recall", "f1", "support"):
        t.add_column(c)
    for c in m.per_class:
        t.add_row(shown(c.name), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    out.print(t)
    out.print(f"artifacts in [bold]{shown(outcome.run_dir)}[/bold]: model.safetensors + model.json, metrics.json, report.md, events.jsonl",
              soft_wrap=True)
    out.print(f"report: [bold]{shown(Path(outcome.run_dir) / 'report.html')}[/bold] (open it in a browser)", soft_wrap=True)
    out.print(f"predict with: advisor predict {shown(outcome.run_dir)} IMAGE_OR_FOLDER", soft_wrap=True)


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


_CELLS = {("small", "similar"): "linear-probe", ("small", "different"): "layer-probe",
          ("large", "similar"): "partial-finetune", ("large", "different"): "full-finetune"}


def _render_recommendation_compact(rec) -> None:
    p, th, plan = rec.profile, rec.thresholds, rec.plan
    sim = p.similarity
    splits = ", ".join(f"{k} {v}" for k, v in p.images_per_split.items())
    out.print(f"[bold]{shown(Path(p.dataset).name)}[/bold]: {p.images_total} images, {p.num_classes} classes ({splits})")
    size_why = (f"median {p.train_per_class_median:.0f}/class vs {th['large_per_class']:.0f}, "
                f"{p.train_images} vs {th['large_total']:.0f} in total")
    sim_why = (f"{_iv(sim.score, '.2f')} vs {th['similarity']:.2f}" if sim is not None and sim.score is not None
               else "not measured")
    out.print(f"2x2 table: [bold]{rec.size_class}[/bold] ({size_why}) x [bold]{rec.similarity_class}[/bold] "
              f"({sim_why}) -> {_CELLS[(rec.size_class, rec.similarity_class)]} ({rec.quadrant_rule})")
    out.print(f"[bold green]Recommended: {rec.strategy}[/bold green] (rules {', '.join(plan.rule_ids)})")
    if rec.decision is not None:
        out.print(f"[bold]why:[/bold] {shown(rec.decision.sentence)}")
    r = plan.recipe
    fields = {"taps": ", ".join(plan.taps) or None, "frozen stages": plan.frozen_stages,
              "epochs": r.epochs if r is not None else None, "batch": plan.batch_size, "input": f"{plan.input_size} px"}
    out.print("plan: " + "; ".join(f"{k} {shown(v)}" for k, v in fields.items() if v is not None))
    notes = [("warning", "yellow", w) for w in rec.warnings] + [("evidence", "magenta", n) for n in rec.evidence_notes]
    for kind, colour, text in notes[:3]:
        out.print(f"[{colour}]{kind}:[/{colour}] {shown(text)}")
    if len(notes) > 3:
        out.print(f"[dim]({len(notes) - 3} more warnings and notes: --verbose or report.html)[/dim]")
    if rec.forecast is not None and rec.forecast.strategies:
        from rich import box

        methods = list(dict.fromkeys(f.method for f in rec.forecast.strategies))
        t = Table(title="Forecast (accuracy, 80 % interval; time on this device)", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False)
        for c, justify in (("strategy", "left"), ("accuracy", "right"), ("interval", "right"), ("time", "right"), ("from", "right")):
            t.add_column(c, justify=justify, no_wrap=True)
        for f in rec.forecast.strategies:
            mark = " ◆" if f.strategy == rec.strategy else ""
            when = f"{f.seconds:.0f} s" if f.seconds is not None else "-"
            t.add_row(f.strategy + mark, f"{f.accuracy:.3f}", f"{f.low:.3f}-{f.high:.3f}", when, f"\\[{methods.index(f.method) + 1}]")
        out.print(t)
        for i, m in enumerate(methods, 1):
            out.print(f"[dim]\\[{i}] {shown(m)}[/dim]")
        for n in rec.forecast.extrapolating:
            out.print(f"[yellow]extrapolating:[/yellow] {shown(n)}")
    _render_more_data(rec)
    _render_label_issues(rec.profile)
    out.print("[dim]more: --verbose, --json or report.html (profile, every rule, figures)[/dim]")


def render_predictions(rep, *, top_k: int) -> None:
    """``advisor predict``: one row per image, its name cut from the left when it must be."""
    t = Table(title=f"{rep.strategy} model from {shown(rep.run_dir)}", title_justify="left")
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


_SHORT = {"linear-probe": "linear", "layer-probe": "layer", "partial-finetune": "partial", "full-finetune": "full"}


def _p(x: float) -> str:
    """An accuracy in two digits without the leading zero (.87; 1.0 as 1.0): four strategies fit 80 columns."""
    return "1.0" if x >= 0.995 else f"{x:.2f}"[1:]


def _render_more_data(rec) -> None:
    """Each strategy's forecast at today's images per class and at 2x and 4x, with intervals; the size boundary."""
    from rich import box

    m = rec.more_data
    if m is None or len(m.rows) < 2:
        return
    names = list(m.rows[0].strategies)
    t = Table(title="More images: forecast accuracy (80 % interval)", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, show_edge=False)
    t.add_column("per class", no_wrap=True)
    for n in names:
        t.add_column(_SHORT.get(n, n), justify="right", no_wrap=True)
    for row in m.rows:
        label = f"{row.per_class:.0f}" + (" today" if row.factor == 1 else f" ({row.factor}x)")
        t.add_row(label, *[f"{_p(a)} ({_p(lo)}-{_p(hi)})" for a, lo, hi in (row.strategies[n] for n in names)])
    out.print(t)
    out.print(f"[dim]size: {shown(m.boundary)}[/dim]")


def _render_label_issues(profile) -> None:
    """How many sampled images look mislabelled, and the worst few."""
    rep = profile.labels
    if rep is None or not rep.checked:
        return
    if not rep.issues:
        out.print(f"labels: none of the {rep.checked} sampled images looks mislabelled")
        return
    out.print(f"[yellow]labels:[/yellow] {len(rep.issues)} of {rep.checked} sampled images look mislabelled; "
              "the worst (all in --json, the report and label_issues.csv):")
    for issue in rep.issues[:3]:
        conf = f" ({issue.suggested_probability:.2f})" if issue.suggested_probability is not None else " (duplicate)"
        out.print(f"  {shown(shorten_left(display_path(issue.path), 44))}: {shown(issue.given)} -> "
                  f"{shown(issue.suggested)}{conf}")
