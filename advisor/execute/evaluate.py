"""A trained classifier scored on labelled images nothing was chosen on.

Two callers: the runner scores a dataset's ``test`` split once, after training, with the classifier
it saved (strategies choose taps, epochs and weights on ``val`` only); ``advisor evaluate`` scores a
saved run on any labelled set later (a held-out folder, a new batch of data). Both go through the
inference pass ``advisor predict`` uses (:func:`~advisor.execute.predict.forward_batches`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from advisor.backbones.classifier import load_classifier
from advisor.core.distributed import resolve_device
from advisor.core.errors import AdvisorError
from advisor.data.scan import Sample, scan_dataset
from advisor.execute.predict import check_tta, forward_batches
from strategies.results import SplitScore, split_score

EvalSplit = Literal["test", "val", "train", "all"]


def score_samples(model, samples: Sequence[Sample], classes: list[str], *, split: str, dataset: str = "",
                  device: torch.device | str = "cpu", workers: int | None = None, batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None, temperature: float = 1.0,
                  scored: list[tuple[Sample, int, float]] | None = None, tta: bool = False) -> SplitScore:
    """Accuracy (with its Wilson interval), loss, per-class scores, confusion and calibration error of ``model`` on
    ``samples``, whose labels index ``classes`` (the model's own). Unreadable images are counted, not scored.
    ``temperature``: the one folded into the head, to report the error before calibration beside it.
    ``scored``: gets (sample, predicted class, its probability) for each image read (for a second look at them).
    ``tta``: each image's logits averaged with its mirror image's."""
    logits, labels, skipped, read = [], [], 0, []
    for pos, out, bad in forward_batches(model, [s.path for s in samples], device=device, batch_size=batch_size,
                                         workers=workers, progress=progress, tta=tta):
        skipped += len(bad)
        if out is not None:
            logits.append(out)
            labels += [samples[n].label for n in pos]
            read += [samples[n] for n in pos]
    if not labels:
        raise AdvisorError(f"none of the {len(samples)} {split} images could be read", hint="check the files")
    score = split_score(torch.cat(logits), torch.tensor(labels), classes, split=split, dataset=dataset, skipped=skipped,
                        temperature=temperature)
    if scored is not None:
        conf, pred = torch.cat(logits).float().softmax(1).max(1)
        scored += [(sample, int(p), float(c)) for sample, p, c in zip(read, pred, conf)]
    return score


def evaluate_run(run_dir: str | os.PathLike, dataset: str | os.PathLike, *, split: EvalSplit = "test",
                 device: str | None = None, workers: int | None = None, batch_size: int = 32,
                 progress: Callable[[int, int], None] | None = None,
                 explain_to: str | os.PathLike | None = None, tta: bool = False,
                 include_seen: bool = False) -> SplitScore:
    """Score the classifier a run saved on a labelled dataset's ``split``.

    ``dataset``: class folders (all of it is the test split), split folders or a CSV manifest, as
    for training; one class is enough. Its class names must be among the run's: a class the model
    was never trained on cannot be scored. ``split="all"`` scores every image. Images the run trained
    or validated on are left out (and counted) unless ``include_seen``.
    """
    dev = resolve_device(device)
    model, card = load_classifier(run_dir, device=dev)
    return evaluate_with(model, card, dataset, split=split, device=dev, workers=workers, batch_size=batch_size,
                         progress=progress, explain_to=explain_to, tta=tta, run_dir=run_dir, include_seen=include_seen)


def evaluate_with(model, card, dataset: str | os.PathLike, *, split: EvalSplit = "test", device: torch.device | str = "cpu",
                  workers: int | None = None, batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None,
                  explain_to: str | os.PathLike | None = None, tta: bool = False,
                  run_dir: str | os.PathLike | None = None, include_seen: bool = False) -> SplitScore:
    """:func:`evaluate_run` for a classifier already loaded (``model`` and its ``card``).

    ``explain_to``: a folder that gets an evidence picture (predicted class against the true one) of
    every misclassified image, the most confident mistakes first (``NNNN-<name>.jpg``). ``tta``: each
    image's logits averaged with its mirror image's (refused where the run at ``run_dir`` found that
    flips change labels). ``include_seen``: also score the images the run at ``run_dir`` trained or
    validated on (by content; left out and counted by default, an error when nothing else is left).
    """
    if split not in ("test", "val", "train", "all"):
        raise AdvisorError(f"unknown split {split!r}", hint="choose test, val, train or all")
    if tta:
        check_tta(run_dir)
    if explain_to is not None:
        from advisor.core.io import ensure_writable_dir
        from advisor.report.evidence import check_mappable

        explain_to = ensure_writable_dir(explain_to, what="evidence folder", option="--explain")
        check_mappable(model)
    scan = scan_dataset(dataset, training=False)
    unknown = [c for c in scan.classes if c not in card.classes]
    if unknown:
        raise AdvisorError(f"{len(unknown)} class(es) of {scan.root} are not among the run's {len(card.classes)}: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}",
                           hint=f"the run knows {', '.join(card.classes[:8])}{' ...' if len(card.classes) > 8 else ''}; "
                                "rename the folders or leave those classes out")
    index = {name: card.classes.index(name) for name in scan.classes}
    chosen = [Sample(path=s.path, label=index[scan.classes[s.label]], split=s.split)
              for s in scan.samples if split == "all" or s.split == split]
    if not chosen:
        present = ", ".join(sorted({s.split for s in scan.samples}))
        raise AdvisorError(f"{scan.root} has no {split} images (it has: {present})",
                           hint="choose one of those with --split, or --split all")
    chosen, seen, seen_note = _leave_out_seen(chosen, run_dir, include_seen=include_seen, root=scan.root)
    scored: list[tuple[Sample, int, float]] | None = [] if explain_to is not None else None
    score = score_samples(model, chosen, list(card.classes), split=split, dataset=scan.root, device=device, workers=workers,
                          batch_size=batch_size, progress=progress, temperature=card.metrics.get("temperature", 1.0),
                          scored=scored, tta=tta)
    score.skipped += len(scan.skipped)  # files the scan could not read, whichever split they were in
    if explain_to is not None:
        from advisor.report.evidence import write_pictures

        wrong = sorted((x for x in scored if x[1] != x[0].label), key=lambda x: -x[2])
        paths = write_pictures(model, card.classes, [s.path for s, _, _ in wrong], [(p, s.label) for s, p, _ in wrong],
                               explain_to, device=device, tta=tta)
        score.evidence_dir, score.evidence_pictures = str(explain_to), sum(p is not None for p in paths)
    score.tta = tta
    score.seen_note, score.seen_included = seen_note, include_seen and seen is not None
    if seen is not None:
        score.seen_train, score.seen_val = seen.train, seen.val
    return score


def _leave_out_seen(chosen: list[Sample], run_dir, *, include_seen: bool, root: str):
    """(the images to score, how many the run trained / validated on or None, why they could not be told apart)."""
    from advisor.execute.seen import read_seen, seen_error, split_seen

    if run_dir is None:
        return chosen, None, "no run folder, so the images it saw are unknown"
    seen, why = read_seen(run_dir)
    if seen is None:
        return chosen, None, why
    unseen, counts = split_seen(chosen, seen)
    if not include_seen and not unseen:
        raise seen_error(len(chosen), counts, root)
    return (chosen if include_seen else unseen), counts, None
