"""A tiny random-weight CNN for fast tests; hidden from users unless ADVISOR_TEST_BACKBONES is set."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from advisor.backbones.backbone import (
    PRE_LOGITS,
    Backbone,
    TapInfo,
    TransformConfig,
)
from advisor.backbones.registry import register_backbone
from advisor.backbones.weights import (
    _WEIGHTS_HINT,
    WeightsPath,
    _load_state_dict,
    _random_init,
    _read_state_dict,
    _seeded,
    _WeightsLocation,
)

# --------------------------------------------------------------------------- test backbone


class _TinyCNN(nn.Module):
    """Three conv-BN-ReLU stages (stride 2 each), global pool, linear head: ~24k params."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10) -> None:
        super().__init__()
        stages, c_in = [], 3
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stages(x)).flatten(1))


@register_backbone(
    "test/tiny-cnn",
    description="tiny random conv net (3 stages, 10 classes, 32 px) for fast tests",
    source="test",
    locate_weights=lambda: _WeightsLocation(
        False,
        None,
        f"randomly initialised by design (deterministic per seed); {_WEIGHTS_HINT} to load a state dict",
    ),
)
def tiny_cnn(*, weights: WeightsPath | None = None, pretrained: bool = True, seed: int = 0) -> Backbone:
    name = "test/tiny-cnn"
    model = _seeded(seed, _TinyCNN)
    if weights is None:  # there are no pretrained weights, so pretrained=True is a random init too
        digest, source = _random_init(seed)
    else:
        source = os.fspath(weights)
        digest = _load_state_dict(model, _read_state_dict(source), name=name, origin=source)
    taps = [
        TapInfo(name=f"stage{i + 1}", channels=s[0].out_channels, stride=2 ** (i + 1), module=f"stages.{i}")
        for i, s in enumerate(model.stages)
    ]
    taps.append(TapInfo(name=PRE_LOGITS, channels=model.fc.in_features, module="fc", pooled_from="pool"))
    return Backbone(
        name,
        model,
        taps=taps,
        transform_config=TransformConfig(
            input_size=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=0.875
        ),
        weights_digest=digest,
        weights_source=source,
    )

