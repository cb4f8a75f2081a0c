"""Command-line interface: parse, call the core, render what it returns.

Nothing here computes; every command calls one core function and renders its pydantic result
(or prints it as JSON with ``--json``). Errors raised by the core become one red line and a
non-zero exit code.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from advisor.errors import AdvisorError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Transfer-learning advisor: measure an image dataset, place it in the 2x2 table, run the advice.",
)


def _version(value: bool) -> None:
    if value:
        from advisor import __version__

        typer.echo(f"advisor {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines (errors still print).")) -> None:
    """Transfer-learning advisor: measure an image dataset, place it in the 2x2 table, run the advice."""
    if quiet:
        _progress_console.quiet = True
    from advisor import distributed

    # Under torchrun: join the process group; only rank 0 prints (errors still print on every rank).
    if not distributed.init_from_env(_argv_value("--device")).main:
        out.quiet = _progress_console.quiet = True
    distributed.apply_thread_policy()  # fewer threads when another job holds some of the cores


_ARGV: list[str] = []  # the arguments main() was called with (``--devices`` relaunches them under torchrun)


def _argv_value(option: str) -> str | None:
    args = _ARGV or sys.argv[1:]
    for i, a in enumerate(args):
        if a == option and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def _without_devices(args: list[str]) -> list[str]:
    out_args, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--devices":
            skip = True
        elif not a.startswith("--devices="):
            out_args.append(a)
    return out_args


def _relaunch(devices: int | None, device: str) -> None:
    """``--devices N`` (N > 1) outside torchrun: run this same command under torchrun on N processes."""
    from advisor import distributed

    if devices is None or devices <= 1 or distributed.from_env().world > 1:
        return
    import torch

    wanted = distributed.requested_device(device)
    if torch.cuda.is_available() and (wanted in (None, "auto") or str(wanted).startswith("cuda")):
        gpus = torch.cuda.device_count()
        if devices > gpus:  # NCCL refuses two ranks on one GPU; say so before starting any
            raise AdvisorError(f"--devices {devices} runs one process per GPU, but this machine has {gpus}",
                               hint=f"use --devices {gpus}, or --device cpu for {devices} CPU processes")
    rc, failure = distributed.launch(_without_devices(_ARGV or sys.argv[1:]), nproc=devices)
    if failure:
        err_console.print(f"[bold red]error:[/bold red] the distributed run stopped: {failure}; the other ranks were "
                          f"stopped too. Fine-tunes resume from their last checkpoint: advisor run --resume RUN_DIR "
                          f"--devices {devices}", soft_wrap=True)
    sys.exit(rc)
out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
_progress_console = Console(stderr=True, highlight=False)  # bars and epoch lines; --quiet silences it, not errors

DatasetArg = typer.Argument(..., help="Dataset: a folder (<class>/<img> or <split>/<class>/<img>) or a CSV manifest path,label[,split].")
BackboneOpt = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone name (see `advisor backbones`), timm/<name> or torchvision/<name>.")
WeightsOpt = typer.Option(None, "--weights", help="Weights file (.safetensors, or a state dict saved with torch.save).")
def _folder(value: Optional[Path]) -> Optional[Path]:
    """A folder option must not name an existing file (caught here, before any work)."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder; remove it or choose another path")
    return value


CacheOpt = typer.Option(None, "--cache-dir", callback=_folder,
                        help="Feature cache folder [default: $ADVISOR_CACHE_DIR or ~/.cache/advisor].")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
# Option ranges, checked before any work (click reports a value outside them with exit code 2).
MIN_INPUT, MAX_INPUT = 32, 1024  # below 32 px a stride-32 network sees a single pixel
WorkersOpt = typer.Option(None, "--workers", min=0, max=64, help="DataLoader worker processes [default: cores - 1].")
InputSizeOpt = typer.Option(None, "--input-size", min=MIN_INPUT, max=MAX_INPUT,
                            help=f"Input resolution in pixels, {MIN_INPUT}-{MAX_INPUT} (e.g. 128 for quick CPU runs).")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON instead of a table.")
DevicesOpt = typer.Option(None, "--devices", min=1, max=1024,
                          help="Processes on this machine (one per GPU, or CPU processes with gloo): relaunches "
                               "this command under torchrun with DistributedDataParallel.")


