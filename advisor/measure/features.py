"""Batched multi-tap feature extraction over the feature cache (``advisor.measure.cache``).

Every tap of a backbone is globally average-pooled in the same forward pass, so one pass over
the data serves the linear probe (``pre_logits``), the layer probe (earlier stages) and the
profiler. A second run over the same images does no forward pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel

from advisor.backbones import Backbone
from advisor.backbones.backbone import memory_format_of
from advisor.core import distributed
from advisor.core.distributed import default_num_workers, resolve_device
from advisor.core.errors import AdvisorError, DeviceMemoryError, ImageLoadError, is_out_of_memory
from advisor.core.io import ensure_writable_dir
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, SkippedFile, load_image
from advisor.data.loading import ImageDataset, collate_skip
from advisor.data.scan import Sample
from advisor.core.io import default_cache_dir
from advisor.core.prefetch import ahead
from advisor.data.digests import DigestMemo
from advisor.measure.cache import FeatureCache, KeyMode, image_key
from advisor.measure.device_decode import (
    DeviceEvalTransform,
    EncodedImages,
    collate_encoded,
    decode_on_device,
    device_decode_default,
)

# (done, total) -> None; the CLI turns it into a progress bar, the core never prints.
ProgressFn = Callable[[int, int], None]


class ExtractionSummary(BaseModel):
    """What one extraction did, for reports and the CLI."""

    backbone: str
    weights_digest: str
    transform_digest: str
    taps: list[str]
    tap_channels: dict[str, int]
    images: int
    from_cache: int
    computed: int
    failed: list[SkippedFile]
    cache_dropped: list[SkippedFile] = []  # damaged cache shards deleted and recomputed
    device: str
    seconds: float
    images_per_s: float | None
    cache_dir: str | None
    decode: Literal["cpu", "device"] = "cpu"  # where the computed images' JPEGs were decoded


@dataclass
class FeatureSet:
    """Pooled features of the images that decoded; rows follow ``index`` into the input list."""

    paths: list[str]
    index: list[int]
    features: dict[str, torch.Tensor]
    summary: ExtractionSummary
    labels: torch.Tensor | None = None
    splits: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def rows(self, split: str) -> torch.Tensor:
        """Row indices of the images of one split (requires Sample inputs)."""
        if self.splits is None:
            raise ValueError("this feature set was built from paths, not samples; it has no splits")
        return torch.tensor([i for i, s in enumerate(self.splits) if s == split], dtype=torch.long)


GREY = "meta:grey"  # 1.0 when the decoded image has R == G == B (within JPEG rounding)
_GREY_TOL = 3 / 255


def _greyness(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, 1]: 1.0 where an image's channels agree within JPEG rounding (on pixels, not normalised values)."""
    raw = x * std + mean
    agree = ((raw[:, 0] - raw[:, 1]).abs().amax(dim=(1, 2)) < _GREY_TOL) & ((raw[:, 1] - raw[:, 2]).abs().amax(dim=(1, 2)) < _GREY_TOL)
    return agree.float().unsqueeze(1)


def bn_names(backbone: Backbone) -> list[str]:
    """Names under which BatchNorm input moments are stored (see ``Backbone.forward_taps``)."""
    return [f"bn:{layer.name}:{m}" for layer in backbone.bn_layers() for m in ("mean", "var")]


def _cpu_batches(paths: list[str], todo: list[int], transform, dev: torch.device, *, batch_size: int, workers: int,
                 max_pixels: int):
    """(positions, CPU tensor or None, bad) per batch: decoded and transformed by the DataLoader workers."""
    loader = torch.utils.data.DataLoader(
        # 8-bit crops: the workers skip the float conversion and send a quarter of the bytes.
        ImageDataset(paths, transform.eval_transform(uint8=True), max_pixels=max_pixels, min_side=transform.resize_size),
        batch_size=batch_size,
        sampler=todo,  # the uncached positions, in order
        num_workers=workers,
        collate_fn=collate_skip,
        pin_memory=dev.type == "cuda",
    )
    for batch in loader:
        yield batch.index, batch.x, batch.bad


