"""Command-line interface: parse, call the core, render what it returns.

Nothing here computes; every command calls one core function and renders its pydantic result
(or prints it as JSON with ``--json``). Errors raised by the core become one red line and a
non-zero exit code.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
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
out = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DatasetArg = typer.Argument(..., help="Dataset: a folder (<class>/<img> or <split>/<class>/<img>) or a CSV manifest path,label[,split].")
BackboneOpt = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone name (see `advisor backbones`), timm/<name> or torchvision/<name>.")
WeightsOpt = typer.Option(None, "--weights", help="Weights file (.safetensors, or a state dict saved with torch.save).")
CacheOpt = typer.Option(None, "--cache-dir", help="Feature cache folder [default: $ADVISOR_CACHE_DIR or ~/.cache/advisor].")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON instead of a table.")


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} img/s" if speed else "   -- img/s", style="cyan")


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
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _print_json(model, **dump) -> None:
    """Plain JSON on stdout: rich would wrap long lines and break strings for machines."""
    text = model.model_dump_json(indent=2, **dump) if hasattr(model, "model_dump_json") else json.dumps(model, indent=2)
    typer.echo(text)


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
        table.add_row(i.name, params, ok, i.weights_location or i.hint or "")
    out.print(table)
    out.print("Any timm model: [bold]timm/<name>[/bold]; any torchvision model: [bold]torchvision/<name>[/bold] "
              "(weights from their local caches or --weights FILE).")


@app.command("inspect")
def inspect_cmd(
    dataset: Path = DatasetArg,
    json_out: bool = JsonOpt,
    val_fraction: float = typer.Option(0.2, help="Validation share when the dataset has no val split."),
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
    splits = sorted(scan.counts, key=["train", "val", "test"].index)
    out.print(f"[bold]{scan.root}[/bold]  layout {scan.layout}, split from {scan.split_source}"
              + (f" (val {scan.val_fraction:.0%}, seed {scan.split_seed})" if scan.split_seed is not None else ""),
              soft_wrap=True)
    table = Table()
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right")
    for c in scan.classes:
        row = [scan.counts[s].get(c, 0) for s in splits]
        table.add_row(c, *map(str, row), str(sum(row)))
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
    if scan.skipped:
        out.print(f"[yellow]skipped {len(scan.skipped)} unusable file(s):[/yellow]")
        for s in scan.skipped:
            out.print(f"  [yellow]{s.path}[/yellow]: {s.reason}", soft_wrap=True)
    else:
        out.print("skipped: none")


@app.command("features")
def features_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    batch_size: int = typer.Option(32, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, help="DataLoader worker processes [default: cores - 1]."),
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
    bb = create_backbone(backbone, weights=weights)
    with progress_bar(f"features {bb.name}") as cb:
        fs = extract_features(scan.samples, bb, cache_dir=cache_dir, device=device, batch_size=batch_size,
                              num_workers=workers, key_mode=key, progress=cb)
    s = fs.summary
    if json_out:
        _print_json(s)
        return
    out.print(f"[bold]{s.images}[/bold] images: {s.from_cache} from cache, {s.computed} computed on {s.device}"
              + (f" at {s.images_per_s:.1f} img/s" if s.images_per_s else "") + f", {s.seconds:.1f} s")
    out.print("taps: " + ", ".join(f"{t} ({c})" for t, c in s.tap_channels.items()))
    if scan.skipped or s.failed:
        out.print(f"[yellow]skipped {len(scan.skipped) + len(s.failed)} unusable file(s)[/yellow] (see `advisor inspect`)")
        for f in s.failed:
            out.print(f"  [yellow]{f.path}[/yellow]: {f.reason}", soft_wrap=True)
    out.print(f"cached in {s.cache_dir}", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: core errors become one red line and exit code 2."""
    try:
        # Standalone mode lets click render usage errors (with their exit code 2) itself.
        app(args=argv)
    except AdvisorError as err:
        err_console.print(f"[bold red]error:[/bold red] {err}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - a bug still gets one line, not a traceback
        if os.environ.get("ADVISOR_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/bold red] {type(err).__name__}: {err} "
                          "(set ADVISOR_DEBUG=1 for the traceback and please report it)", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
