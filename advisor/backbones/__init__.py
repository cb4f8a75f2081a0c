"""Pretrained ImageNet backbones behind one funnel, :func:`create_backbone`.

Three kinds of names are understood:

* registered names (:func:`list_backbones`): ``efficientnet_lite0`` (the default),
  ``efficientnet_lite1``, ``efficientnet_lite2`` and ``test/tiny-cnn``;
* ``timm/<model>``: any timm model; weights from ``weights=`` or the local Hugging Face cache;
* ``torchvision/<model>``: any torchvision classifier; weights from ``weights=`` or the torch hub cache.

Nothing here downloads. Weights come from an explicit file, an installed package or a cache
that an earlier online run filled; when none is there the error says where we looked and how
to supply them. Every backbone exposes *taps*, its stage outputs in depth order plus
``pre_logits``, which :meth:`Backbone.forward_taps` returns as pooled ``[B, C]`` vectors from
a single forward pass. :mod:`advisor.backbones.classifier` is a backbone with a new head: the model a run
trains, saves and loads.

Imports advisor.core and advisor.data (a file's digest) only.
"""

from __future__ import annotations

# Importing these modules registers their backbones.
from advisor.backbones import lite as _lite  # noqa: F401
from advisor.backbones import testing as _testing  # noqa: F401
from advisor.backbones.backbone import (
    DEFAULT_BACKBONE,
    PRE_LOGITS,
    Backbone,
    BackboneInfo,
    BNLayerInfo,
    TapInfo,
    TransformConfig,
)
from advisor.backbones.registry import (
    backbone_info,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "PRE_LOGITS",
    "Backbone",
    "BackboneInfo",
    "BNLayerInfo",
    "TapInfo",
    "TransformConfig",
    "backbone_info",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