# C0/C1 controls (ESC starts terminal escape sequences) and the invisible bidi/zero-width marks
# that can make a name display as something else.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def shown(value: object) -> str:
    """A user-controlled string made safe for the terminal and for rich markup.

    Undecodable bytes of a file name and control characters are shown as ``\\xNN`` escapes,
    and ``[`` is escaped so that rich prints ``evil[red].jpg`` as it is, never as markup.
    """
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    text = _UNSAFE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
    return escape(text)


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
        console=_progress_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _print_json(model, **dump) -> None:
    """Plain JSON on stdout: rich would wrap long lines and break strings for machines."""
    if out.quiet:  # a rank other than 0 under torchrun
        return
    text = model.model_dump_json(indent=2, **dump) if hasattr(model, "model_dump_json") else json.dumps(model, indent=2)
    typer.echo(text)


def _fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value} is not strictly between 0 and 1 (e.g. 0.2)")
    return value


@app.command("backbones")
def backbones_cmd(json_out: bool = JsonOpt) -> None:
    """List bundled backbones, their size and whether their weights are available offline."""
    from advisor.backbones import list_backbones

    infos = list_backbones()
    if json_out:
        _print_json([i.model_dump() for i in infos])
        return
    table = Table(title="Backbones", title_justify="left")
    for col in ("name", "params", "weights offline", "where / how"):
        table.add_column(col)
    for i in infos:
        params = f"{i.params / 1e6:.2f} M" if i.params else "?"
        ok = "[green]yes[/green]" if i.weights_available else "[red]no[/red]"
        table.add_row(shown(i.name), params, ok, shown(i.weights_location or i.hint or ""))
    out.print(table)
    out.print("Any timm model: [bold]timm/<name>[/bold]; any torchvision model: [bold]torchvision/<name>[/bold] "
              "(weights from their local caches or --weights FILE).")


@app.command("inspect")
def inspect_cmd(
    dataset: Path = DatasetArg,
    json_out: bool = JsonOpt,
    val_fraction: float = typer.Option(0.2, "--val-fraction", callback=_fraction,
                                       help="Validation share when the dataset has no val split, between 0 and 1."),
    seed: int = typer.Option(0, help="Seed of the stratified split (recorded in the result)."),
) -> None:
    """Scan a dataset: classes, counts per split, skipped and ignored files, sizes, colour modes."""
    from advisor.data import scan_dataset

    scan = scan_dataset(dataset, val_fraction=val_fraction, seed=seed)
    if json_out:
        _print_json(scan, exclude={"samples"})
        return
    render_scan(scan)


def render_scan(scan) -> None:
    from advisor.data import IMAGE_EXTENSIONS

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


@app.command("features")
def features_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=4096,
                                             help="Images per forward pass [default: 32 on the CPU, 256 on a GPU]."),
    workers: Optional[int] = WorkersOpt,
    key: str = typer.Option("content", help="Cache key per image: content (file hash) or stat (path+size+mtime)."),
    json_out: bool = JsonOpt,
) -> None:
    """Extract pooled features of every tap for every image, and cache them on disk."""
    from advisor.backbones import create_backbone
    from advisor.data import scan_dataset
    from advisor.features import extract_features

    if key not in ("content", "stat"):
        raise AdvisorError(f"--key must be content or stat, got {key!r}")
    scan = scan_dataset(dataset)
    backbone_model = create_backbone(backbone, weights=weights)
    with progress_bar(f"features {shown(backbone_model.name)}") as cb:
        feature_set = extract_features(scan.samples, backbone_model, cache_dir=cache_dir, device=device, batch_size=batch_size,
                              num_workers=workers, key_mode=key, progress=cb)
    s = feature_set.summary
    if json_out:
        _print_json(s)
        return
    out.print(f"[bold]{s.images}[/bold] images: {s.from_cache} from cache, {s.computed} computed on {s.device}"
              + (f" at {s.images_per_s:.1f} img/s" if s.images_per_s else "") + f", {s.seconds:.1f} s")
    out.print("taps: " + ", ".join(f"{t} ({c})" for t, c in s.tap_channels.items()))
    if scan.skipped or s.failed:
        out.print(f"[yellow]skipped {len(scan.skipped) + len(s.failed)} unusable file(s)[/yellow] (see `advisor inspect`)")
        for f in s.failed:
            out.print(f"  [yellow]{shown(f.path)}[/yellow]: {shown(f.reason)}", soft_wrap=True)
    out.print(f"cached in {shown(s.cache_dir)}", soft_wrap=True)


