"""Top-k predictions of a saved run's classifier on image files or folders."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import BaseModel

from advisor.backbones.classifier import load_classifier
from advisor.core.distributed import resolve_device
from advisor.core.errors import AdvisorError, ImageLoadError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SkippedFile, load_image


class ClassProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    path: str
    top: list[ClassProbability]


class PredictionReport(BaseModel):
    run_dir: str
    strategy: str
    classes: list[str]
    predictions: list[Prediction]
    skipped: list[SkippedFile]
    ignored: int  # non-image or hidden files inside the given folders


def expand_inputs(inputs: list[str | os.PathLike]) -> tuple[list[str], list[SkippedFile], int]:
    """Image files from files and folders; what cannot be used is skipped with a reason or counted as ignored.

    Folders are walked without following folder links (no loops); hidden entries, non-image
    names and special files (FIFOs, sockets, devices) inside them are ignored and counted.
    """
    files, skipped, ignored = [], [], 0
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for folder, dirs, names in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = Path(folder) / name
                    if name.startswith(".") or f.suffix.lower() not in IMAGE_EXTENSIONS or not f.is_file():
                        ignored += 1
                    else:
                        files.append(str(f))
        elif p.is_file():
            files.append(str(p))
        elif p.is_symlink() and not p.exists():
            skipped.append(SkippedFile(path=str(p), reason="broken symlink"))
        elif p.exists():
            skipped.append(SkippedFile(path=str(p), reason="not a regular file or folder"))
        else:
            skipped.append(SkippedFile(path=str(p), reason="no such file or folder"))
    return list(dict.fromkeys(files)), skipped, ignored


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top_k: int = 5, device: str | None = None,
            batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> PredictionReport:
    """Classify every image in ``inputs``; unreadable images are skipped and reported.

    Raises AdvisorError when nothing could be classified (every input missing or unreadable),
    so that a script never mistakes an empty result for success.
    """
    if top_k < 1:
        raise AdvisorError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    model, card = load_classifier(run_dir, device=dev)
    files, skipped, ignored = expand_inputs(inputs)
    if not files and not skipped:
        raise AdvisorError(f"no images to predict ({ignored} non-image or hidden file(s) ignored)",
                           hint=f"pass image files or folders that contain images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    tf = model.backbone.transform_config.eval_transform()
    k = min(top_k, len(card.classes))
    predictions: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        batch, paths = [], []
        for path in files[start : start + batch_size]:
            try:
                batch.append(tf(load_image(path, max_pixels=max_pixels)))
                paths.append(path)
            except ImageLoadError as err:
                skipped.append(SkippedFile(path=path, reason=err.reason))
            except (MemoryError, OverflowError, ValueError, RuntimeError) as err:  # the transform, on an odd image
                skipped.append(SkippedFile(path=path, reason=f"cannot transform ({type(err).__name__})"))
        if not batch:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(batch).to(dev)).float().softmax(1).cpu()
        values, idx = probs.topk(k, dim=1)
        for path, v, i in zip(paths, values.tolist(), idx.tolist()):
            predictions.append(Prediction(path=path, top=[ClassProbability(label=card.classes[j], probability=round(p, 6))
                                                          for p, j in zip(v, i)]))
    if not predictions:
        first = skipped[0]
        raise AdvisorError(f"no image could be classified: {len(skipped)} input(s) skipped, e.g. {first.path}: {first.reason}",
                           hint="pass readable image files or folders that contain them")
    return PredictionReport(run_dir=str(run_dir), strategy=card.strategy, classes=card.classes, predictions=predictions,
                            skipped=skipped, ignored=ignored)
