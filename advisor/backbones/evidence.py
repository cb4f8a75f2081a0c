"""Evidence maps: where in the image a trained classifier's logits come from.

Every tap a :class:`~advisor.backbones.classifier.TransferClassifier` reads is the global average
of a feature map ``A`` (C x h x w), and its head is linear on the standardised averages::

    logit_k = b_k + sum_taps sum_c W_kc / s_c * (mean_xy A_c(x, y) - m_c)
            = b_k + sum_taps mean_xy M_k(x, y),   M_k(x, y) = sum_c W_kc / s_c * (A_c(x, y) - m_c)

so ``M_k`` places each class's logit on the map's grid exactly: the class activation map of Zhou
et al. (CVPR 2016), with no gradients and no approximation, because the head is linear on
averages. ``pre_logits`` has a map where its backbone declares the pooling it is the mean of
(``TapInfo.pooled_from``); the reassembled logits are checked against the model's own before any
map is returned, so a backbone that breaks the identity is refused, never mapped wrongly.

A contrast ``M_a - M_b`` shows what pushes the model to class ``a`` rather than ``b``; its mean
over the grid is the logit gap, which after temperature scaling is the log-odds between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from advisor.backbones.backbone import PRE_LOGITS
from advisor.core.errors import AdvisorError


@dataclass(frozen=True)
class EvidenceMaps:
    """Per-class logit maps of a batch: ``maps[t]`` is ``[B, K, h_t, w_t]`` for the model's t-th tap (logit units;
    its grid mean is that tap's share of each logit), ``bias`` ``[K]``; ``logits`` ``[B, K]`` reassembled from them."""

    maps: list[torch.Tensor]
    bias: torch.Tensor
    logits: torch.Tensor

    def averaged_with_mirror(self, mirror: EvidenceMaps) -> EvidenceMaps:
        """The maps of the average of these logits and ``mirror``'s (the same batch flipped left to right): the
        mirror's maps flipped back, then both averaged; still exact, for test-time augmentation."""
        return EvidenceMaps(maps=[(m + w.flip(-1)) / 2 for m, w in zip(self.maps, mirror.maps)], bias=self.bias,
                            logits=(self.logits + mirror.logits) / 2)

    def contrast(self, a: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
        """``[B, size, size]``: evidence for class ``a[i]`` over class ``b[i]`` at each pixel, in logit units.

        Each tap's grid is upsampled bilinearly to the crop (for display; its mean stays the tap's
        share of the gap up to the border pixels' interpolation) and the taps are summed; the
        bias difference is spread evenly, so the mean is the logit gap ``logit_a - logit_b``.
        """
        rows = torch.arange(len(a))
        total = (self.bias[a] - self.bias[b]).view(-1, 1, 1).expand(-1, size, size).clone()
        for m in self.maps:
            diff = (m[rows, a] - m[rows, b]).unsqueeze(1)
            total += F.interpolate(diff, size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
        return total


def _as_nchw(t: torch.Tensor, channels: int, nhwc: bool, where: str) -> torch.Tensor:
    t = t[0] if isinstance(t, (tuple, list)) else t
    if t.ndim != 4:
        raise AdvisorError(f"{where} gives a {t.ndim}-d output, not a feature map, so its evidence cannot be placed on "
                           "the image", hint="evidence maps need convolutional taps (a CNN backbone)")
    if nhwc and t.shape[-1] == channels:
        return t.permute(0, 3, 1, 2)
    if t.shape[1] != channels:
        raise AdvisorError(f"{where}: map of shape {tuple(t.shape)} lacks the declared {channels} channels")
    return t


def evidence_maps(model, x: torch.Tensor, *, rtol: float = 1e-3) -> EvidenceMaps:
    """The per-class logit maps of ``model`` (a TransferClassifier) for a normalised batch ``x`` (one forward pass).

    Raises AdvisorError when a tap is not a spatial map, when ``pre_logits`` is not declared the
    average of one (``TapInfo.pooled_from``), or when the maps do not add up to the model's logits.
    """
    backbone = model.backbone
    taps = {t.name: t for t in backbone.taps}
    maps_in: dict[str, torch.Tensor] = {}
    head_in: list[torch.Tensor] = []
    handles, training = [], model.training
    try:
        for name in model.taps:
            tap = taps[name]
            if name == PRE_LOGITS:
                if tap.pooled_from is None:
                    raise _not_an_average(backbone.name)
                module = backbone.model.get_submodule(tap.pooled_from)
                handles.append(module.register_forward_pre_hook(lambda _m, args, n=name: maps_in.__setitem__(n, args[0])))
                handles.append(backbone.model.get_submodule(tap.module).register_forward_pre_hook(
                    lambda _m, args: head_in.append(args[0])))
            else:
                module = backbone.model.get_submodule(tap.module)
                handles.append(module.register_forward_hook(lambda _m, _a, out, n=name: maps_in.__setitem__(n, out)))
        model.eval()  # the maps explain the model as it predicts: BatchNorm on its running statistics
        with torch.no_grad():
            backbone.model(x)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    with torch.no_grad():
        return _assemble(model, taps, maps_in, head_in, rtol)


def _assemble(model, taps, maps_in, head_in, rtol) -> EvidenceMaps:
    backbone = model.backbone
    weight = model.head.weight.detach().float() / model.feature_std.float()  # W / s: the head on raw averages
    offset, maps, pooled = 0, [], []
    for name in model.taps:
        channels = taps[name].channels
        t = maps_in[name][0] if isinstance(maps_in[name], (tuple, list)) else maps_in[name]
        if name == PRE_LOGITS and (t.ndim != 4 or channels not in (t.shape[1], t.shape[-1])):
            raise _not_an_average(backbone.name)  # e.g. a 1x1 conv head after the pooling (timm's MobileNetV3)
        a = _as_nchw(maps_in[name], channels, name in backbone._channels_last, f"{backbone.name}:{name}").float()
        w, m = weight[:, offset:offset + channels], model.feature_mean[offset:offset + channels].float()
        maps.append(torch.einsum("kc,bchw->bkhw", w, a) - (w @ m).view(1, -1, 1, 1))
        pooled.append(a.mean((2, 3)))
        offset += channels
    bias = model.head.bias.detach().float()
    logits = bias + sum(m.mean((2, 3)) for m in maps)
    # The model's own logits: stage taps pool exactly as above; pre_logits is what its classifier received.
    if head_in:
        at = model.taps.index(PRE_LOGITS)
        pooled[at] = head_in[0].flatten(1).float()
    expected = model.classify_features(torch.cat(pooled, 1)).float()
    if not torch.allclose(logits, expected, rtol=rtol, atol=rtol * max(1.0, expected.abs().max().item())):
        gap = (logits - expected).abs().max().item()
        raise AdvisorError(f"{backbone.name}: the evidence maps do not add up to the model's logits (off by {gap:.3g}), "
                           "so a layer between the map and the head is not an average", hint=_HINT)
    return EvidenceMaps(maps=maps, bias=bias, logits=logits)


_HINT = ("evidence maps need a run on stage taps, or a backbone whose head averages its last map and classifies "
         "(efficientnet_lite*, timm ResNets and EfficientNets, torchvision ResNets)")


def _not_an_average(name: str) -> AdvisorError:
    return AdvisorError(f"{name}'s pre_logits is not the plain average of one feature map (a layer lies between), "
                        "so its logits cannot be placed on the image", hint=_HINT)