def _device_batches(paths: list[str], todo: list[int], transform, dev: torch.device, *, batch_size: int, workers: int,
                    max_pixels: int):
    """(positions, device tensor or None, bad) per batch: workers read JPEG bytes, the device decodes them
    (``advisor.measure.device_decode``); other images, and JPEGs the device refuses, are decoded on the CPU."""
    loader = torch.utils.data.DataLoader(
        EncodedImages(paths, transform, max_pixels=max_pixels),
        batch_size=batch_size, sampler=todo, num_workers=workers, collate_fn=collate_encoded,
        pin_memory=False,  # byte strings of varied lengths; decode_jpeg reads them from host memory
    )
    on_device = DeviceEvalTransform(transform)
    cpu_transform = transform.eval_transform(uint8=True)
    for eb in loader:
        bad = list(eb.bad)
        decoded = decode_on_device(eb.jpegs, dev)
        index, images = [], []
        cpu_index = list(eb.pixel_index)
        cpu_x = [eb.pixels] if eb.pixels is not None else []
        for i, img in zip(eb.jpeg_index, decoded):
            if img is not None:
                index.append(i)
                images.append(img)
                continue
            try:  # the device decoder refused a stream the header check passed: the CPU path decides
                cpu_x.append(cpu_transform(load_image(paths[i], max_pixels=max_pixels, min_side=transform.resize_size))[None])
                cpu_index.append(i)
            except ImageLoadError as err:
                bad.append((i, err.reason))
        parts = ([on_device(images)] if images else []) + ([transform.normalize(torch.cat(cpu_x).to(dev))] if cpu_x else [])
        yield torch.tensor(index + cpu_index, dtype=torch.long), (torch.cat(parts) if parts else None), bad