SampleOpt = typer.Option(300, "--sample-size", min=4, max=100_000,
                         help="Images read for the similarity estimate (stratified by class), at least 4.")
SeedOpt = typer.Option(0, "--seed", help="Seed of the sample, the bootstrap and the split.")


@contextmanager
def stage_bars():
    """Progress bars for the core's stages: yields its ``(stage, done, total)`` callback.

    The callback also has an ``event`` hook the runner passes on: each finished epoch prints a line
    above the bars (loss, held-out accuracy, learning rate), as fastai and Lightning do.
    """
    with Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=_progress_console, transient=True) as bar:
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


def render_recommendation(rec) -> None:
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


@app.command("profile")
def profile_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Measure the dataset: size, balance, sizes, duplicates and leakage, similarity to ImageNet."""
    from advisor.profiler import profile_dataset

    with stage_bars() as cb:
        prof, _, _ = profile_dataset(dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed,
                                     device=device, cache_dir=cache_dir, progress=cb)
    if json_out:
        _print_json(prof)
        return
    render_profile(prof)


@app.command("recommend")
def recommend_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    save_plan: Optional[Path] = typer.Option(None, "--save-plan", help="Write the executable plan (JSON) here."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=1000,
                                         help="The fine-tune epoch cap you will run with; below the share of the "
                                              "schedule the track record measured, the forecast chooses."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall-time budget (15m, 90s, 1h): the strategy with the "
                                         "best forecast that fits it, and what more time would buy."),
    input_size: Optional[int] = InputSizeOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Profile the dataset, place it in the 2x2 table, explain why, and print the plan."""
    from advisor.advise import parse_duration, recommend_dataset, save_advice

    budget_seconds = parse_duration(budget) if budget is not None else None
    with stage_bars() as cb:
        rec = recommend_dataset(dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed,
                                device=device, cache_dir=cache_dir, progress=cb, epochs_cap=epochs,
                                budget_seconds=budget_seconds, input_size=input_size)
    saved = save_advice(rec, save_plan) if save_plan is not None else None
    if json_out:
        _print_json(rec)
        return
    render_recommendation(rec)
    if saved is not None:
        out.print(f"plan saved to {shown(saved[0])}, its report to {shown(saved[1])}", soft_wrap=True)


def render_result(outcome) -> None:
    from advisor.report import accuracy_phrase, selected_items

    r = outcome.result
    m = r.metrics
    out.print(f"[bold green]{r.strategy}[/bold green]: validation accuracy "
              + accuracy_phrase(m, emphasis=lambda s: f"[bold]{s}[/bold]"))
    out.print(f"trained {r.trainable_params:,} of {r.total_params:,} parameters in {r.seconds:.1f} s on {r.device}")
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


