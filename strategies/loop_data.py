"""Where the fine-tune loop's batches come from and how a model is evaluated.

Loaders (persistent workers), the decoded-image stores (each image decoded once), uint8 batches
normalised on the device, the evaluation pass (gathered across ranks), and skipped files noted
once per run. :class:`LoopData` is mixed into :class:`strategies.loop.FinetuneLoop` and reads
its ``cfg``, ``ctx``, ``data``, ``backbone``, ``dev``, ``rank``, ``workers`` and ``seed``.
"""

from __future__ import annotations

import os

import torch

from advisor.backbones.classifier import TransferClassifier
from advisor.core import distributed
from advisor.core.errors import AdvisorError
from advisor.data.decoded import DecodedImages, estimated_bytes, eval_side, has_room, store_off_reason, train_side
from advisor.data.loading import ImageDataset, collate_skip
from advisor.data.scan import Sample
from advisor.decide.recipe import curve_images
from advisor.measure.profiler import stratified_sample
from advisor.core.io import default_cache_dir
from strategies.device_augment import DeviceAugment
from strategies.transforms import EvalTransform, TrainTransform

AUGMENT_ON_ENV = "ADVISOR_AUGMENT_ON"  # "workers" or "device": overrides cfg.augment_on for every run (benchmarks)


