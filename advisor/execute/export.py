"""``advisor export RUN_DIR``: the whole classifier in formats that load without advisor.

* ``model.timm.safetensors`` + ``model.timm.json``: when the backbone is a timm model and the
  head reads its pooled top-layer features (linear probe, fine-tunes), the standardiser and the
  head fold into timm's own classifier layer: ``timm.create_model(card["architecture"],
  num_classes=len(card["classes"]))`` then ``load_state_dict`` with timm's key names.
* ``model.torchscript.pt``: any classifier, traced (``torch.jit.load`` needs only torch).
* ``model.onnx``: one self-contained file (weights inside), dynamic batch axis, where the ``export``
  extra is installed (onnx, onnxscript to write it, onnxruntime to verify it).

Each export is checked on random batches of 1 and 7 images against the classifier it came from
(in onnxruntime for ONNX) before it is kept, and gets a sidecar ``<file>.json``: class names, input
and output names, and the preprocessing (resize, centre crop, scale, mean, std, interpolation).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
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


CHECK_BATCHES = (1, 7)  # every export is checked at these batch sizes: the batch axis is dynamic
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")  # write (torch.onnx's exporter), verify (onnxruntime)


def _missing(modules: tuple[str, ...]) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def sidecar(fmt: str, file: str, card, *, input_name: str | None = None, output_name: str | None = None,
            extra: dict | None = None) -> dict:
    """What a consumer needs besides the file: the preprocessing, the class names, the tensor names."""
    tf = card.transform
    return {"format": fmt, "file": file, "classes": list(card.classes), "num_classes": len(card.classes),
            "input": {"name": input_name, "layout": "NCHW", "dtype": "float32", "size": [tf.input_size, tf.input_size]},
            "output": {"name": output_name, "meaning": "logits (softmax gives the probabilities)",
                       # strategies/temperature.py: already divided by it, so softmax gives calibrated probabilities
                       "temperature_folded_in": card.metrics.get("temperature", 1.0)},
            "preprocessing": {"resize_shorter_side_to": tf.resize_size, "interpolation": tf.interpolation,
                              "center_crop": tf.input_size, "scale": "pixels / 255", "mean": list(tf.mean),
                              "std": list(tf.std), "channels": "RGB",
                              # how advisor decoded (reduce_on_decode); a full decode differs by rounding only
                              "jpeg_decode": f"a JPEG whose shorter side is at least twice {tf.resize_size} px is decoded "
                                             "at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling, PIL Image.draft), the largest "
                                             f"that keeps it at least {tf.resize_size} px, before the resize"},
            "transform": tf.model_dump(mode="json"),  # advisor's own TransformConfig, for tools that read it
            "strategy": card.strategy, "source_backbone": card.backbone, "weights_digest": card.weights_digest,
            **(extra or {})}


def _onnx_write_verified(model: torch.nn.Module, x: torch.Tensor, batches: dict[int, torch.Tensor],
                         references: dict[int, torch.Tensor], path: Path) -> float:
    """Export to ONNX (one self-contained file, dynamic batch), run it in onnxruntime, and keep it only if it matches."""
    import onnxruntime

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # the exporter reports progress on stdout
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), None, input_names=["image"], output_names=["logits"], dynamo=True,
                                     verbose=False, external_data=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    worst = {}

    def write(tmp: Path) -> None:
        # One file: weights inside (a model under 2 GB), so model.onnx copied on its own still loads.
        program.save(str(tmp), external_data=False)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        for b, xb in batches.items():
            out = torch.from_numpy(session.run(["logits"], {"image": xb.numpy()})[0])
            worst[b] = float((out - references[b]).abs().max()) if out.shape == references[b].shape else float("inf")
        if not max(worst.values()) <= TOLERANCE:
            raise ExportMismatch(f"the onnx export differs from the classifier by {max(worst.values()):.2e} "
                                 f"(tolerance {TOLERANCE:g}, batches {sorted(worst)})",
                                 hint="not written; the run's own model and the other exports are unaffected")

    call_writing(path, write)
    return max(worst.values())


def export_run(run_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None, seed: int = 0) -> ExportResult:
    """Write every export the classifier allows into ``RUN_DIR/export`` (or ``out_dir``), each verified.

    Each file is checked against the classifier on random batches of 1 and 7 images (max |logit
    difference| <= ``TOLERANCE``) before it is kept, and gets a sidecar JSON with its preprocessing.
    """
    model, card = load_classifier(run_dir)
    model = model.cpu().eval()
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / EXPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    size = card.transform.input_size
    g = torch.Generator().manual_seed(seed)
    batches = {b: torch.randn(b, 3, size, size, generator=g) for b in CHECK_BATCHES}
    x = torch.randn(2, 3, size, size, generator=g)  # what tracing and export see: neither 1 nor 7
    with torch.no_grad():
        references = {b: model(xb) for b, xb in batches.items()}
    files, skipped, diffs = {}, {}, {}

    def check(name: str, run) -> None:
        with torch.no_grad():
            diff = max(float((run(xb) - references[b]).abs().max()) for b, xb in batches.items())
        if not diff <= TOLERANCE:
            raise ExportMismatch(f"the {name} export differs from the classifier by {diff:.2e} on the check batches "
                                 f"(tolerance {TOLERANCE:g})", hint="report this as a bug; the run's own model is unaffected")
        diffs[name] = diff

    def keep(fmt: str, path: Path, **kw) -> None:
        write_text_atomic(path.with_name(path.name + ".json"), json.dumps(sidecar(fmt, path.name, card, **kw), indent=2))
        files[fmt] = str(path)

    try:
        timm_model, arch = timm_classifier(model)
        check("timm", timm_model)
        path = out / "model.timm.safetensors"
        state = {k: v.detach().contiguous() for k, v in timm_model.state_dict().items()}
        call_writing(path, lambda tmp: save_file(state, str(tmp)))
        # timm's own loader reads model.timm.json (architecture, num_classes); the sidecar has the preprocessing too.
        write_text_atomic(out / "model.timm.json", json.dumps({"architecture": arch, "num_classes": len(card.classes),
                                                               **sidecar("timm", path.name, card)}, indent=2))
        files["timm"] = str(path)
    except ExportMismatch:
        raise
    except AdvisorError as err:
        skipped["timm"] = err.message

    with warnings.catch_warnings():  # the tap hooks' shape checks are constants for a fixed input size: expected
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
    check("torchscript", traced)
    path = out / "model.torchscript.pt"
    call_writing(path, lambda tmp: traced.save(str(tmp)))
    keep("torchscript", path)

    missing = _missing(ONNX_MODULES)
    if missing:
        skipped["onnx"] = (f"needs {', '.join(missing)} to write and verify it: pip install 'advisor[export]' "
                           "(an ONNX file is kept only after onnxruntime reproduces the classifier)")
    else:
        path = out / "model.onnx"
        diffs["onnx"] = _onnx_write_verified(model, x, batches, references, path)
        keep("onnx", path, input_name="image", output_name="logits")
    return ExportResult(run_dir=str(run_dir), files=files, skipped=skipped, max_abs_diff=diffs)
