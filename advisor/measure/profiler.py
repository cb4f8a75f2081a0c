"""Measure a dataset: size, balance, image properties, duplicates and leakage, similarity to ImageNet.

The file-level facts (counts, sizes, exact duplicates) cover every image; everything that needs
a forward pass (similarity, near-duplicates, greyscale share) reads a stratified sample of
``sample_size`` images, so the cost of a profile does not grow with the dataset beyond the
file scan. Features of the sample are cached, so a second profile does no forward pass.
"""

from __future__ import annotations

import math
import os
import random
import statistics
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from advisor.backbones import PRE_LOGITS, Backbone, create_backbone
from advisor.core.clock import StageClock
from advisor.core.distributed import resolve_device
from advisor.data.imagefile import file_digest, load_image
from advisor.data.scan import DEFAULT_VAL_FRACTION, DatasetScan, Sample, scan_dataset
from advisor.measure.features import extract_features
from advisor.measure.curve import probe_curve
from advisor.measure.labels import label_report
from advisor.measure.logistic import cv_select_l2, fit_logistic, fit_standardizer, fold_count, stratified_folds
from advisor.measure.models import DatasetProfile, DuplicateGroup, FlipCheck
from advisor.measure.similarity import greyscale_share, load_reference, measure_similarity
from advisor.measure.transferability import per_tap_evidence

