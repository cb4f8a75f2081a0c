"""What decoding large JPEGs at a reduced scale costs and changes: full decode against libjpeg's DCT scaling.

    python benchmarks/decode_scale.py DATASET [--input-size 224] [--upscale-to 1024 [--limit K]] [--throughput]

Users' folders often hold camera photos (3000-4000 px) that every run resizes to ~256 px; decoding
every pixel first is most of the CPU's work per image. `advisor.data.imagefile.load_image(...,
min_side=S)` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while its shorter side stays at
least S (the eval resize size), then resizes as before. This script decodes and transforms every
image of DATASET both ways and prints the milliseconds an image, how far the pixels and the
pre_logits features move (cosine), and the linear probe's validation accuracy on each. The shared
datasets are small images (<= 256 px, where nothing changes), so ``--upscale-to N`` first writes a
copy whose shorter sides are N px (bicubic, JPEG quality 92) to stand in for photos (``--limit K``:
the first K images only).

``--throughput`` instead times the two ways a GPU run could treat such photos, each through a
DataLoader with the run's default workers, to the normalised batch on the device: (a) what the
extraction does now, CPU workers decoding at the reduced scale (``min_side``) and transforming;
(b) workers only reading bytes, the main process decoding every pixel on the device
(``torchvision.io.decode_jpeg``, nvJPEG on CUDA) and resizing there
(``advisor.measure.device_decode.DeviceEvalTransform``). It prints images/s for each, their ratio
and the pre_logits cosine between them: the measurement that decides whether large JPEGs should go
to nvJPEG instead of the CPU workers on a GPU (on the CPU, (b) is libjpeg-turbo decoding in full).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from advisor.backbones import create_backbone
from advisor.core.distributed import default_num_workers, resolve_device
from advisor.data.imagefile import load_image
from advisor.data.scan import scan_dataset
from advisor.measure.device_decode import DeviceEvalTransform, decode_on_device
from strategies.probe import fit_probe, predict_logits


def _upscale_one(job: tuple[Path, Path, int]) -> None:
    p, q, side = job
    q.parent.mkdir(parents=True, exist_ok=True)
    im = Image.open(p).convert("RGB")
    s = side / min(im.size)
    im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC).save(q, quality=92)


def upscaled_copy(src: Path, dst: Path, side: int, limit: int | None = None) -> Path:
    """A copy of ``src`` whose images are JPEGs with shorter side ``side`` (in parallel: a GPU host has cores)."""
    files = [p for p in sorted(src.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if limit:
        # every class keeps images: take them round-robin over the class folders
        by_dir: dict[Path, list[Path]] = {}
        for p in files:
            by_dir.setdefault(p.parent, []).append(p)
        rows = [lst[i] for i in range(max(map(len, by_dir.values()))) for lst in by_dir.values() if i < len(lst)]
        files = sorted(rows[:limit])
    jobs = [(p, (dst / p.relative_to(src)).with_suffix(".jpg"), side) for p in files]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_upscale_one, jobs, chunksize=4))
    return dst


class _Decoded(torch.utils.data.Dataset):
    """(a): the CPU workers decode (at the reduced scale) and transform."""

    def __init__(self, paths, transform, min_side):
        self.paths, self.transform, self.min_side = paths, transform, min_side

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(load_image(self.paths[i], min_side=self.min_side))


class _Bytes(torch.utils.data.Dataset):
    """(b): the workers only read the file."""

    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.frombuffer(bytearray(Path(self.paths[i]).read_bytes()), dtype=torch.uint8)


def throughput(paths: list[str], tc, dev: torch.device, *, batch: int, workers: int, repeat: int) -> None:
    """Print images/s of (a) and (b) above and the pre_logits cosine between their batches."""
    listed = paths * repeat
    loader = dict(batch_size=batch, num_workers=workers, persistent_workers=False)
    dte = DeviceEvalTransform(tc)

    def run_cpu():
        dl = torch.utils.data.DataLoader(_Decoded(listed, tc.eval_transform(), tc.resize_size), pin_memory=dev.type == "cuda", **loader)
        return [x.to(dev, non_blocking=True) for x in dl]

    def run_device():
        dl = torch.utils.data.DataLoader(_Bytes(listed), collate_fn=list, **loader)
        return [dte(decode_on_device(b, dev)) for b in dl]

    out = {}
    for name, fn in (("CPU workers, reduced decode", run_cpu), ("device decode, every pixel", run_device)):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xs = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        rate = len(listed) / (time.perf_counter() - t0)
        out[name] = (rate, torch.cat(xs)[: len(paths)])
        print(f"{name:28s} {rate:8.1f} images/s ({len(listed)} images, batch {batch}, {workers} workers, {dev.type})", flush=True)
    (ra, xa), (rb, xb) = out.values()
    print(f"device / CPU workers: {rb / ra:.2f}x (> 1: large JPEGs would be faster on the device decoder)")
    bb = create_backbone("efficientnet_lite0").with_input_size(tc.input_size).to(dev).eval()
    with torch.inference_mode():
        fa, fb = (torch.cat([bb.forward_taps(x[i:i + 64].float(), ["pre_logits"])["pre_logits"] for i in range(0, len(x), 64)])
                  for x in (xa, xb))
    cos = torch.nn.functional.cosine_similarity(fa.flatten(1), fb.flatten(1))
    print(f"pre_logits cosine, (a) vs (b): median {cos.median():.4f}, min {cos.min():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--upscale-to", type=int, default=None, metavar="N")
    ap.add_argument("--limit", type=int, default=None, metavar="K", help="with --upscale-to: copy only K images")
    ap.add_argument("--throughput", action="store_true", help="time (a) CPU workers against (b) the device decoder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="with --throughput: list every image this many times")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dataset)
        if args.upscale_to:
            t0 = time.perf_counter()
            root = upscaled_copy(root, Path(tmp) / root.name, args.upscale_to, args.limit)
            print(f"copy at {args.upscale_to} px: {time.perf_counter() - t0:.1f} s", flush=True)
        backbone = create_backbone("efficientnet_lite0").with_input_size(args.input_size)
        tc = backbone.transform_config
        if args.throughput:
            paths = [s.path for s in scan_dataset(str(root)).samples]
            return throughput(paths, tc, resolve_device(args.device), batch=args.batch_size,
                              workers=default_num_workers(), repeat=args.repeat)
        transform = tc.eval_transform()
        scan = scan_dataset(str(root))
        paths = [s.path for s in scan.samples]
        xs = {}
        for name, min_side in (("full decode", None), ("reduced decode", tc.resize_size)):
            t0 = time.perf_counter()
            xs[name] = torch.stack([transform(load_image(p, min_side=min_side)) for p in paths])
            print(f"{name:15s} {1000 * (time.perf_counter() - t0) / len(paths):6.2f} ms an image (decode + transform), "
                  f"{len(paths)} images, {args.input_size} px (resize {tc.resize_size})", flush=True)
    a, b = xs.values()
    print(f"pixels (normalised units): mean |difference| {(a - b).abs().mean():.4f}, max {(a - b).abs().max():.3f}")
    with torch.inference_mode():
        feats = {n: torch.cat([backbone.forward_taps(x[i:i + 32], ["pre_logits"])["pre_logits"] for i in range(0, len(x), 32)])
                 for n, x in xs.items()}
    fa, fb = feats.values()
    cos = torch.nn.functional.cosine_similarity(fa.flatten(1), fb.flatten(1))
    print(f"pre_logits cosine, full vs reduced: median {cos.median():.4f}, min {cos.min():.4f}")
    labels = torch.tensor([s.label for s in scan.samples])
    tr = torch.tensor([i for i, s in enumerate(scan.samples) if s.split == "train"])
    va = torch.tensor([i for i, s in enumerate(scan.samples) if s.split != "train"])
    for name, f in feats.items():
        fit = fit_probe({"pre_logits": f[tr]}, labels[tr], taps=["pre_logits"], num_classes=len(scan.classes), seed=0)
        acc = float((predict_logits(fit, {"pre_logits": f[va]}).argmax(1) == labels[va]).float().mean())
        print(f"{name:15s} linear probe validation accuracy {acc:.4f} ({len(va)} images)")


if __name__ == "__main__":
    sys.exit(main())