@app.command("run")
def run_cmd(
    dataset: Optional[Path] = typer.Argument(None, help="Dataset folder or CSV manifest (not needed with --resume)."),
    auto: bool = typer.Option(False, "--auto", help="Profile, recommend, print the rationale, then run the plan."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force a strategy: linear-probe, layer-probe, partial-finetune, full-finetune."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Run a plan saved by `advisor recommend --save-plan`."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run from its directory."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", callback=_folder, help="Where run directories are created."),
    backbone: str = BackboneOpt,
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=1000, help="Override the plan's epochs (fine-tunes)."),
    input_size: Optional[int] = InputSizeOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    workers: Optional[int] = WorkersOpt,
    keep_checkpoint: bool = typer.Option(False, "--keep-checkpoint",
                                         help="Keep checkpoints/ (weights + optimiser) after the run finishes."),
    budget: Optional[str] = typer.Option(None, "--budget", help="With --auto: a wall-time budget (15m, 90s, 1h); the "
                                         "strategy with the best forecast that fits it runs."),
    devices: Optional[int] = DevicesOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train a classifier: --auto follows the advice, --strategy forces one, --plan runs a saved plan, --resume continues."""
    from advisor import runner
    from advisor.advise import parse_duration

    budget_seconds = parse_duration(budget) if budget is not None else None
    modes = sum([auto, strategy is not None and plan_file is None, plan_file is not None, resume is not None])
    if modes != 1:
        raise AdvisorError("choose exactly one of --auto, --strategy NAME, --plan FILE or --resume RUN_DIR",
                           hint="e.g. advisor run --auto DATASET")
    if resume is None and plan_file is None and dataset is None:
        raise AdvisorError("a DATASET is needed", hint="advisor run --auto DATASET")
    if strategy is not None:
        from strategies import strategy_names

        if strategy not in strategy_names():
            raise AdvisorError(f"unknown strategy {strategy!r}", hint=f"choose from {', '.join(strategy_names())}")
    _relaunch(devices, device)  # after the checks above: a bad command line fails once, not once per rank
    dev = None if device == "auto" else device
    show = (lambda rec: render_recommendation(rec)) if (auto and not json_out) else None
    try:
        with stage_bars() as cb:
            if resume is not None:
                outcome = runner.resume_run(resume, device=dev, progress=cb)
            elif plan_file is not None:
                from advisor.advise import load_plan

                plan = runner.apply_overrides(load_plan(plan_file), epochs=epochs, input_size=input_size, strategy=strategy)
                outcome = runner.run_plan(plan, dataset=dataset, runs_dir=runs_dir, device=dev, cache_dir=cache_dir,
                                          num_workers=workers, progress=cb, keep_checkpoint=keep_checkpoint)
            else:
                outcome = runner.auto_run(dataset, strategy=strategy, backbone=backbone, sample_size=sample_size, seed=seed,
                                          runs_dir=runs_dir, device=dev, cache_dir=cache_dir, num_workers=workers,
                                          epochs=epochs, input_size=input_size, progress=cb, on_recommendation=show,
                                          keep_checkpoint=keep_checkpoint, budget_seconds=budget_seconds)
    except runner.RunInterrupted as stop:
        err_console.print(f"[yellow]interrupted[/yellow]: checkpoint saved; resume with: advisor run --resume {shown(stop.run_dir)}",
                          soft_wrap=True)
        sys.exit(130)
    if json_out:
        _print_json(outcome)
        return
    render_result(outcome)


@app.command("predict")
def predict_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by `advisor run`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, max=1000, help="Classes per image."),
    device: str = DeviceOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Classify images with a trained run: top-k classes with probabilities."""
    from advisor.predict import predict

    rep = predict(run_dir, images, top_k=top_k, device=None if device == "auto" else device)
    if json_out:
        _print_json(rep)
        return
    t = Table(title=f"{rep.strategy} model from {shown(rep.run_dir)}", title_justify="left")
    t.add_column("image")
    for i in range(min(top_k, len(rep.classes))):
        t.add_column(f"top {i + 1}")
    for p in rep.predictions:
        t.add_row(shown(p.path), *[f"{shown(c.label)} {c.probability:.3f}" for c in p.top])
    out.print(t)
    if rep.skipped:
        out.print(f"[yellow]skipped {len(rep.skipped)} file(s):[/yellow]")
        for s in rep.skipped:
            out.print(f"  [yellow]{shown(s.path)}[/yellow]: {shown(s.reason)}", soft_wrap=True)
    if rep.ignored:
        out.print(f"ignored {rep.ignored} non-image or hidden file(s)")


@app.command("compare")
def compare_cmd(
    dataset: Path = DatasetArg,
    strategies: Optional[str] = typer.Option(None, "--strategies", help="Comma-separated subset (default: all four)."),
    backbone: str = BackboneOpt,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", callback=_folder,
                                  help="Where the comparison's runs and compare.json go."),
    input_size: Optional[int] = InputSizeOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=1000, help="Epoch cap for the fine-tunes (one budget for all)."),
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    workers: Optional[int] = WorkersOpt,
    devices: Optional[int] = DevicesOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run every strategy on the same split and backbone; show accuracy, time, parameters and the advice's regret."""
    from advisor.compare import check_strategies, compare

    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    check_strategies(names)
    _relaunch(devices, device)  # after the check: a bad command line fails once, not once per rank
    with stage_bars() as cb:
        res = compare(dataset, strategies=names, backbone=backbone, runs_dir=runs_dir, input_size=input_size, epochs=epochs,
                      sample_size=sample_size, seed=seed, device=None if device == "auto" else device,
                      cache_dir=cache_dir, num_workers=workers, progress=cb)
    if json_out:
        _print_json(res, exclude={"recommendation"})
        return
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


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by `advisor run`."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: RUN_DIR/export)."),
    json_out: bool = JsonOpt,
) -> None:
    """Export the whole classifier: timm safetensors (timm's key names), TorchScript, ONNX where installed."""
    from advisor.export import export_run

    res = export_run(run_dir, out_dir=out_dir)
    if json_out:
        _print_json(res)
        return
    for fmt, path in res.files.items():
        out.print(f"{fmt}: {shown(path)} (max |logit difference| {res.max_abs_diff.get(fmt, 0.0):.1e})", soft_wrap=True)
    for fmt, why in res.skipped.items():
        out.print(f"[yellow]{fmt} skipped[/yellow]: {shown(why)}", soft_wrap=True)


