"""Pictures of evidence maps: the crop the model saw, beside it the same crop in grey with the map over it.

The maps come from :func:`advisor.backbones.evidence.evidence_maps` (exact for this project's
heads: the logit is the map's mean). A picture shows one contrast, class ``a`` against class
``b``: vermillion where the image pushes the model towards ``a``, blue where towards ``b``, the
opacity following the strength (scaled to the picture's strongest pixel, so pictures are not
comparable in absolute terms; ``Explanation.evidence`` has the values in logit units).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advisor.backbones.evidence import evidence_maps
from advisor.core.errors import AdvisorError
from advisor.data.imagefile import DEFAULT_MAX_PIXELS, load_image, to_rgb

FOR_A = np.array([213, 94, 0], dtype=np.float32)  # Okabe-Ito vermillion, as the report's other "wrong" marks
FOR_B = np.array([0, 114, 178], dtype=np.float32)  # Okabe-Ito blue
MAX_ALPHA = 0.7  # the strongest pixel still shows the image under it


@dataclass(frozen=True)
class Explanation:
    """Why the model favours ``a`` over ``b`` on one image.

    ``evidence``: ``[S, S]`` float32, logit units per pixel of the crop (mean = ``gap``); ``crop``:
    ``[S, S, 3]`` uint8, the centre crop the model saw; ``gap``: logit_a - logit_b (the log-odds
    of a over b for a temperature-scaled run).
    """

    source: str
    a: str
    b: str
    gap: float
    evidence: np.ndarray
    crop: np.ndarray

    def overlay(self) -> Image.Image:
        """The crop with the evidence over it (vermillion: towards ``a``; blue: towards ``b``)."""
        return Image.fromarray(overlay_array(self.crop, self.evidence))

    def image(self, panel: int | None = None) -> Image.Image:
        """The crop and the overlay side by side, each ``panel`` pixels square (default: the crop's size)."""
        size = panel or self.crop.shape[0]
        out = Image.new("RGB", (2 * size + 4, size), "white")
        for n, img in enumerate((Image.fromarray(self.crop), self.overlay())):
            out.paste(img.resize((size, size), Image.Resampling.BICUBIC), (n * (size + 4), 0))
        return out

    def save(self, path: str | os.PathLike, panel: int | None = None) -> Path:
        path = Path(path)
        self.image(panel).save(path, quality=90)
        return path


def overlay_array(crop: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``evidence`` [S, S] blended over ``crop`` [S, S, 3] uint8 in grey (so an orange flower cannot pass for
    vermillion evidence), as uint8."""
    scale = float(np.abs(evidence).max())
    strength = np.abs(evidence) / scale if scale > 0 else np.zeros_like(evidence)
    alpha = (MAX_ALPHA * strength)[..., None]
    colour = np.where((evidence >= 0)[..., None], FOR_A, FOR_B)
    grey = (crop.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return (grey * (1 - alpha) + colour * alpha).round().clip(0, 255).astype(np.uint8)


def explain(model, classes: Sequence[str], items: Sequence, pairs: Sequence[tuple[int, int] | None] | None = None, *,
            device: torch.device | str = "cpu", batch_size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
            tta: bool = False) -> list[Explanation | str]:
    """An :class:`Explanation` per item (an image file or a PIL image), or the reason it could not be read.

    ``pairs[i]``: the class indices ``(a, b)`` to contrast on item i; ``a`` None means the model's top
    class, ``b`` None the most likely class other than ``a``; no ``pairs`` contrasts the top class with
    the runner-up on every item: why the model chose what it chose. ``tta``: explain the average of the
    image's and its mirror image's logits (the mirror's maps mirrored back and averaged: still exact).
    """
    if len(classes) < 2:
        raise AdvisorError("an explanation contrasts two classes; this model has fewer")
    pairs = [p or (None, None) for p in pairs] if pairs is not None else [(None, None)] * len(items)
    if len(pairs) != len(items):
        raise AdvisorError(f"pairs has {len(pairs)} entries for {len(items)} images")
    for a, b in pairs:
        if a is not None and a == b or any(c is not None and not 0 <= c < len(classes) for c in (a, b)):
            raise AdvisorError(f"an explanation contrasts two different classes of the model's {len(classes)}; "
                               f"got {(a, b)}")
    tc = model.backbone.transform_config
    to_crop = tc.eval_transform(uint8=True)
    out: list[Explanation | str] = []
    for start in range(0, len(items), batch_size):
        crops, names, reasons = [], [], {}
        for n, item in enumerate(items[start:start + batch_size]):
            name = f"<image {start + n}>" if isinstance(item, Image.Image) else str(item)
            try:
                img = to_rgb(item) if isinstance(item, Image.Image) else load_image(item, max_pixels=max_pixels,
                                                                                   min_side=tc.resize_size)
                crops.append(to_crop(img))
                names.append((n, name))
            except Exception as err:  # an unreadable file is reported by reason, the others still explained
                reasons[n] = getattr(err, "reason", None) or type(err).__name__
        done: dict[int, Explanation] = {}
        if crops:
            batch = torch.stack(crops)
            x = tc.normalize(batch).to(device)
            ev = evidence_maps(model, x)
            if tta:
                ev = ev.averaged_with_mirror(evidence_maps(model, x.flip(3)))
            chosen = [_pair(ev.logits[i].cpu(), *pairs[start + n]) for i, (n, _) in enumerate(names)]
            a = torch.tensor([p[0] for p in chosen], device=ev.logits.device)
            b = torch.tensor([p[1] for p in chosen], device=ev.logits.device)
            maps = ev.contrast(a, b, tc.input_size).cpu().numpy().astype(np.float32)
            rows = torch.arange(len(chosen), device=ev.logits.device)
            gaps = (ev.logits[rows, a] - ev.logits[rows, b]).tolist()
            for i, (n, name) in enumerate(names):
                done[n] = Explanation(source=name, a=classes[chosen[i][0]], b=classes[chosen[i][1]], gap=gaps[i],
                                      evidence=maps[i], crop=batch[i].permute(1, 2, 0).numpy())
        out += [done.get(n) or reasons[n] for n in range(len(items[start:start + batch_size]))]
    return out


def write_pictures(model, classes: Sequence[str], items: Sequence, pairs: Sequence[tuple[int | None, int | None]],
                   folder: Path, *, device: torch.device | str = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS,
                   tta: bool = False) -> list[str | None]:
    """``folder/NNNN-<name>.jpg`` per item (N: its position), each written atomically; the path, or None for an
    image that could not be read (it changed since it was classified)."""
    import re

    from advisor.core.io import call_writing

    paths: list[str | None] = []
    for n, (item, ex) in enumerate(zip(items, explain(model, classes, items, pairs, device=device,
                                                      max_pixels=max_pixels, tta=tta))):
        if isinstance(ex, str):
            paths.append(None)
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(item).stem if isinstance(item, (str, os.PathLike)) else "image")
        path = call_writing(folder / f"{n:04d}-{stem[:60]}.jpg",
                            lambda tmp, ex=ex: ex.image().save(tmp, format="JPEG", quality=90))
        paths.append(str(path))
    return paths


def check_mappable(model) -> None:
    """Raise AdvisorError now when ``model``'s logits cannot be placed on the image (before a long pass, not after)."""
    size = model.backbone.transform_config.input_size
    evidence_maps(model, torch.zeros(1, 3, size, size, device=next(model.parameters()).device))


def _pair(logits: torch.Tensor, a: int | None, b: int | None) -> tuple[int, int]:
    if a is None:
        a = int(logits.argmax()) if b is None else int(logits.masked_fill(_mask(logits, b), float("-inf")).argmax())
    if b is None:
        b = int(logits.masked_fill(_mask(logits, a), float("-inf")).argmax())
    return a, b


def _mask(logits: torch.Tensor, c: int) -> torch.Tensor:
    m = torch.zeros_like(logits, dtype=torch.bool)
    m[c] = True
    return m
