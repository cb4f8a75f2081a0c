"""The options several commands share, with their ranges: click refuses a value outside them (exit 2) before any work."""


from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from advisor.data.scan import DEFAULT_VAL_FRACTION
from advisor.decide.models import MAX_INPUT, MAX_SEED, MIN_INPUT  # noqa: F401  (MAX_SEED: --seed's limit)
from advisor.decide.recipe import BATCH_SIZE, EPOCHS_LIMIT, MAX_BATCH, MIN_BATCH  # noqa: F401  (EPOCHS_LIMIT: --epochs' limit)

DatasetArg = typer.Argument(..., metavar="DATASET", help="Dataset: a folder (<class>/<img> or <split>/<class>/<img>) or a CSV manifest path,label[,split].")
BackboneOpt = typer.Option("efficientnet_lite0", "--backbone", "-b", help="Backbone name (see `advisor backbones`), timm/<name> or torchvision/<name>.")
WeightsOpt = typer.Option(None, "--weights", help="Weights file (.safetensors, or a state dict saved with torch.save).")
def folder(value: Optional[Path]) -> Optional[Path]:
    """A folder option must not name an existing file (caught here, before any work)."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder; remove it or choose another path")
    return value


CacheOpt = typer.Option(None, "--cache-dir", callback=folder,
                        help="Feature cache folder \\[default: $ADVISOR_CACHE_DIR or ~/.cache/advisor].")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
# Option ranges, checked before any work (click reports a value outside them with exit code 2).
WorkersOpt = typer.Option(None, "--workers", min=0, max=64, help="DataLoader worker processes \\[default: cores - 1].")
InputSizeOpt = typer.Option(None, "--input-size", min=MIN_INPUT, max=MAX_INPUT,
                            help=f"Input resolution in pixels, {MIN_INPUT}-{MAX_INPUT} (e.g. 128 for quick CPU runs).")
TrainBatchOpt = typer.Option(None, "--batch-size", min=MIN_BATCH, max=MAX_BATCH,
                             help=f"A fine-tune's training batch \\[default: {BATCH_SIZE}]; its learning rates scale by "
                                  f"sqrt(batch / {BATCH_SIZE}). Lower it when the GPU runs out of memory.")
RunDirArg = typer.Argument(..., metavar="RUN_DIR", help="A run directory written by `advisor run`.")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON instead of a table.")
TtaOpt = typer.Option(False, "--tta", help="Average each image's logits with its mirror image's (test-time "
                      "augmentation: twice the compute; refused where the run found that flips change labels).")
ExplainOpt = typer.Option(None, "--explain", help="Also write evidence pictures into this folder: the crop the model saw "
                          "beside where it favours one class over another (predict: each image, top class against the "
                          "runner-up; evaluate: each mistake, predicted against true).")
DevicesOpt = typer.Option(None, "--devices", min=1, max=1024,
                          help="Processes on this machine (one per GPU, or CPU processes with gloo): relaunches "
                               "this command under torchrun with DistributedDataParallel.")


def fraction(value: float | None) -> float | None:
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{value} is not strictly between 0 and 1 (e.g. 0.2)")
    return value


ValFractionOpt = typer.Option(DEFAULT_VAL_FRACTION, "--val-fraction", callback=fraction,
                              help="Validation share carved (stratified, seeded) when the dataset has no val split, "
                                   "between 0 and 1; runs report their accuracy on it (R19 warns when it is too small).")
# run: no default, so that a --val-fraction given with --plan or --resume (whose split is fixed) is an error
RunValFractionOpt = typer.Option(None, "--val-fraction", callback=fraction,
                                 help="With --auto or --strategy: the validation share carved when the dataset has no "
                                      "val split \\[default: 0.2]; a plan or a resumed run keeps its own split.")
SampleOpt = typer.Option(300, "--sample-size", min=4, max=100_000,
                         help="Images read for the similarity estimate (stratified by class), at least 4.")
SeedOpt = typer.Option(0, "--seed", min=0, max=MAX_SEED, help="Seed of the sample, the bootstrap and the split.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Everything: the whole profile, every rule and boundary, "
                          "the forecast's sources, per-class scores (the default fits an 80-column screen).")


def click_exceptions():
    """click's exception classes as this typer raises them (recent typer vendors its own click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: the click package itself
        from click import exceptions
    return exceptions


def usage_message(err) -> str:
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
