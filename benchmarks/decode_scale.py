"""What decoding large JPEGs at a reduced scale costs and changes: full decode against libjpeg's DCT scaling.

    python benchmarks/decode_scale.py DATASET [--input-size 224] [--upscale-to 1024]

Users' folders often hold camera photos (3000-4000 px) that every run resizes to ~256 px; decoding
every pixel first is most of the CPU's work per image. `advisor.data.imagefile.load_image(...,
min_side=S)` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale while its shorter side stays at
least S (the eval resize size), then resizes as before. This script decodes and transforms every
image of DATASET both ways and prints the milliseconds an image, how far the pixels and the
pre_logits features move (cosine), and the linear probe's validation accuracy on each. The shared
datasets are small images (<= 256 px, where nothing changes), so ``--upscale-to N`` first writes a
copy whose shorter sides are N px (bicubic, JPEG quality 92) to stand in for photos.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from advisor.backbones import create_backbone
from advisor.data.imagefile import load_image
from advisor.data.scan import scan_dataset
from strategies.probe import fit_probe, predict_logits


def upscaled_copy(src: Path, dst: Path, side: int) -> Path:
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        q = (dst / p.relative_to(src)).with_suffix(".jpg")
        q.parent.mkdir(parents=True, exist_ok=True)
        im = Image.open(p).convert("RGB")
        s = side / min(im.size)
        im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC).save(q, quality=92)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--upscale-to", type=int, default=None, metavar="N")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dataset)
        if args.upscale_to:
            root = upscaled_copy(root, Path(tmp) / root.name, args.upscale_to)
        backbone = create_backbone("efficientnet_lite0").with_input_size(args.input_size)
        tc = backbone.transform_config
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
