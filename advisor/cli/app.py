"""Command-line interface: parse, call the core, render what it returns.

Nothing here computes; every command calls one core function and renders its pydantic result
(or prints it as JSON with ``--json``). Errors raised by the core become one red line and a
non-zero exit code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from advisor import api
from advisor.cli.advice import render_recommendation
from advisor.cli.launch import ARGV, argv_value, relaunch
from advisor.cli.options import (
    EPOCHS_LIMIT,
    MAX_SEED,
    BackboneOpt,
    CacheOpt,
    DatasetArg,
    DeviceOpt,
    DevicesOpt,
    InputSizeOpt,
    TrainBatchOpt,
    ExplainOpt,
    TtaOpt,
    JsonOpt,
    RunDirArg,
    RunValFractionOpt,
    SampleOpt,
    SeedOpt,
    ValFractionOpt,
    VerboseOpt,
    WeightsOpt,
    WorkersOpt,
    click_exceptions,
    folder,
    usage_message,
)
from advisor.cli.render import (
    err_console,
    out,
    print_json,
    progress_bar,
    progress_console,
    render_comparison,
    render_calibration,
    render_predictions,
    write_predictions_csv,
    render_profile,
    render_result,
    render_score,
    render_scan,
    shown,
    stage_bars,
)
from advisor.core.errors import AdvisorError, is_out_of_memory, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Transfer-learning advisor: measure an image dataset, place it in the 2x2 table, run the advice.",
)


def _version(value: bool) -> None:
    if value:
        from advisor.core.version import __version__

        typer.echo(f"advisor {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or epoch lines (errors still print).")) -> None:
    """Transfer-learning advisor: measure an image dataset, place it in the 2x2 table, run the advice."""
    if quiet:
        progress_console.quiet = True
    from advisor.core import distributed

    # Under torchrun: join the process group; only rank 0 prints (errors still print on every rank).
    if not distributed.init_from_env(argv_value("--device")).main:
        out.quiet = progress_console.quiet = True
    distributed.apply_thread_policy()  # fewer threads when another job holds some of the cores


@app.command("backbones")
def backbones_cmd(json_out: bool = JsonOpt) -> None:
    """List bundled backbones, their size and whether their weights are available offline."""
    from advisor.backbones import list_backbones

    infos = list_backbones()
    if json_out:
        print_json([i.model_dump() for i in infos])
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
    val_fraction: float = ValFractionOpt,
    seed: int = typer.Option(0, min=0, max=MAX_SEED, help="Seed of the stratified split (recorded in the result)."),
) -> None:
    """Scan a dataset: classes, counts per split, skipped and ignored files, sizes, colour modes."""
    from advisor.data.scan import scan_dataset

    scan = scan_dataset(dataset, val_fraction=val_fraction, seed=seed)
    if json_out:
        print_json(scan, exclude={"samples"})
        return
    render_scan(scan)


@app.command("features")
def features_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    device: str = DeviceOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, max=4096,
                                             help="Images per forward pass \\[default: 32 on the CPU, 256 on a GPU]."),
    workers: Optional[int] = WorkersOpt,
    key: str = typer.Option("content", help="Cache key per image: content (file hash) or stat (path+size+mtime)."),
    json_out: bool = JsonOpt,
) -> None:
    """Extract pooled features of every tap for every image, and cache them on disk."""
    from advisor.backbones import create_backbone
    from advisor.data.scan import scan_dataset
    from advisor.measure.features import extract_features

    if key not in ("content", "stat"):
        raise AdvisorError(f"--key must be content or stat, got {key!r}")
    scan = scan_dataset(dataset)
    backbone_model = create_backbone(backbone, weights=weights)
    with progress_bar(f"features {shown(backbone_model.name)}") as cb:
        feature_set = extract_features(scan.samples, backbone_model, cache_dir=cache_dir, device=device, batch_size=batch_size,
                              num_workers=workers, key_mode=key, progress=cb)
    s = feature_set.summary
    if json_out:
        print_json(s)
        return
    out.print(f"[bold]{s.images}[/bold] images: {s.from_cache} from cache, {s.computed} computed on {s.device}"
              + (f" at {s.images_per_s:.1f} img/s" if s.images_per_s else "") + f", {s.seconds:.1f} s")
    out.print("taps: " + ", ".join(f"{t} ({c})" for t, c in s.tap_channels.items()))
    if scan.skipped or s.failed:
        out.print(f"[yellow]skipped {len(scan.skipped) + len(s.failed)} unusable file(s)[/yellow] (see `advisor inspect`)")
        for f in s.failed:
            out.print(f"  [yellow]{shown(f.path)}[/yellow]: {shown(f.reason)}", soft_wrap=True)
    if s.cache_dropped:
        out.print(f"[yellow]{len(s.cache_dropped)} cached entr{'y was' if len(s.cache_dropped) == 1 else 'ies were'} "
                  "invalid and recomputed[/yellow]: " + "; ".join(shown(d.reason) for d in s.cache_dropped[:3]))
    out.print(f"cached in {shown(s.cache_dir)}", soft_wrap=True)


@app.command("profile")
def profile_cmd(
    dataset: Path = DatasetArg,
    backbone: str = BackboneOpt,
    weights: Optional[Path] = WeightsOpt,
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    val_fraction: float = ValFractionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Measure the dataset: size, balance, sizes, duplicates and leakage, similarity to ImageNet."""
    with stage_bars() as cb:
        prof = api.profile(dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed,
                           device=device, cache_dir=cache_dir, val_fraction=val_fraction, progress=cb)
    if json_out:
        print_json(prof)
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
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=EPOCHS_LIMIT,
                                         help="The fine-tune epoch cap you will run with; below the share of the "
                                              "schedule the track record measured, the forecast chooses."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Wall-time budget (15m, 90s, 1h): the strategy with the "
                                         "best forecast that fits it, and what more time would buy."),
    input_size: Optional[int] = InputSizeOpt,
    batch_size: Optional[int] = TrainBatchOpt,
    backbones: Optional[str] = typer.Option(None, "--backbones", help="Comma-separated backbones to rank as well "
                                            "(e.g. efficientnet_lite0,efficientnet_lite1,efficientnet_lite2)."),
    val_fraction: float = ValFractionOpt,
    verbose: bool = VerboseOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Profile the dataset, place it in the 2x2 table, explain why, and print the plan."""
    if budget is not None:
        from advisor.decide.advise import parse_duration

        parse_duration(budget)  # a bad budget fails before any work
    with stage_bars() as cb:
        rec = api.recommend(dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed,
                            device=device, cache_dir=cache_dir, progress=cb, epochs=epochs, budget=budget,
                            input_size=input_size, batch_size=batch_size, save_plan=save_plan, val_fraction=val_fraction,
                            backbones=[b.strip() for b in backbones.split(",") if b.strip()] if backbones else None)
    saved = (save_plan, Path(save_plan).with_suffix(".html")) if save_plan is not None else None
    if json_out:
        print_json(rec)
        return
    render_recommendation(rec, verbose=verbose)
    if saved is not None:
        out.print(f"plan saved to {shown(saved[0])}, its report to {shown(saved[1])}", soft_wrap=True)


@app.command("run")
def run_cmd(
    dataset: Optional[Path] = typer.Argument(None, metavar="DATASET", help="Dataset folder or CSV manifest (not needed with --resume)."),
    auto: bool = typer.Option(False, "--auto", help="Profile, recommend, print the rationale, then run the plan."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Force a strategy: linear-probe, layer-probe, partial-finetune, full-finetune."),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Run a plan saved by `advisor recommend --save-plan`."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue an interrupted run from its directory."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", callback=folder, help="Where run directories are created."),
    backbone: str = BackboneOpt,
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=EPOCHS_LIMIT, help="Override the plan's epochs (fine-tunes)."),
    input_size: Optional[int] = InputSizeOpt,
    batch_size: Optional[int] = TrainBatchOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    workers: Optional[int] = WorkersOpt,
    keep_checkpoint: bool = typer.Option(False, "--keep-checkpoint",
                                         help="Keep checkpoints/ (weights + optimiser) after the run finishes."),
    budget: Optional[str] = typer.Option(None, "--budget", help="With --auto: a wall-time budget (15m, 90s, 1h); the "
                                         "strategy with the best forecast that fits it runs."),
    devices: Optional[int] = DevicesOpt,
    logger: Optional[list[str]] = typer.Option(None, "--logger", help="Also log to tensorboard (RUN_DIR/tensorboard) or "
                                               "mlflow (RUN_DIR/mlruns, a local file store); repeatable. metrics.csv is always written."),
    val_fraction: Optional[float] = RunValFractionOpt,
    verbose: bool = VerboseOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Train a classifier: --auto follows the advice, --strategy forces one, --plan runs a saved plan, --resume continues."""
    from advisor.decide.advise import parse_duration
    from advisor.execute.runner import RunInterrupted

    if budget is not None:
        parse_duration(budget)  # a bad budget fails before any work
    modes = sum([auto, strategy is not None and plan_file is None, plan_file is not None, resume is not None])
    if modes != 1:
        raise AdvisorError("choose exactly one of --auto, --strategy NAME, --plan FILE or --resume RUN_DIR",
                           hint="e.g. advisor run --auto DATASET")
    if val_fraction is not None and (resume is not None or plan_file is not None):
        raise AdvisorError("--val-fraction does not apply to --plan or --resume: they keep the split they record",
                           hint="drop --val-fraction, or recommend again with it and run the new plan")
    if resume is not None and (epochs, input_size, batch_size) != (None, None, None):
        raise AdvisorError("--epochs, --input-size and --batch-size do not apply to --resume: the run continues "
                           "with the plan it recorded", hint="drop them, or start a new run with them")
    if resume is None and plan_file is None and dataset is None:
        raise AdvisorError("a DATASET is needed", hint="advisor run --auto DATASET")
    if strategy is not None:
        from strategies import strategy_names

        if strategy not in strategy_names():
            raise AdvisorError(f"unknown strategy {strategy!r}", hint=f"choose from {', '.join(strategy_names())}")
    relaunch(devices, device)  # after the checks above: a bad command line fails once, not once per rank
    dev = None if device == "auto" else device
    show = (lambda rec: render_recommendation(rec, verbose=verbose)) if (auto and not json_out) else None
    try:
        with stage_bars() as cb:
            if resume is not None:
                outcome = api.resume(resume, device=dev, progress=cb)
            else:
                outcome = api.run(dataset, strategy=strategy or "auto", plan=plan_file, backbone=backbone,
                                  sample_size=sample_size, seed=seed, runs_dir=runs_dir, device=dev, cache_dir=cache_dir,
                                  workers=workers, epochs=epochs, input_size=input_size, batch_size=batch_size, progress=cb,
                                  on_recommendation=show, keep_checkpoint=keep_checkpoint, budget=budget,
                                  loggers=logger or (), val_fraction=val_fraction)
    except RunInterrupted as stop:
        err_console.print(f"[yellow]interrupted[/yellow]: checkpoint saved; resume with: advisor run --resume {shown(stop.run_dir)}",
                          soft_wrap=True)
        sys.exit(130)
    if json_out:
        print_json(outcome)
        return
    render_result(outcome, verbose=verbose)


