"""The advice on the terminal: the compact screen (placement, decision, forecast, more images, labels, backbones)
and, with --verbose, the whole profile and every rule. Renderers print finished results; they compute nothing.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from advisor.cli.render import _iv, display_path, out, render_profile, shorten_left, shown
from advisor.core.clock import top_stages


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
            when = seconds_text(f.seconds)
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
        most = f" (most in {top_stages(rec.stage_seconds, 3)})" if rec.stage_seconds else ""
        out.print(f"[dim]measured in {rec.seconds:.1f} s{most}[/dim]")


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
            when = seconds_text(f.seconds)
            t.add_row(f.strategy + mark, f"{f.accuracy:.3f}", f"{f.low:.3f}-{f.high:.3f}", when, f"\\[{methods.index(f.method) + 1}]")
        out.print(t)
        for i, m in enumerate(methods, 1):
            out.print(f"[dim]\\[{i}] {shown(m)}[/dim]")
        for n in rec.forecast.extrapolating:
            out.print(f"[yellow]extrapolating:[/yellow] {shown(n)}")
    _render_more_data(rec)
    _render_label_issues(rec.profile)
    _render_backbones(rec)
    out.print("[dim]more: --verbose, --json or report.html (profile, every rule, figures)[/dim]")


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
    if rep.caution():  # a weak probe: say what the count is, not "mislabelled"
        out.print(f"[yellow]labels:[/yellow] {len(rep.issues)} of {rep.checked} sampled images disagree with a probe right "
                  f"on only {rep.probe_accuracy:.0%} of them (too weak to tell wrong labels from hard images); the "
                  "strongest (all in --json, the report and label_issues.csv):")
    else:
        out.print(f"[yellow]labels:[/yellow] {len(rep.issues)} of {rep.checked} sampled images look mislabelled; "
                  "the worst (all in --json, the report and label_issues.csv):")
    for issue in rep.issues[:3]:
        conf = f" ({issue.suggested_probability:.2f})" if issue.suggested_probability is not None else " (duplicate)"
        out.print(f"  {shown(shorten_left(display_path(issue.path), 44))}: {shown(issue.given)} -> "
                  f"{shown(issue.suggested)}{conf}")


def _render_backbones(rec) -> None:
    """With --backbones: each candidate's sample evidence and best forecast, best first."""
    from rich import box

    r = rec.backbones
    if r is None:
        return
    t = Table(title="Backbones (profiling sample; best forecast)", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False, show_edge=False)
    for c in ("backbone", "k-NN", "LogME", "best strategy", "forecast", "time"):
        t.add_column(c, no_wrap=True, justify="left" if c in ("backbone", "best strategy") else "right")
    for o in r.options:
        secs = o.strategies.get(o.best_strategy, (0, 0, 0, None))[3]
        t.add_row(shown(o.backbone) + (" ◆" if o.backbone == r.chosen else ""),
                  "-" if o.knn_accuracy is None else f"{o.knn_accuracy:.3f}", "-" if o.logme is None else f"{o.logme:.3f}",
                  o.best_strategy, f"{o.best_accuracy:.3f}", "-" if secs is None else f"{secs:.0f} s")
    out.print(t)
    out.print(f"[dim]{shown(r.sentence)}[/dim]")


def seconds_text(seconds: float | None) -> str:
    """A forecast time as the table shows it: whole seconds, "<1 s" for a cached probe's fraction, "-" for none."""
    if seconds is None:
        return "-"
    return "<1 s" if round(seconds) < 1 else f"{seconds:.0f} s"
