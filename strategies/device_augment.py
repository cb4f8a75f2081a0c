"""Flips and TrivialAugmentWide on a batch of uint8 images on the training device, seeded per sample.

On a GPU the CPU workers' per-image augmentation starves the model (docs/gpu_throughput_h200.txt):
here the random resized crop stays with the workers (it decides the batch's tensor shape and
works on the decoded store's small images), and the rest runs batched where the model runs.

Reproducibility: every draw for image ``i`` in epoch ``e`` comes from a CPU generator seeded by
``(seed, e, i, AUGMENT_STREAM)``, so an image's augmentation does not depend on the batch it lands
in, on the device, or on how many workers loaded it; a resumed run draws the same. The pixel
work is deterministic (element-wise ops, ``grid_sample`` forward, ``bincount``).

The op set, magnitude bins and signs are torchvision's ``TrivialAugmentWide`` (31 bins); the colour
ops reproduce ``torchvision.transforms.functional`` on uint8 tensors (tests compare them), the
geometric ones resample bilinearly with zero fill as torchvision's affine does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from advisor.data.loading import mix_seed

AUGMENT_STREAM = 0xA5  # keeps these draws apart from the workers' crop draws of the same (seed, epoch, i)
NUM_BINS = 31
# name -> (magnitudes over the bins, or None; signed)
OPS: dict[str, tuple[torch.Tensor | None, bool]] = {
    "Identity": (None, False),
    "ShearX": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "ShearY": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "TranslateX": (torch.linspace(0.0, 32.0, NUM_BINS), True),
    "TranslateY": (torch.linspace(0.0, 32.0, NUM_BINS), True),
    "Rotate": (torch.linspace(0.0, 135.0, NUM_BINS), True),
    "Brightness": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "Color": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "Contrast": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "Sharpness": (torch.linspace(0.0, 0.99, NUM_BINS), True),
    "Posterize": ((8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 6)).round().int()).float(), False),
    "Solarize": (torch.linspace(255.0, 0.0, NUM_BINS), False),
    "AutoContrast": (None, False),
    "Equalize": (None, False),
}
OP_NAMES = tuple(OPS)
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def draw(seed: int, epoch: int, index: int, *, flip: bool, trivial: bool) -> tuple[bool, str, float]:
    """(flip?, op name, magnitude) for image ``index`` in ``epoch``: TrivialAugmentWide's draw, seeded per sample."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, index, AUGMENT_STREAM))
    flipped = bool(flip and torch.rand(1, generator=g).item() < 0.5)
    if not trivial:
        return flipped, "Identity", 0.0
    op = OP_NAMES[int(torch.randint(len(OP_NAMES), (1,), generator=g).item())]
    mags, signed = OPS[op]
    magnitude = float(mags[int(torch.randint(len(mags), (1,), generator=g).item())].item()) if mags is not None else 0.0
    if signed and torch.randint(2, (1,), generator=g).item():
        magnitude = -magnitude
    return flipped, op, magnitude