@app.command("calibrate")
def calibrate_cmd(json_out: bool = JsonOpt) -> None:
    """Score the forecasts recorded by this machine's runs and refit the forecaster on shipped + local records."""
    from advisor.forecast import calibrate_forecaster, local_record_path

    res = calibrate_forecaster()
    if json_out:
        _print_json(res)
        return
    out.print(f"local track record: {shown(local_record_path())}, {res.local_runs} runs", soft_wrap=True)
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


@app.command("report")
def report_cmd(
    path: Path = typer.Argument(..., help="A run directory (from `advisor run`) or a compare directory (from `advisor compare`)."),
) -> None:
    """(Re)build report.html in a run or compare directory: figures, rules, the confidently wrong images."""
    from advisor.report.html import write_report_html

    out.print(f"report written to [bold]{shown(write_report_html(path))}[/bold]", soft_wrap=True)


def _click_exceptions():
    """click's exception classes as this typer raises them (recent typer vendors its own click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: the click package itself
        from click import exceptions
    return exceptions


def _usage_message(err) -> str:
    """click's message on one line, naming the option as typed and its allowed range."""
    text = " ".join(err.format_message().split())
    param = getattr(err, "param", None)
    if param is None or type(err).__name__ == "MissingParameter":
        return text
    name = max(getattr(param, "opts", None) or [param.name or "value"], key=len)
    ptype = getattr(param, "type", None)  # click keeps ranges on the type, typer on the parameter
    low = getattr(param, "min", None) if getattr(param, "min", None) is not None else getattr(ptype, "min", None)
    high = getattr(param, "max", None) if getattr(param, "max", None) is not None else getattr(ptype, "max", None)
    allowed = ""
    if low is not None or high is not None:
        allowed = "; allowed range " + ("" if low is None else f"{low} <= ") + name + ("" if high is None else f" <= {high}")
    detail = text.split(":", 1)[1].strip() if text.startswith("Invalid value") and ":" in text else text
    return f"invalid value for {name}: {detail}{allowed}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one red line and exit code 2; a bug exits 1."""
    from pydantic import ValidationError

    click_exc = _click_exceptions()
    _ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
    try:
        # Not standalone: usage errors come back here and get the same one-line form as the rest.
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click_exc.NoArgsIsHelpError as err:
        out.print(escape(err.ctx.get_help()) if err.ctx else "")
        sys.exit(0)
    except click_exc.UsageError as err:
        command = f"advisor {err.ctx.info_name}" if err.ctx and err.ctx.parent else "advisor"
        err_console.print(f"[bold red]error:[/bold red] {shown(_usage_message(err))} (see {shown(command)} --help)",
                          soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except AdvisorError as err:
        err_console.print(f"[bold red]error:[/bold red] {shown(err)}", soft_wrap=True)
        sys.exit(2)
    except ValidationError as err:
        # Values that reached a pydantic boundary (a plan, an option) and broke its rules.
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ())) or err.title
        err_console.print(f"[bold red]error:[/bold red] invalid {shown(where)}: {shown(first.get('msg', err))} "
                          f"(got {shown(repr(first.get('input'))[:80])})", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except OSError as err:
        # The environment, not a bug: a vanished file, a full disk, a permission.
        where = f" {err.filename}" if err.filename else ""
        err_console.print(f"[bold red]error:[/bold red] cannot access{shown(where)} ({shown(err.strerror or err)})",
                          soft_wrap=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - a bug still gets one line, not a traceback
        if os.environ.get("ADVISOR_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/bold red] {type(err).__name__}: {shown(err)} "
                          "(set ADVISOR_DEBUG=1 for the traceback and please report it)", soft_wrap=True)
        sys.exit(1)
    finally:
        from advisor import distributed

        distributed.shutdown()


if __name__ == "__main__":
    main()