@app.command("predict")
def predict_cmd(
    run_dir: Path = RunDirArg,
    images: list[Path] = typer.Argument(..., metavar="IMAGE_OR_FOLDER", help="Image files or folders."),
    top_k: int = typer.Option(3, "--top-k", "-k", min=1, max=1000, help="Classes per image."),
    device: str = DeviceOpt,
    workers: Optional[int] = WorkersOpt,
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Also write every prediction (and skip) to this CSV file."),
    explain: Optional[Path] = ExplainOpt,
    tta: bool = TtaOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Classify images with a trained run: top-k classes with probabilities."""
    with stage_bars() as cb:
        rep = api.load(run_dir, device=device).predict(images, top_k=top_k, workers=workers, progress=cb, explain_to=explain,
                                                       tta=tta)
    if csv_out is not None:
        write_predictions_csv(rep, csv_out)
    if json_out:
        print_json(rep)
        return
    render_predictions(rep, top_k=top_k)


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Path = RunDirArg,
    dataset: Path = typer.Argument(..., metavar="DATASET", help="Labelled images: class folders (all of it), split folders or a CSV manifest."),
    split: str = typer.Option("test", "--split", help="test, val, train or all (class folders without splits: test)."),
    device: str = DeviceOpt,
    workers: Optional[int] = WorkersOpt,
    explain: Optional[Path] = ExplainOpt,
    tta: bool = TtaOpt,
    include_seen: bool = typer.Option(False, "--include-seen", help="Also score images the run trained or validated "
                                      "on (left out by default: their accuracy is not a test accuracy)."),
    json_out: bool = JsonOpt,
) -> None:
    """Score a trained run on labelled images: accuracy with its interval, per class, confusion."""
    with stage_bars() as cb:
        score = api.load(run_dir, device=device).evaluate(dataset, split=split, workers=workers, progress=cb,
                                                          explain_to=explain, tta=tta, include_seen=include_seen)
    if json_out:
        print_json(score)
        return
    render_score(score)


@app.command("compare")
def compare_cmd(
    dataset: Path = DatasetArg,
    strategies: Optional[str] = typer.Option(None, "--strategies", help="Comma-separated subset (default: all four)."),
    backbone: str = BackboneOpt,
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", callback=folder,
                                  help="Where the comparison's runs and compare.json go."),
    input_size: Optional[int] = InputSizeOpt,
    batch_size: Optional[int] = TrainBatchOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, max=EPOCHS_LIMIT, help="Epoch cap for the fine-tunes (one budget for all)."),
    sample_size: int = SampleOpt,
    seed: int = SeedOpt,
    device: str = DeviceOpt,
    cache_dir: Optional[Path] = CacheOpt,
    workers: Optional[int] = WorkersOpt,
    devices: Optional[int] = DevicesOpt,
    val_fraction: float = ValFractionOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run every strategy on the same split and backbone; show accuracy, time, parameters and the advice's regret."""
    from advisor.execute.compare import check_strategies

    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    check_strategies(names)
    relaunch(devices, device)  # after the check: a bad command line fails once, not once per rank
    with stage_bars() as cb:
        res = api.compare(dataset, strategies=names, backbone=backbone, runs_dir=runs_dir, input_size=input_size,
                          epochs=epochs, sample_size=sample_size, seed=seed, device=device, cache_dir=cache_dir,
                          workers=workers, progress=cb, val_fraction=val_fraction, batch_size=batch_size)
    if json_out:
        print_json(res, exclude={"recommendation"})
        return
    render_comparison(res)


@app.command("export")
def export_cmd(
    run_dir: Path = RunDirArg,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: RUN_DIR/export)."),
    json_out: bool = JsonOpt,
) -> None:
    """Export the whole classifier: timm safetensors (timm's key names), TorchScript, ONNX where installed."""
    from advisor.execute.export import export_run

    res = export_run(run_dir, out_dir=out_dir)  # not through api.load: exporting needs no device
    if json_out:
        print_json(res)
        return
    for fmt, path in res.files.items():
        out.print(f"{fmt}: {shown(path)} (max |logit difference| {res.max_abs_diff.get(fmt, 0.0):.1e})", soft_wrap=True)
    for fmt, why in res.skipped.items():
        out.print(f"[yellow]{fmt} skipped[/yellow]: {shown(why)}", soft_wrap=True)