def _grey(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of float [N, 3, H, W] holding uint8 values, truncated as torchvision does for uint8."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).floor().unsqueeze(1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's blend; ``ratio`` in float64, cast like the Python float torchvision multiplies by."""
    r, q = ratio.to(a.dtype).view(-1, 1, 1, 1), (1.0 - ratio).to(a.dtype).view(-1, 1, 1, 1)
    return (r * a + q * b).clamp(0, 255).floor()


def _sharpen(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(3, 1, 3, 3)
    blurred = F.conv2d(x, kernel, groups=3).round()
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = blurred  # torchvision keeps the border pixels
    return _blend(x, degenerate, factor)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    hi = torch.where(flat, torch.full_like(hi, 255.0), hi)
    return ((x - lo) * (255.0 / (hi - lo))).clamp(0, 255).floor()


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's per-channel histogram equalisation, for every image and channel at once."""
    n, c, h, w = x.shape
    v = x.long().view(n * c, h * w)
    offsets = torch.arange(n * c, device=x.device).unsqueeze(1) * 256
    hist = torch.bincount((v + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    # The count of the last value present is left out of the step (torchvision's _scale_channel).
    last_idx = 255 - (hist.flip(1) > 0).long().argmax(dim=1)
    last = hist.gather(1, last_idx.unsqueeze(1)).squeeze(1)
    step = torch.div(hist.sum(1) - last, 255, rounding_mode="floor")
    safe = step.clamp(min=1).unsqueeze(1)
    lut = torch.div(hist.cumsum(1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, v).view(n, c, h, w).to(x.dtype)
    return torch.where((step == 0).view(n, c, 1, 1), x, out)


def _affine_theta(op: str, magnitude: float, w: int, h: int) -> list[list[float]]:
    """The normalised inverse map (affine_grid's theta) of one geometric op on a w x h image."""
    a, t, centre = [[1.0, 0.0], [0.0, 1.0]], (0.0, 0.0), (0.0, 0.0)
    if op == "ShearX":
        a = [[1.0, magnitude], [0.0, 1.0]]
    elif op == "ShearY":
        a = [[1.0, 0.0], [magnitude, 1.0]]
    elif op == "TranslateX":
        t = (float(int(magnitude)), 0.0)
    elif op == "TranslateY":
        t = (0.0, float(int(magnitude)))
    elif op == "Rotate":  # counter-clockwise on screen (y points down), about the image centre
        r = math.radians(magnitude)
        a, centre = [[math.cos(r), math.sin(r)], [-math.sin(r), math.cos(r)]], (w / 2, h / 2)
    det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
    inv = [[a[1][1] / det, -a[0][1] / det], [-a[1][0] / det, a[0][0] / det]]
    s = (w / 2, h / 2)
    # pixel p = S (x_n + 1); input p = inv (p_out - centre - t) + centre
    lin = [[inv[i][j] * s[j] / s[i] for j in range(2)] for i in range(2)]
    q = [s[0] - centre[0] - t[0], s[1] - centre[1] - t[1]]
    off = [(inv[i][0] * q[0] + inv[i][1] * q[1] + centre[i]) / s[i] - 1.0 for i in range(2)]
    return [[lin[0][0], lin[0][1], off[0]], [lin[1][0], lin[1][1], off[1]]]


def apply_ops(x: torch.Tensor, ops: list[str], magnitudes: list[float]) -> torch.Tensor:
    """Apply op ``ops[k]`` with ``magnitudes[k]`` to image ``k`` of a uint8 ``[N, 3, H, W]`` batch, batched per op."""
    out = x.float()
    n, _, h, w = x.shape
    for op in set(ops) - {"Identity"}:
        idx = [k for k in range(n) if ops[k] == op]
        sel = torch.tensor(idx, device=x.device)
        mag = torch.tensor([magnitudes[k] for k in idx], dtype=torch.float64, device=x.device)
        part = out.index_select(0, sel)
        if op in GEOMETRIC:
            theta = torch.tensor([_affine_theta(op, magnitudes[k], w, h) for k in idx], dtype=out.dtype, device=x.device)
            grid = F.affine_grid(theta, list(part.shape), align_corners=False)
            part = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False).round()
        elif op == "Brightness":
            part = _blend(part, torch.zeros_like(part), 1.0 + mag)
        elif op == "Color":
            part = _blend(part, _grey(part), 1.0 + mag)
        elif op == "Contrast":
            part = _blend(part, _grey(part).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + mag)
        elif op == "Sharpness":
            part = _sharpen(part, 1.0 + mag)
        elif op == "Posterize":
            keep = (-(2 ** (8 - mag.long()))).view(-1, 1, 1, 1)
            part = (part.long() & keep).to(out.dtype)
        elif op == "Solarize":
            part = torch.where(part >= mag.to(out.dtype).view(-1, 1, 1, 1), 255.0 - part, part)
        elif op == "AutoContrast":
            part = _autocontrast(part)
        elif op == "Equalize":
            part = _equalize(part)
        out.index_copy_(0, sel, part)
    return out.clamp(0, 255).to(torch.uint8)


class DeviceAugment:
    """Horizontal flips and TrivialAugmentWide for uint8 batches already on the device.

    ``aug(x, index, epoch)``: ``x`` a uint8 ``[N, 3, H, W]`` batch, ``index`` the dataset positions of its
    images; returns a uint8 batch of the same shape, each image augmented by its own seeded draw.
    """

    def __init__(self, *, seed: int, flip: bool = True, trivial: bool = False) -> None:
        self.seed, self.flip, self.trivial = seed, flip, trivial

    def __call__(self, x: torch.Tensor, index: torch.Tensor | list[int], epoch: int) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DeviceAugment takes a uint8 [N, 3, H, W] batch, got {x.dtype} {tuple(x.shape)}")
        draws = [draw(self.seed, epoch, int(i), flip=self.flip, trivial=self.trivial) for i in list(index)]
        if self.flip and any(d[0] for d in draws):
            flipped = torch.tensor([d[0] for d in draws], device=x.device).view(-1, 1, 1, 1)
            x = torch.where(flipped, x.flip(-1), x)
        if self.trivial:
            x = apply_ops(x, [d[1] for d in draws], [d[2] for d in draws])
        return x
