"""Top-k predictions of a saved run's classifier on image files or folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel

from advisor.backbones.classifier import load_classifier
from advisor.core.distributed import resolve_device
from advisor.core.errors import AdvisorError, ImageLoadError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SkippedFile, load_image, to_rgb


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


def classify(model, card, items: Sequence, *, top_k: int = 5, device: torch.device | str = "cpu", batch_size: int = 32,
             max_pixels: int = DEFAULT_MAX_PIXELS, skipped: list[SkippedFile] | None = None) -> list[Prediction]:
    """Top-k predictions of ``model`` for image files (paths) or images already in memory (PIL), in input order.

    A file that cannot be read is appended to ``skipped`` with its reason; an in-memory image is
    named ``<image N>`` (its position in ``items``).
    """
    if top_k < 1:
        raise AdvisorError(f"top_k must be at least 1, got {top_k}")
    skipped = skipped if skipped is not None else []
    tf = model.backbone.transform_config.eval_transform()
    k = min(top_k, len(card.classes))
    predictions: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        batch, names = [], []
        for n, item in enumerate(items[start : start + batch_size], start=start):
            name = f"<image {n}>" if isinstance(item, Image.Image) else str(item)
            try:
                image = (to_rgb(item) if isinstance(item, Image.Image)
                         else load_image(item, max_pixels=max_pixels, min_side=model.backbone.transform_config.resize_size))
                batch.append(tf(image))
                names.append(name)
            except ImageLoadError as err:
                skipped.append(SkippedFile(path=name, reason=err.reason))
            except (MemoryError, OverflowError, ValueError, RuntimeError) as err:  # the transform, on an odd image
                skipped.append(SkippedFile(path=name, reason=f"cannot transform ({type(err).__name__})"))
        if not batch:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(batch).to(device)).float().softmax(1).cpu()
        values, idx = probs.topk(k, dim=1)
        for name, v, i in zip(names, values.tolist(), idx.tolist()):
            predictions.append(Prediction(path=name, top=[ClassProbability(label=card.classes[j], probability=round(p, 6))
                                                          for p, j in zip(v, i)]))
    return predictions


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top_k: int = 5, device: str | None = None,
            batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> PredictionReport:
    """Classify every image in ``inputs`` (files and folders); unreadable images are skipped and reported.

    Raises AdvisorError when nothing could be classified (every input missing or unreadable),
    so that a script never mistakes an empty result for success.
    """
    if top_k < 1:
        raise AdvisorError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    model, card = load_classifier(run_dir, device=dev)
    return predict_with(model, card, inputs, run_dir=run_dir, top_k=top_k, device=dev, batch_size=batch_size,
                        max_pixels=max_pixels)


def predict_with(model, card, inputs: Sequence, *, run_dir: str | os.PathLike, top_k: int = 5,
                 device: torch.device | str = "cpu", batch_size: int = 32,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> PredictionReport:
    """``predict`` for a classifier already loaded; ``inputs`` may mix files, folders and PIL images
    (predictions: the files, folders expanded, in order, then the in-memory images)."""
    paths = [i for i in inputs if not isinstance(i, Image.Image)]
    files, skipped, ignored = expand_inputs(paths) if paths else ([], [], 0)
    images = [i for i in inputs if isinstance(i, Image.Image)]
    if not files and not skipped and not images:
        raise AdvisorError(f"no images to predict ({ignored} non-image or hidden file(s) ignored)",
                           hint=f"pass image files or folders that contain images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    predictions = classify(model, card, [*files, *images], top_k=top_k, device=device, batch_size=batch_size,
                           max_pixels=max_pixels, skipped=skipped)
    if not predictions:
        first = skipped[0]
        raise AdvisorError(f"no image could be classified: {len(skipped)} input(s) skipped, e.g. {first.path}: {first.reason}",
                           hint="pass readable image files or folders that contain them")
    return PredictionReport(run_dir=str(run_dir), strategy=card.strategy, classes=card.classes, predictions=predictions,
                            skipped=skipped, ignored=ignored)
