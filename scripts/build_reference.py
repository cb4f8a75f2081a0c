"""Build the ImageNet reference statistics shipped in advisor/reference/.

    python scripts/build_reference.py --images ../shared/data/imagenet-sample [--backbone efficientnet_lite0]
        [--kid-scale X --bn-scale Y]

For each backbone it stores, in ``advisor/reference/<backbone>.safetensors``:
* ``pre_logits``: the reference images' pre-logits features (float16), for KID and the
  Fréchet null; features, not images;
* in the metadata: the weights digest they belong to, the BatchNorm shift the reference images
  themselves show per stage (the baseline that dataset shifts are reported against), the
  ImageNet head's mean confidence on them, the calibrated similarity scales (distance at which
  similarity = 0.5; see docs/decision-rules.md) and the provenance (source, count, date,
  transform, command).
The default source is ../shared/data/imagenet-sample: one image per ImageNet-1k class.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from advisor.core.version import __version__
from advisor.backbones import PRE_LOGITS, create_backbone
from advisor.data.imagefile import IMAGE_EXTENSIONS
from advisor.measure.features import extract_features
from advisor.measure.similarity import (
    DEFAULT_SCALES,
    REFERENCE_FORMAT,
    bn_shift_weighted,
    head_confidence,
    load_reference,
    reference_path,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(REPO.parent / "shared" / "data" / "imagenet-sample"))
    ap.add_argument("--backbone", action="append", help="repeatable; default: efficientnet_lite0")
    ap.add_argument("--kid-scale", type=float, default=None, help="keep the existing value when omitted")
    ap.add_argument("--bn-scale", type=float, default=None, help="keep the existing value when omitted")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not images:
        sys.exit(f"no images under {args.images}")
    for name in args.backbone or ["efficientnet_lite0"]:
        bb = create_backbone(name)
        previous, _ = load_reference(bb)
        scales = dict(previous.scales) if previous is not None else dict(DEFAULT_SCALES)
        if args.kid_scale is not None:
            scales["kid"] = args.kid_scale
        if args.bn_scale is not None:
            scales["bn_shift"] = args.bn_scale
        fs = extract_features(images, bb, bn_moments=True, device=args.device)
        n = fs.features[PRE_LOGITS].shape[0]
        ones = torch.ones(1, n, dtype=torch.float64)
        per_stage, _ = bn_shift_weighted(fs, bb, ones)
        conf = head_confidence(fs.features[PRE_LOGITS], bb)
        info = {
            "bn_baseline": {s: round(float(v[0]), 6) for s, v in per_stage.items()},
            "confidence": round(float(conf.mean()), 6) if conf is not None else None,
            "scales": scales,
            "provenance": {
                "source": Path(args.images).name,
                "images": n,
                "failed": len(fs.summary.failed),
                "description": "one image per ImageNet-1k class (shared/data/imagenet-sample)",
                "built": datetime.date.today().isoformat(),
                "advisor": __version__,
                "transform": bb.transform_config.model_dump(mode="json"),
                "command": "python scripts/build_reference.py " + " ".join(sys.argv[1:]),
            },
        }
        out = reference_path(bb.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file({"pre_logits": fs.features[PRE_LOGITS].half().contiguous()}, str(out), metadata={
            "format": REFERENCE_FORMAT, "backbone": bb.name, "weights_digest": bb.weights_digest, "info": json.dumps(info),
        })
        print(f"{bb.name}: {n} images -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
        print(json.dumps({k: v for k, v in info.items() if k != "provenance"}, indent=2))


if __name__ == "__main__":
    main()