class _MemoryFit:
    """The extraction's forward pass, split into smaller chunks once the device runs out of memory.

    Each image's features do not depend on its batch (eval mode), so a batch that does not fit is
    run in halves, and the halved size stays for the rest of the pass: the default batch of 256
    then also works on a small GPU or with a large backbone or input size, as the user expects,
    instead of failing after the scan.
    """

    def __init__(self, model, taps: list[str], dev: torch.device, *, bn_moments: bool, input_size: int) -> None:
        self.model, self.taps, self.dev, self.bn_moments, self.input_size = model, taps, dev, bn_moments, input_size
        self.chunk: int | None = None  # None: the whole batch

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.dev.type == "cuda"):
            out = self.model.forward_taps(x, self.taps, bn_moments=self.bn_moments)
        return {t: v.float().cpu() for t, v in out.items()}

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        while True:
            step = self.chunk or len(batch)
            try:
                parts = [self._run(batch[i : i + step]) for i in range(0, len(batch), step)]
                return {t: torch.cat([part[t] for part in parts]) for t in parts[0]}
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                if step == 1:
                    raise DeviceMemoryError(
                        f"the {self.dev.type.upper()} device ran out of memory extracting the features of a single "
                        f"image at {self.input_size} px",
                        hint="use a smaller --input-size or backbone, or free the device's memory "
                             "(nvidia-smi lists the processes that hold it)") from None
            # (out of the except block: the error's traceback, which holds the failed pass's tensors, is gone)
            self.chunk = max(1, step // 2)
            if self.dev.type == "cuda":
                torch.cuda.empty_cache()


def extraction_batch_size(device: torch.device | str) -> int:
    """The extraction's default batch: 256 on a GPU (small batches leave it idle), 32 on the CPU."""
    return 256 if torch.device(device).type == "cuda" else 32


def extract_features(
    items: Sequence[Sample] | Sequence[str | os.PathLike],
    backbone: Backbone,
    *,
    taps: Sequence[str] | None = None,
    bn_moments: bool = False,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    key_mode: KeyMode = "content",
    device: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    flush_every: int = 256,
    progress: ProgressFn | None = None,
    decode: Literal["auto", "cpu", "device"] = "auto",
) -> FeatureSet:
    """Pooled features of every tap for ``items`` (Samples or image paths).

    Cached images cost a stat (a file whose size, times or inode changed is hashed again,
    ``advisor.data.digests``) and a read; the rest go through the backbone in batches and are
    written to the cache every ``flush_every`` images, so an interrupted run keeps what it computed. Images that fail to decode are reported in ``summary.failed``.
    ``features`` also holds ``meta:grey`` ([N, 1], 1 = greyscale image) and, with
    ``bn_moments``, the per-image BatchNorm input moments named by :func:`bn_names`.

    ``decode``: where plain JPEGs are decoded; ``auto`` is the device on CUDA when few CPU workers
    would decode (``advisor.measure.device_decode.device_decode_default``), the CPU elsewhere.
    ``batch_size`` defaults to 32 on the CPU and 256 on a GPU (small batches leave a GPU idle).
    """
    t0 = time.perf_counter()
    samples = [it for it in items if isinstance(it, Sample)]
    paths = [it.path if isinstance(it, Sample) else os.fspath(it) for it in items]
    tap_names = list(taps) if taps is not None else [t.name for t in backbone.taps]
    known = {t.name: t.channels for t in backbone.taps}
    unknown = [t for t in tap_names if t not in known]
    if unknown:
        raise AdvisorError(f"backbone {backbone.name} has no tap(s) {unknown}", hint=f"choose from {list(known)}")
    if bn_moments and not backbone.bn_layers():
        raise AdvisorError(f"backbone {backbone.name} has no BatchNorm layers to compare statistics with")
    extra = [GREY] + (bn_names(backbone) if bn_moments else [])
    wanted = tap_names + extra
    # Always store every tap, so a later request for another tap hits the cache too.
    stored = list(known) + extra
    if decode not in ("auto", "cpu", "device"):
        raise AdvisorError(f"decode must be auto, cpu or device, got {decode!r}")
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = extraction_batch_size(dev)
    workers = default_num_workers() if num_workers is None else num_workers
    on_device = decode == "device" or (decode == "auto" and device_decode_default(dev, workers))

    cache = None
    keys: list[str | None] = [None] * len(paths)
    cached: dict[str, dict[str, torch.Tensor]] = {}
    failed: list[SkippedFile] = []
    failed_pos: set[int] = set()
    if use_cache:
        root = ensure_writable_dir(cache_dir or default_cache_dir(), what="feature cache", option="--cache-dir")
        cache = FeatureCache.for_backbone(root, backbone)
        ensure_writable_dir(cache.dir, what="feature cache", option="--cache-dir")
        cache.clean_temporaries()
        memo = DigestMemo(root)
        for i, p in enumerate(paths):
            try:
                keys[i] = image_key(p, key_mode, memo=memo)
            except OSError as err:
                failed.append(SkippedFile(path=p, reason=f"unreadable ({err.strerror or err})"))
                failed_pos.add(i)
        memo.save()
        cached = cache.get([k for k in keys if k is not None], wanted)

    results: dict[int, dict[str, torch.Tensor]] = {}
    todo = []
    for i in range(len(paths)):
        if i in failed_pos:
            continue
        if keys[i] is not None and keys[i] in cached:
            results[i] = cached[keys[i]]
        else:
            todo.append(i)
    n_cached = len(results)
    done = n_cached + len(failed_pos)
    if progress:
        progress(done, len(paths))

    computed = 0
    forward_seconds = 0.0
    todo = distributed.share(todo)  # under DDP each rank computes its share; the shares are gathered below
    if todo:
        # channels_last on the CPU too: EfficientNet-Lite0, 2 cores, batch 32, inference: 0.62 s a batch
        # against 1.12 s in NCHW at 224 px, 0.084 against 0.120 s at 128 px (benchmarks/extract_throughput.py).
        # The caller's layout comes back afterwards: a model that reloads from its files (NCHW) must
        # predict bit for bit as the one in memory.
        layout = memory_format_of(backbone)
        model = backbone.to(dev).eval().to(memory_format=torch.channels_last)
        transform = backbone.transform_config
        mean = torch.tensor(transform.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(transform.std, device=dev).view(1, 3, 1, 1)
        if on_device:
            # The decode of the next batch (nvJPEG's host stage runs in this process) overlaps this one's forward.
            batches = ahead(_device_batches(paths, todo, transform, dev, batch_size=batch_size, workers=workers,
                                            max_pixels=max_pixels), depth=2, device=dev)
        else:
            batches = _cpu_batches(paths, todo, transform, dev, batch_size=batch_size, workers=workers,
                                   max_pixels=max_pixels)
        fitting = _MemoryFit(model, list(known), dev, bn_moments=bn_moments, input_size=transform.input_size)
        pending_keys: list[str] = []
        pending: dict[str, list[torch.Tensor]] = {t: [] for t in stored}

        def flush() -> None:
            if cache is not None and pending_keys:
                cache.put(pending_keys, {t: torch.cat(v) for t, v in pending.items()})
            pending_keys.clear()
            for v in pending.values():
                v.clear()

        try:
            with torch.inference_mode():
                for index, batch, bad in batches:
                    pos = index.tolist()
                    for p, reason in bad:
                        failed.append(SkippedFile(path=paths[p], reason=reason))
                    if batch is not None:
                        tf = time.perf_counter()
                        batch = batch.to(dev, non_blocking=True)
                        if batch.dtype == torch.uint8:
                            batch = transform.normalize(batch)
                        grey = _greyness(batch, mean, std).cpu()
                        out = fitting.forward(batch.contiguous(memory_format=torch.channels_last))
                        out[GREY] = grey
                        forward_seconds += time.perf_counter() - tf
                        for row, p in enumerate(pos):
                            results[p] = {t: out[t][row] for t in wanted}
                            if keys[p] is not None:
                                pending_keys.append(keys[p])
                                for t in stored:
                                    pending[t].append(out[t][row : row + 1])
                        computed += len(pos)
                        if len(pending_keys) >= flush_every:
                            flush()
                    done += len(pos) + len(bad)
                    if progress:
                        progress(done, len(paths))
        finally:
            # Ctrl-C or an error mid-run: what was computed so far is kept.
            flush()
            model.to(memory_format=layout)

    if distributed.active():
        mine = {p: results[p] for p in todo if p in results}
        failed_mine = [f for f in failed if f.path in {paths[p] for p in todo}]
        parts = distributed.gather((mine, failed_mine, computed))
        computed = 0
        for part, part_failed, part_computed in parts:
            results.update(part)
            failed += [f for f in part_failed if f not in failed]
            computed += part_computed
        if progress:
            progress(len(paths), len(paths))
    order = sorted(results)
    widths = {**known, GREY: 1}
    feats = {}
    for t in wanted:
        if order:
            feats[t] = torch.stack([results[i][t] for i in order])
        else:
            feats[t] = torch.empty(0, widths.get(t, 0))
    seconds = time.perf_counter() - t0
    summary = ExtractionSummary(
        backbone=backbone.name,
        weights_digest=backbone.weights_digest,
        transform_digest=backbone.transform_config.digest(),
        taps=tap_names,
        tap_channels={t: known[t] for t in tap_names},
        images=len(paths),
        from_cache=n_cached,
        computed=computed,
        failed=sorted(failed, key=lambda f: f.path),
        device=str(dev),
        seconds=round(seconds, 3),
        images_per_s=round(computed / seconds, 2) if computed else None,
        decode="device" if on_device and todo else "cpu",
        cache_dir=str(cache.dir) if cache is not None else None,
        cache_dropped=list(cache.dropped) if cache is not None else [],
    )
    feature_set = FeatureSet(paths=[paths[i] for i in order], index=order, features=feats, summary=summary)
    if samples and len(samples) == len(paths):
        feature_set.labels = torch.tensor([samples[i].label for i in order], dtype=torch.long)
        feature_set.splits = [samples[i].split for i in order]
    feature_set.extra["forward_seconds"] = forward_seconds
    return feature_set