class LoopData:
    """Batches in, logits out: the data side of :class:`strategies.loop.FinetuneLoop`."""

    _device_augment: DeviceAugment | None = None  # the loop sets it from device_augment() before training

    def _loader(self, dataset: ImageDataset, batches) -> torch.utils.data.DataLoader:
        # Persistent workers, forked once: with a DataLoader per epoch, re-forking the grown training
        # process slowed the forward passes epoch after epoch (1.0 -> 4.7 s per batch over 5 epochs, CPU).
        return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=self.workers,
                                           collate_fn=collate_skip, pin_memory=self.cuda,
                                           persistent_workers=self.workers > 0)

    def curve_samples(self, size: int | None) -> list[Sample]:
        """The validation images the learning curve reads each epoch: ``size`` of them, stratified and seeded (the
        same every epoch and after a resume); None: :func:`advisor.decide.recipe.curve_images`'s share."""
        val = list(self.data.val)
        n = size if size is not None else curve_images(len(val), len(self.train_samples))
        return val if n >= len(val) else stratified_sample(val, n, seed=self.seed)

    def eval_loader(self, samples: list[Sample], order: list[int] | None = None, *,
                    shard: bool = True) -> torch.utils.data.DataLoader:
        """Un-augmented batches of ``samples`` (in ``order``, default file order); this rank's share under DDP
        unless ``shard`` is False (passes whose result every rank needs whole, like re-estimating BatchNorm)."""
        keys = [(0, i) for i in (range(len(samples)) if order is None else order)]
        if self.rank is not None and shard:
            keys = keys[self.rank.rank::self.rank.world]
        batches = [keys[i:i + self.cfg.batch_size] for i in range(0, len(keys), self.cfg.batch_size)]
        return self._loader(ImageDataset.from_samples(samples, EvalTransform(self.backbone.transform_config), seed=self.seed,
                                                      decoded=self.decoded_eval, min_side=self.decode_sides()[1]), batches)

    def decode_sides(self) -> tuple[int, int]:
        """(training, evaluation) shorter side an image is decoded to at least (and the decoded stores keep): the
        smallest random crop is not upsampled more than from the original; evaluation's resize size."""
        cfg, tc = self.cfg, self.backbone.transform_config
        e_side = eval_side(tc.resize_size)
        return (train_side(cfg.input_size, cfg.crop_scale) if cfg.augment != "none" else e_side), e_side

    def _decoded_stores(self) -> tuple[DecodedImages | None, DecodedImages | None, str]:
        """(training store, evaluation store, why) for decoding each image once (``advisor.data.decoded``).

        Worth it from the second epoch on (a one-epoch run reads each training image once). Off when
        the images would take more than a quarter of the free disk.
        """
        cfg, tc = self.cfg, self.backbone.transform_config
        t_side, e_side = self.decode_sides()
        why = store_off_reason(cfg.epochs, enabled=cfg.decoded_cache)
        if why:
            return None, None, why
        root = self.ctx.cache_dir or default_cache_dir()
        n = len(self.data.train) + len(self.data.val)
        needed = estimated_bytes(len(self.data.train), t_side) + estimated_bytes(n, e_side)
        if not has_room(root, needed):
            return None, None, f"off (about {needed / 1e9:.1f} GB would exceed a quarter of the free disk)"
        evaluation = DecodedImages(root, side=e_side, interpolation=tc.interpolation)
        training = (evaluation if cfg.augment == "none"
                    else DecodedImages(root, side=t_side, interpolation=tc.interpolation, upscale=False))
        return training, evaluation, f"on ({training.dir.parent})"

    @torch.inference_mode()
    def evaluate(self, model: TransferClassifier, loader, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(logits, labels, paths) of every image that decoded; under DDP gathered from every rank, in file order."""
        model.eval()
        logits, labels, index = [], [], []
        for batch in loader:
            self.note_bad(batch.bad, samples)
            if batch.x is None:
                continue
            with self.autocast():
                out = model(self.to_device(batch.x))
            logits.append(out.float().cpu())
            labels.append(batch.y)
            index += batch.index.tolist()
        if self.rank is not None:
            parts = distributed.gather((index, torch.cat(logits) if logits else None, torch.cat(labels) if labels else None))
            rows = sorted((i, lg[k], lb[k]) for idx, lg, lb in parts if lg is not None for k, i in enumerate(idx))
            index = [r[0] for r in rows]
            logits = [torch.stack([r[1] for r in rows])] if rows else []
            labels = [torch.stack([r[2] for r in rows])] if rows else []
        if not logits:
            raise AdvisorError("no validation image could be decoded")
        return torch.cat(logits), torch.cat(labels), [samples[i].path for i in index]

    def augment_site(self) -> str:
        """Where flips and TrivialAugment run: "device" (batched), "workers" (per image) or "none" (``cfg.augment_on``)."""
        cfg = self.cfg
        if cfg.augment == "none":
            return "none"
        if cfg.augment == "crop" and not cfg.hflip:
            return "workers"  # only the crop, which the loader does anyway
        on = os.environ.get(AUGMENT_ON_ENV, "").strip().lower() or cfg.augment_on
        if on not in ("auto", "workers", "device"):
            raise AdvisorError(f"{AUGMENT_ON_ENV} must be workers or device, got {on!r}", hint=f"unset {AUGMENT_ON_ENV}")
        return "workers" if on == "workers" else "device"

    def device_augment(self) -> DeviceAugment | None:
        """The batched flips and TrivialAugment the device applies, or None where the workers (or nothing) augment."""
        cfg = self.cfg
        if self.augment_site() != "device":
            return None
        return DeviceAugment(seed=self.seed, flip=cfg.hflip, trivial=cfg.augment == "trivial")

    def train_dataset(self) -> ImageDataset:
        """The training images, augmented per (epoch, image) with the run's seed."""
        return ImageDataset.from_samples(self.train_samples, self.train_transform(), seed=self.seed,
                                         decoded=self.decoded_train, min_side=self.decode_sides()[0])

    def train_transform(self):
        """The workers' per-image transform: the crop always, flips and TrivialAugment unless the device does them."""
        transform, cfg = self.backbone.transform_config, self.cfg
        if cfg.augment == "none":
            return EvalTransform(transform)
        on_device = self.augment_site() == "device"
        return TrainTransform(transform, cfg.input_size, scale=(cfg.crop_scale, 1.0), flip=cfg.hflip and not on_device,
                              trivial=cfg.augment == "trivial" and not on_device)

    def train_input(self, batch) -> torch.Tensor:
        """A training batch on the device: augmented there when ``augment_site()`` says so, normalised, channels_last."""
        x = batch.x.to(self.dev, non_blocking=True)
        if self._device_augment is not None:
            x = self._device_augment(x, batch.index, self.pos.epoch)
        return self.normalize(x)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A uint8 batch on the device, normalised there (4x fewer bytes to copy), channels_last."""
        return self.normalize(x.to(self.dev, non_blocking=True))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.transform_config.normalize(x).contiguous(memory_format=torch.channels_last)

    def autocast(self):
        return torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.cuda)

    def note_bad(self, bad: list[tuple[int, str]], samples: list[Sample]) -> None:
        for i, reason in bad:
            self.note_skipped(samples[i].path, reason)

    def note_skipped(self, path: str, reason: str) -> None:
        if path not in self.skipped:  # each bad file is reported once per run, however often it is drawn
            self.skipped[path] = reason
            self.ctx.event("skipped_image", path=path, reason=reason)
