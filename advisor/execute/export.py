"""``advisor export RUN_DIR``: the whole classifier in formats that load without advisor.

* ``model.timm.safetensors`` + ``model.timm.json``: when the backbone is a timm model and the
  head reads its pooled top-layer features (linear probe, fine-tunes), the standardiser and the
  head fold into timm's own classifier layer: ``timm.create_model(card["architecture"],
  num_classes=len(card["classes"]))`` then ``load_state_dict`` with timm's key names.
* ``model.torchscript.pt``: any classifier, traced (``torch.jit.load`` needs only torch).
* ``model.onnx``: where the ``onnx`` package is installed.

Each export is checked on a random batch against the classifier it came from before it is kept;
inputs are images prepared as the card's ``transform`` says (resize, centre crop, normalise).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from advisor.backbones import PRE_LOGITS
from advisor.backbones.classifier import TransferClassifier, load_classifier
from advisor.core.errors import AdvisorError
from advisor.core.io import call_writing, write_text_atomic

EXPORT_DIR = "export"
TOLERANCE = 1e-3  # max |logit difference| an export may show against its source on the check batch


class ExportMismatch(AdvisorError):
    """An export that does not compute what the classifier computes: never kept."""


class ExportResult(BaseModel):
    """What ``advisor export`` wrote, what it left out and why, and how closely each file matched."""

    run_dir: str
    files: dict[str, str]  # format -> path
    skipped: dict[str, str]  # format -> reason
    max_abs_diff: dict[str, float]  # format -> on the check batch


def _timm_arch(model: torch.nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") if hasattr(model, "reset_classifier") else None


def timm_classifier(model: TransferClassifier) -> tuple[torch.nn.Module, str]:
    """A plain timm model whose classifier is ``model``'s standardiser and head folded together."""
    net, arch = model.backbone.model, _timm_arch(model.backbone.model)
    if arch is None:
        raise AdvisorError(f"{model.backbone.name} is not a timm model")
    if model.taps != [PRE_LOGITS]:
        raise AdvisorError(f"the head reads {', '.join(model.taps)}, not only the pooled top layer")
    timm_model = copy.deepcopy(net).cpu().eval()
    timm_model.reset_classifier(model.num_classes)
    w, b = model.head.weight.detach().cpu(), model.head.bias.detach().cpu()
    mean, std = model.feature_mean.detach().cpu(), model.feature_std.detach().cpu()
    with torch.no_grad():
        # head((f - mean) / std) = (W / std) f + (b - (W / std) mean)
        folded = w / std
        timm_model.get_classifier().weight.copy_(folded)
        timm_model.get_classifier().bias.copy_(b - folded @ mean)
    return timm_model, arch


def export_run(run_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, seed: int = 0) -> ExportResult:
    """Write every export the classifier allows into ``RUN_DIR/export`` (or ``out_dir``)."""
    model, card = load_classifier(run_dir)
    model = model.cpu().eval()
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    size = card.transform.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = model(x)
    files, skipped, diffs = {}, {}, {}

    def check(name: str, logits: torch.Tensor) -> None:
        diff = float((logits - reference).abs().max())
        if not diff <= TOLERANCE:
            raise ExportMismatch(f"the {name} export differs from the classifier by {diff:.2e} on the check batch "
                               f"(tolerance {TOLERANCE:g})", hint="report this as a bug; the run's own model is unaffected")
        diffs[name] = diff

    meta = {"classes": card.classes, "transform": card.transform.model_dump(mode="json"), "strategy": card.strategy,
            "source_backbone": card.backbone, "weights_digest": card.weights_digest}
    try:
        timm_model, arch = timm_classifier(model)
        with torch.no_grad():
            check("timm", timm_model(x))
        path = out / "model.timm.safetensors"
        state = {k: v.detach().contiguous() for k, v in timm_model.state_dict().items()}
        call_writing(path, lambda tmp: save_file(state, str(tmp)))
        write_text_atomic(out / "model.timm.json", json.dumps({"architecture": arch, "num_classes": len(card.classes),
                                                               **meta}, indent=2))
        files["timm"] = str(path)
    except ExportMismatch:
        raise
    except AdvisorError as err:
        skipped["timm"] = err.message

    with warnings.catch_warnings():  # the tap hooks' shape checks are constants for a fixed input size: expected
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        check("torchscript", traced(x))
    path = out / "model.torchscript.pt"
    call_writing(path, lambda tmp: traced.save(str(tmp)))
    files["torchscript"] = str(path)

    try:
        import onnx  # noqa: F401  (torch.onnx needs it to write the file)
    except ImportError:
        skipped["onnx"] = "the onnx package is not installed (pip install onnx onnxscript)"
    else:
        path = out / "model.onnx"
        call_writing(path, lambda tmp: torch.onnx.export(model, (x,), str(tmp), input_names=["image"],
                                                         output_names=["logits"], dynamic_axes={"image": {0: "batch"}}))
        files["onnx"] = str(path)
    write_text_atomic(out / "classes.json", json.dumps(meta, indent=2))
    return ExportResult(run_dir=str(run_dir), files=files, skipped=skipped, max_abs_diff=diffs)