@app.command("calibrate")
def calibrate_cmd(json_out: bool = JsonOpt) -> None:
    """Score the forecasts recorded by this machine's runs and refit the forecaster on shipped + local records."""
    from advisor.decide.forecast import calibrate_forecaster
    from advisor.decide.records import local_record_path

    res = calibrate_forecaster()
    if json_out:
        print_json(res)
        return
    render_calibration(res, local_record_path())


@app.command("report")
def report_cmd(
    path: Path = typer.Argument(..., metavar="RUN_OR_COMPARE_DIR", help="A run directory (from `advisor run`) or a compare directory (from `advisor compare`)."),
) -> None:
    """(Re)build report.html in a run or compare directory: figures, rules, the confidently wrong images."""
    from advisor.report.html import write_report_html

    out.print(f"report written to [bold]{shown(write_report_html(path))}[/bold]", soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one red line and exit code 2; a bug exits 1."""
    from pydantic import ValidationError

    click_exc = click_exceptions()
    ARGV[:] = list(argv) if argv is not None else sys.argv[1:]
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
        err_console.print(f"[bold red]error:[/bold red] {shown(usage_message(err))} (see {shown(command)} --help)",
                          soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
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
    except OSError as err:
        # The environment, not a bug: a vanished file, a full disk, a permission.
        where = f" {err.filename}" if err.filename else ""
        err_console.print(f"[bold red]error:[/bold red] cannot access{shown(where)} ({shown(err.strerror or err)})",
                          soft_wrap=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - a bug still gets one line, not a traceback
        if is_out_of_memory(err):  # not a bug: the work as sized does not fit (a fine-tune's says more, in runner.py)
            err_console.print(f"[bold red]error:[/bold red] out of memory ({shown(one_line(err, 120))}): lower --batch-size "
                              "or --input-size, or use a smaller backbone; nvidia-smi lists what else holds GPU memory",
                              soft_wrap=True)
            sys.exit(2)
        if os.environ.get("ADVISOR_DEBUG"):
            raise
        err_console.print(f"[bold red]internal error:[/bold red] {type(err).__name__}: {shown(err)} "
                          "(set ADVISOR_DEBUG=1 for the traceback and please report it)", soft_wrap=True)
        sys.exit(1)
    finally:
        from advisor.core import distributed

        distributed.shutdown()


if __name__ == "__main__":
    main()