DEFAULT_SAMPLE_SIZE = 300
NEAR_DUPLICATE_COSINE = 0.97
_GREY_MODES = {"L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# (stage, done, total) -> None: the CLI turns it into progress bars; the core never prints.
StageProgress = Callable[[str, int, int], None]


def profiling_sample(samples: list[Sample], size: int, *, seed: int = 0) -> list[Sample]:
    """The profile's sample: training images first (stratified per class), other splits fill what is left.

    What reads labels (the probe CV, per-depth evidence, flip check) reads the sample's training
    images only, and a run extracts the training images' features at the same size: a sample
    drawn from the training split serves both, and its features are reused by the run. A
    few-shot training split beside a large validation split no longer leaves the label-reading
    measurements a handful per class. The similarity signals do not depend on the split.
    """
    train = [s for s in samples if s.split == "train"]
    rest = [s for s in samples if s.split != "train"]
    if len(samples) <= size:
        return list(samples)
    picked = stratified_sample(train, min(len(train), size), seed=seed)
    if len(picked) < size:
        picked += stratified_sample(rest, size - len(picked), seed=seed)
    return sorted(picked, key=lambda s: s.path)


def stratified_sample(samples: list[Sample], size: int, *, seed: int = 0) -> list[Sample]:
    """Up to ``size`` samples, drawn per class in proportion to its share (at least 2 each when possible)."""
    if len(samples) <= size:
        return list(samples)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    total = len(samples)
    quota = {c: max(min(2, len(v)), round(size * len(v) / total)) for c, v in by_class.items()}
    # Trim the largest quotas until the sample fits: rounding up small classes can overshoot.
    while sum(quota.values()) > size:
        c = max(quota, key=lambda k: quota[k])
        quota[c] -= 1
    picked: list[Sample] = []
    for c in sorted(by_class):
        pool = sorted(by_class[c], key=lambda s: s.path)
        rng.shuffle(pool)
        picked.extend(pool[: quota[c]])
    return sorted(picked, key=lambda s: s.path)


def _group(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def exact_duplicates(scan: DatasetScan, *, digests: list[str] | None = None) -> list[DuplicateGroup]:
    """Groups of files with identical bytes, over every usable image."""
    if digests is None:
        paths = [s.path for s in scan.samples]
        chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
        # Hashing releases the GIL; chunks keep the thread pool's per-task overhead negligible.
        with ThreadPoolExecutor(max_workers=4) as pool:
            digests = [d for chunk in pool.map(lambda c: [file_digest(p) for p in c], chunks) for d in chunk]
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(digests):
        by_digest[d].append(i)
    groups = []
    for idx in by_digest.values():
        if len(idx) > 1:
            ss = [scan.samples[i] for i in idx]
            groups.append(DuplicateGroup(kind="exact", paths=[s.path for s in ss], splits=[s.split for s in ss],
                                         labels=[scan.classes[s.label] for s in ss], similarity=1.0))
    return sorted(groups, key=lambda g: g.paths[0])


def near_duplicates(features: torch.Tensor, samples: list[Sample], classes: list[str], *,
                    threshold: float = NEAR_DUPLICATE_COSINE, exclude: set[frozenset[str]] | None = None,
                    chunk: int = 512) -> list[DuplicateGroup]:
    """Groups whose centred pre-logits features have cosine similarity >= ``threshold``.

    Centring removes the direction all images share (post-ReLU features are all positive), which
    otherwise makes unrelated images look alike.
    """
    if features.shape[0] < 2:
        return []
    f = features.double()
    f = torch.nn.functional.normalize(f - f.mean(0), dim=1)
    pairs = []
    # Row blocks bound the memory by chunk x N: 400 MB a block for a 100k-image sample, not 80 GB for N x N.
    for start in range(0, len(f), chunk):
        rows = torch.arange(start, min(start + chunk, len(f)))
        above = (f[rows] @ f.T >= threshold) & (torch.arange(len(f)) > rows[:, None])  # each pair once
        pairs += [(int(rows[a]), int(b)) for a, b in above.nonzero().tolist()]
    groups = []
    for g in _group(pairs, len(samples)):
        paths = [samples[i].path for i in g]
        if exclude and frozenset(paths) in exclude:
            continue  # already reported as an exact duplicate
        best = float((f[g] @ f[g].T).fill_diagonal_(-1).max())
        groups.append(DuplicateGroup(kind="near", paths=paths, splits=[samples[i].split for i in g],
                                     labels=[classes[samples[i].label] for i in g], similarity=round(best, 4)))
    return sorted(groups, key=lambda gr: gr.paths[0])


def build_profile(
    scan: DatasetScan,
    backbone: Backbone,
    *,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    rounds: int = 200,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    progress: StageProgress | None = None,
    similarity: bool = True,
    clock: StageClock | None = None,
) -> DatasetProfile:
    """The measured profile of a scanned dataset, with ImageNet similarity on ``backbone``.

    ``similarity=False`` skips everything that needs a forward pass (similarity, near
    duplicates, greyscale share): what a run with a forced strategy needs from the profile (the
    flip check, on pixels, still runs: it sets the fine-tune's flips).
    ``clock`` collects each stage's seconds (``profile.stage_seconds``; a fresh one by default).
    """
    clock = clock if clock is not None else StageClock()
    dev = resolve_device(device)
    train = scan.split("train")
    per_class = {c: 0 for c in scan.classes}
    for s in train:
        per_class[scan.classes[s.label]] += 1
    counts = list(per_class.values())
    input_size = backbone.transform_config.input_size

    with clock("exact duplicates"):
        exact = exact_duplicates(scan)
    near: list[DuplicateGroup] = []
    used: list[Sample] = []
    grey = measured = flips = None
    evidence = []
    probe_cv: dict[str, float] = {}
    curve: list = []
    labels_found = None
    best_l2 = None
    used_train: list[Sample] = []
    cv_unit: float | None = None
    if similarity:
        sample = profiling_sample(scan.samples, sample_size, seed=seed)
        # Every tap comes from the same forward pass; the per-depth evidence reads them all.
        with clock("features"):
            feature_set = extract_features(
                sample, backbone, bn_moments=bool(backbone.bn_layers()), device=str(dev),
                cache_dir=cache_dir, num_workers=num_workers,
                progress=(lambda d, t: progress("features", d, t)) if progress else None,
            )
        used = [sample[i] for i in feature_set.index]
        if progress:
            progress("similarity", 0, 1)
        with clock("similarity"):
            near = near_duplicates(feature_set.features[PRE_LOGITS], used, scan.classes,
                                   exclude={frozenset(g.paths) for g in exact})
            reference, missing = load_reference(backbone)
            measured = measure_similarity(feature_set, backbone, reference=reference, reference_missing=missing,
                                          rounds=rounds, seed=seed, device=dev) if len(used) >= 4 else None
            grey = greyscale_share(feature_set, rounds=rounds, seed=seed)
        # What reads labels (tap evidence, the forecast's probe CV, the flip check) sees training
        # images only: their results choose taps, flips and strategies, and the validation split's
        # accuracy is what runs report.
        train_rows = torch.tensor([i for i, s in enumerate(used) if s.split == "train"], dtype=torch.long)
        used_train = [used[i] for i in train_rows.tolist()]
        train_feats = {t.name: feature_set.features[t.name][train_rows] for t in backbone.taps}
        train_labels = feature_set.labels[train_rows]
        enough = len(train_rows) >= 2 * len(scan.classes)
        if enough:
            with clock("tap evidence"):
                evidence = per_tap_evidence(train_feats, train_labels, taps=[t.name for t in backbone.taps], seed=seed)
            with clock("probe CV"):
                probe_cv, l2s, best_acc = _probe_cv(train_feats, train_labels, evidence,
                                                    num_classes=len(scan.classes), seed=seed)
                best_l2 = l2s.get(PRE_LOGITS)
            units = sum(train_feats[t].shape[0] * train_feats[t].shape[1] for t in probe_cv)
            cv_unit = clock.seconds["probe CV"] / units if units else None
            if best_l2 is not None:
                with clock("learning curve"):
                    curve = probe_curve(train_feats[PRE_LOGITS], train_labels, num_classes=len(scan.classes),
                                        l2=best_l2, seed=seed, full_accuracy=best_acc)
        # Labels the data contradicts, on every image of the sample (validation too): out-of-fold probe probabilities.
        conflicts = [(p, s, g, next(o for o in grp.labels if o != g)) for grp in (exact + near) if grp.conflicting_labels
                     for p, s, g in zip(grp.paths, grp.splits, grp.labels)]
        with clock("label check"):
            labels_found = label_report(feature_set.features[PRE_LOGITS], feature_set.labels, [s.path for s in used],
                                        [s.split for s in used], scan.classes, duplicates=conflicts, seed=seed,
                                        l2=best_l2)
        if progress:
            progress("similarity", 1, 1)
        if enough:
            if progress:
                progress("flip check", 0, 1)
            with clock("flip check"):
                pixels, mirrored = thumbnails([used[i] for i in train_rows.tolist()])
                flips = flip_check(pixels, mirrored, train_labels, num_classes=len(scan.classes), seed=seed)
            if progress:
                progress("flip check", 1, 1)
    else:
        # The flip check needs pixels only, no forward pass, and a forced fine-tune needs its verdict (R17) as much as
        # an advised one: without it, digits and text were trained with mirror images.
        sample = profiling_sample(scan.samples, sample_size, seed=seed)
        sample_train = [s for s in sample if s.split == "train"]
        if len(sample_train) >= 2 * len(scan.classes):
            if progress:
                progress("flip check", 0, 1)
            with clock("flip check"):
                pixels, mirrored = thumbnails(sample_train)
                flips = flip_check(pixels, mirrored, torch.tensor([s.label for s in sample_train]),
                                   num_classes=len(scan.classes), seed=seed)
            if progress:
                progress("flip check", 1, 1)
    dups = exact + near
    cross = sum(1 for g in dups if g.crosses_splits)
    conflicting = sum(1 for g in dups if g.conflicting_labels)
    # The scan counts shorter sides below fixed sizes; for another input size the nearest
    # smaller one gives a lower bound.
    below = [k for k in scan.sizes.smaller_than if k <= input_size]
    shorter_below_input = scan.sizes.smaller_than[max(below)] if below else 0
    return DatasetProfile(
        dataset=scan.root,
        layout=scan.layout,
        backbone=backbone.name,
        input_size=input_size,
        classes=scan.classes,
        num_classes=len(scan.classes),
        images_total=scan.num_images,
        images_per_split={k: sum(v.values()) for k, v in scan.counts.items()},
        train_per_class=per_class,
        train_images=len(train),
        train_per_class_min=min(counts),
        train_per_class_median=float(statistics.median(counts)),
        imbalance_ratio=round(max(counts) / max(min(counts), 1), 3),
        sizes=scan.sizes,
        smaller_than_input=shorter_below_input,
        greyscale_share=grey,
        greyscale_by_mode=sum(n for m, n in scan.modes.items() if m in _GREY_MODES),
        exact_duplicates=exact,
        near_duplicates=near,
        near_duplicate_threshold=NEAR_DUPLICATE_COSINE,
        near_duplicate_sample=len(used),
        cross_split_duplicates=cross,
        conflicting_label_duplicates=conflicting,
        skipped=list(scan.skipped) + (list(feature_set.summary.failed) if similarity else []),
        ignored_files=scan.ignored_hidden + scan.ignored_non_image + scan.ignored_unlabeled,
        similarity=measured,
        tap_evidence=evidence,
        flip_check=flips,
        probe_cv=probe_cv,
        probe_cv_seconds_per_unit=cv_unit,
        probe_cv_images=len(used_train) if probe_cv else None,
        probe_curve=curve,
        labels=labels_found,
        split_source=scan.split_source,
        split_seed=scan.split_seed,
        stage_seconds=clock.rounded(),
    )


def _probe_cv(features: dict[str, torch.Tensor], labels: torch.Tensor, evidence, *, num_classes: int,
              seed: int) -> tuple[dict[str, float], dict[str, float], float | None]:
    """5-fold CV accuracy of a logistic probe on pre_logits and on the tap the k-NN evidence ranks first;
    the L2 the CV chose per tap and the CV accuracy at pre_logits' (the learning curve reuses both)."""
    taps = [PRE_LOGITS]
    if evidence:
        best = max(evidence, key=lambda e: (e.knn_accuracy, e.logme)).tap
        if best != PRE_LOGITS:
            taps.append(best)
    out, l2s, best_acc = {}, {}, None
    for tap in taps:
        l2, table = cv_select_l2(features[tap], labels, num_classes=num_classes, seed=seed)
        if table:
            out[tap], l2s[tap] = round(max(acc for _, acc in table), 4), l2
            if tap == PRE_LOGITS:
                best_acc = dict(table).get(l2)
    return out, l2s, best_acc


def profile_dataset(
    dataset: str | os.PathLike,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | os.PathLike | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    rounds: int = 200,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    num_workers: int | None = None,
    progress: StageProgress | None = None,
    similarity: bool = True,
) -> tuple[DatasetProfile, Backbone, DatasetScan]:
    """Scan ``dataset``, build ``backbone`` and measure the profile."""
    clock = StageClock()
    with clock("scan"):
        scan = scan_dataset(dataset, val_fraction=val_fraction, seed=seed)
    with clock("backbone"):
        backbone_model = create_backbone(backbone, weights=weights)
    profile = build_profile(scan, backbone_model, sample_size=sample_size, seed=seed, rounds=rounds, device=device,
                            cache_dir=cache_dir, num_workers=num_workers, progress=progress, similarity=similarity,
                            clock=clock)
    return profile, backbone_model, scan


FLIP_THUMBNAIL = 16  # px: enough for the layout of digits and characters, and cheap
# Pixel probes are ill-conditioned: a short grid and 30 L-BFGS iterations keep the check at a few
# seconds on 2 CPU cores (the full probe grid took 13-31 s for the same choice within 1 point).
FLIP_L2_GRID = (1e-2, 1e-1, 1.0, 10.0)
FLIP_MAX_ITER = 30


def thumbnails(samples: list[Sample], size: int = FLIP_THUMBNAIL) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels of each image squashed to ``size`` x ``size`` RGB, as they are and mirrored: ``[N, 3 * size**2]`` each."""
    from PIL import Image, ImageOps

    rows, mirrored = [], []
    for s in samples:
        img = load_image(s.path, min_side=size).convert("RGB").resize((size, size), Image.BILINEAR)
        for out, im in ((rows, img), (mirrored, ImageOps.mirror(img))):
            out.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).float() / 255)
    return torch.stack(rows), torch.stack(mirrored)


def flip_check(features: torch.Tensor, flipped: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
               seed: int = 0) -> FlipCheck | None:
    """Cross-validated probe accuracy on held-out images as they are and mirrored (None: too few images).

    The probe reads raw thumbnail pixels, not backbone features: ImageNet features are trained to
    be nearly flip-invariant once pooled (a mirrored digit gets almost the same pre_logits as the
    digit), so they cannot show a flip that changes a label; pixels keep the layout. The verdict
    (do labels survive?) is rule R17's, against ``Thresholds.flip_drop``.
    """
    y = labels.long()
    k, _ = fold_count(y, 5)
    if len(y.unique()) < 2 or k == 0:
        return None
    l2, _ = cv_select_l2(features, y, num_classes=num_classes, folds=k, seed=seed, grid=FLIP_L2_GRID, max_iter=FLIP_MAX_ITER)
    fold_of = stratified_folds(y, k, seed=seed)
    hit, hit_flip = torch.zeros(len(y)), torch.zeros(len(y))
    for f in range(k):
        tr, te = fold_of != f, fold_of == f
        std = fit_standardizer(features[tr])
        W, b = fit_logistic(std.apply(features[tr]), y[tr], num_classes=num_classes, l2=l2, max_iter=FLIP_MAX_ITER)
        hit[te] = ((std.apply(features[te]) @ W.T + b).argmax(1) == y[te]).float()
        hit_flip[te] = ((std.apply(flipped[te]) @ W.T + b).argmax(1) == y[te]).float()
    diff = hit - hit_flip
    drop, se = float(diff.mean()), float(diff.std(correction=1) / math.sqrt(len(y))) if len(y) > 1 else 0.0
    return FlipCheck(
        images=len(y), folds=k, accuracy=round(float(hit.mean()), 4), flipped_accuracy=round(float(hit_flip.mean()), 4),
        drop=round(drop, 4), drop_se=round(se, 4),
        method=f"{k}-fold linear probe on {FLIP_THUMBNAIL}x{FLIP_THUMBNAIL} RGB pixels (L2 {l2:g} by CV), fitted on "
               "original images, scored on held-out images as they are and mirrored",
    )
