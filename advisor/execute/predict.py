"""Top-k predictions of a saved run's classifier on image files or folders."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel

from advisor.backbones.backbone import memory_format_of
from advisor.backbones.classifier import load_classifier
from advisor.core.distributed import default_num_workers, resolve_device
from advisor.core.errors import AdvisorError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, SkippedFile, to_rgb
from advisor.data.loading import ImageDataset, collate_skip


class ClassProbability(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    path: str
    top: list[ClassProbability]
    evidence: str | None = None  # with explain_to: the picture of why the top class beat the runner-up


class PredictionReport(BaseModel):
    run_dir: str
    strategy: str
    classes: list[str]
    predictions: list[Prediction]
    skipped: list[SkippedFile]
    ignored: int  # non-image or hidden files inside the given folders
    evidence_dir: str | None = None  # where the evidence pictures went (explain_to)
    tta: bool = False  # the logits averaged with the mirror image's


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


def _file_batches(files: list[str], tf, *, batch_size: int, workers: int, max_pixels: int, min_side: int, pin: bool):
    """(positions in ``files``, CPU tensor or None, [(position, reason)]) per batch, decoded by DataLoader workers."""
    loader = torch.utils.data.DataLoader(
        ImageDataset(files, tf, max_pixels=max_pixels, min_side=min_side), batch_size=batch_size,
        num_workers=workers if len(files) > batch_size else 0,  # one batch: starting workers costs more than it saves
        collate_fn=collate_skip, pin_memory=pin)
    for batch in loader:
        yield batch.index.tolist(), batch.x, batch.bad


def _image_batches(images: list, tf, *, batch_size: int):
    """The same for PIL images already in memory, transformed here."""
    for start in range(0, len(images), batch_size):
        pos, xs, bad = [], [], []
        for n, image in enumerate(images[start : start + batch_size], start=start):
            try:
                xs.append(tf(to_rgb(image)))
                pos.append(n)
            except (MemoryError, OverflowError, ValueError, RuntimeError) as err:  # the transform, on an odd image
                bad.append((n, f"cannot transform ({type(err).__name__})"))
        yield pos, torch.stack(xs) if xs else None, bad


def forward_batches(model, items: Sequence, *, device: torch.device | str = "cpu", batch_size: int = 32,
                    max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
                    progress: Callable[[int, int], None] | None = None, tta: bool = False):
    """``(positions in items, logits as float on the CPU, [(position, reason)])`` per batch of image files
    (paths) or PIL images: the one inference pass that predict and evaluate share.

    Files are decoded by ``workers`` DataLoader processes (default: by free cores) while the model
    runs; the forward runs channels_last, as extraction does (1.8x on the CPU), and the model's
    layout and mode are restored afterwards. ``progress(done, total)`` follows the images. ``tta``: the
    logits are the average of the image's and its mirror image's (test-time augmentation; twice the compute).
    """
    dev = torch.device(device)
    tc = model.backbone.transform_config
    tf = tc.eval_transform()
    file_at = [n for n, item in enumerate(items) if not isinstance(item, Image.Image)]
    image_at = [n for n, item in enumerate(items) if isinstance(item, Image.Image)]
    sources = [
        (file_at, _file_batches([str(items[n]) for n in file_at], tf, batch_size=batch_size, max_pixels=max_pixels,
                                workers=default_num_workers() if workers is None else workers,
                                min_side=tc.resize_size, pin=dev.type == "cuda")),
        (image_at, _image_batches([items[n] for n in image_at], tf, batch_size=batch_size)),
    ]
    done = 0
    layout, training = memory_format_of(model), model.training
    model.eval().to(memory_format=torch.channels_last)
    try:
        for at, batches in sources:
            for pos, x, bad in batches:
                logits = None
                if x is not None:
                    with torch.inference_mode():
                        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                        logits = model(x).float()
                        if tta:
                            logits = (logits + model(x.flip(3)).float()) / 2
                        logits = logits.cpu()
                done += len(pos) + len(bad)
                yield [at[i] for i in pos], logits, [(at[i], reason) for i, reason in bad]
                if progress:
                    progress(done, len(items))
    finally:
        model.train(training).to(memory_format=layout)


def classify(model, card, items: Sequence, *, top_k: int = 5, device: torch.device | str = "cpu", batch_size: int = 32,
             max_pixels: int = DEFAULT_MAX_PIXELS, skipped: list[SkippedFile] | None = None, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None, tta: bool = False) -> list[Prediction]:
    """Top-k predictions of ``model`` for image files (paths) or images already in memory (PIL), in input order.

    A file that cannot be read is appended to ``skipped`` with its reason; an in-memory image is
    named ``<image N>`` (its position in ``items``). The pass: :func:`forward_batches`.
    """
    if top_k < 1:
        raise AdvisorError(f"top_k must be at least 1, got {top_k}")
    skipped = skipped if skipped is not None else []
    k = min(top_k, len(card.classes))
    names = [f"<image {n}>" if isinstance(item, Image.Image) else str(item) for n, item in enumerate(items)]
    found: dict[int, Prediction] = {}
    for pos, logits, bad in forward_batches(model, items, device=device, batch_size=batch_size, max_pixels=max_pixels,
                                            workers=workers, progress=progress, tta=tta):
        skipped += [SkippedFile(path=names[n], reason=reason) for n, reason in bad]
        if logits is None:
            continue
        values, idx = logits.softmax(1).topk(k, dim=1)
        for n, v, j in zip(pos, values.tolist(), idx.tolist()):
            found[n] = Prediction(path=names[n], top=[ClassProbability(label=card.classes[c], probability=round(prob, 6))
                                                      for prob, c in zip(v, j)])
    return [found[n] for n in sorted(found)]


def predict(run_dir: str | os.PathLike, inputs: list[str | os.PathLike], *, top_k: int = 5, device: str | None = None,
            batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            explain_to: str | os.PathLike | None = None, tta: bool = False) -> PredictionReport:
    """Classify every image in ``inputs`` (files and folders); unreadable images are skipped and reported.

    Raises AdvisorError when nothing could be classified (every input missing or unreadable),
    so that a script never mistakes an empty result for success.
    """
    if top_k < 1:
        raise AdvisorError(f"--top-k must be at least 1, got {top_k}")
    dev = resolve_device(device)
    model, card = load_classifier(run_dir, device=dev)
    return predict_with(model, card, inputs, run_dir=run_dir, top_k=top_k, device=dev, batch_size=batch_size,
                        max_pixels=max_pixels, workers=workers, progress=progress, explain_to=explain_to, tta=tta)


def predict_with(model, card, inputs: Sequence, *, run_dir: str | os.PathLike, top_k: int = 5,
                 device: torch.device | str = "cpu", batch_size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS,
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                 explain_to: str | os.PathLike | None = None, tta: bool = False) -> PredictionReport:
    """``predict`` for a classifier already loaded; ``inputs`` may mix files, folders and PIL images
    (predictions: the files, folders expanded, in order, then the in-memory images).

    ``explain_to``: a folder that gets, per predicted image, ``NNNN-<name>.jpg``: the crop the model
    saw beside its evidence map for the top class against the runner-up (a second pass over the images).
    ``tta``: average each image's logits with its mirror image's (refused where the run found that a
    horizontal flip changes labels: :func:`check_tta`).
    """
    if tta:
        check_tta(run_dir)
    if explain_to is not None:
        from advisor.core.io import ensure_writable_dir
        from advisor.report.evidence import check_mappable

        explain_to = ensure_writable_dir(explain_to, what="evidence folder", option="--explain")
        check_mappable(model)
    paths = [i for i in inputs if not isinstance(i, Image.Image)]
    files, skipped, ignored = expand_inputs(paths) if paths else ([], [], 0)
    images = [i for i in inputs if isinstance(i, Image.Image)]
    if not files and not skipped and not images:
        raise AdvisorError(f"no images to predict ({ignored} non-image or hidden file(s) ignored)",
                           hint=f"pass image files or folders that contain images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    predictions = classify(model, card, [*files, *images], top_k=top_k, device=device, batch_size=batch_size,
                           max_pixels=max_pixels, skipped=skipped, workers=workers, progress=progress, tta=tta)
    if not predictions:
        first = skipped[0]
        raise AdvisorError(f"no image could be classified: {len(skipped)} input(s) skipped, e.g. {first.path}: {first.reason}",
                           hint="pass readable image files or folders that contain them")
    if explain_to is not None:
        by_name = {**{f: f for f in files}, **{f"<image {len(files) + n}>": im for n, im in enumerate(images)}}
        predictions = _write_evidence(model, card, predictions, by_name, explain_to, device=device, max_pixels=max_pixels,
                                      tta=tta)
    return PredictionReport(run_dir=str(run_dir), strategy=card.strategy, classes=card.classes, predictions=predictions,
                            skipped=skipped, ignored=ignored, evidence_dir=str(explain_to) if explain_to else None, tta=tta)


def check_tta(run_dir: str | os.PathLike | None) -> None:
    """Refuse mirror-image averaging for a run whose flip check fired (R17: labels change under a horizontal flip,
    as for digits and text), as its ``plan.json`` records; a model without its run's plan is the caller's word."""
    from advisor.core.io import read_model
    from advisor.decide.models import RunPlan

    path = Path(run_dir) / "plan.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return
    plan = read_model(path, RunPlan, fix="the run directory is damaged: rerun it")
    if "R17" in plan.rule_ids or (plan.recipe is not None and not plan.recipe.hflip):
        raise AdvisorError("--tta averages each image with its mirror image, but this run's flip check found that a "
                           "horizontal flip changes labels here (R17; the run trained without flips)",
                           hint="leave out --tta")


def _write_evidence(model, card, predictions: list[Prediction], by_name: dict, folder: Path, *, device,
                    max_pixels: int, tta: bool = False) -> list[Prediction]:
    """One picture per prediction: its top class against the most likely other class."""
    from advisor.report.evidence import write_pictures

    index = {c: i for i, c in enumerate(card.classes)}
    paths = write_pictures(model, card.classes, [by_name[p.path] for p in predictions],
                           [(index[p.top[0].label], None) for p in predictions], folder, device=device, max_pixels=max_pixels,
                           tta=tta)
    return [p.model_copy(update={"evidence": path}) for p, path in zip(predictions, paths)]
