"""Top-k predictions of a saved run's classifier on image files or folders."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import BaseModel

from advisor.classifier import load_classifier
from advisor.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SkippedFile, load_image
from advisor.errors import AdvisorError, ImageLoadError
from advisor.features import resolve_device


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
    """Image files from files and folders (recursively); missing paths are skipped, others ignored."""
    files, skipped, ignored = [], [], 0
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file():
                    continue
                if any(part.startswith(".") for part in f.relative_to(p).parts) or f.suffix.lower() not in IMAGE_EXTENSIONS:
                    ignored += 1
                else:
                    files.append(str(f))
        elif p.is_file():
            files.append(str(p))
        else:
            skipped.append(SkippedFile(path=str(p), reason="no such file or folder"))
    return files, skipped, ignored


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top_k: int = 5, device: str | None = None,
            batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> PredictionReport:
    """Classify every image in ``inputs``; unreadable images are skipped and reported, never fatal."""
    if top_k < 1:
        raise AdvisorError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    model, card = load_classifier(run_dir, device=dev)
    files, skipped, ignored = expand_inputs(inputs)
    if not files and not skipped:
        raise AdvisorError("no images to predict", hint="pass image files or folders that contain images")
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
        if not batch:
            continue
        with torch.inference_mode():
            probs = model(torch.stack(batch).to(dev)).float().softmax(1).cpu()
        values, idx = probs.topk(k, dim=1)
        for path, v, i in zip(paths, values.tolist(), idx.tolist()):
            predictions.append(Prediction(path=path, top=[ClassProbability(label=card.classes[j], probability=round(p, 6))
                                                          for p, j in zip(v, i)]))
    return PredictionReport(run_dir=str(run_dir), strategy=card.strategy, classes=card.classes, predictions=predictions,
                            skipped=skipped, ignored=ignored)
