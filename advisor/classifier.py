"""The trained model every strategy produces, and its pickle-free artifact.

A :class:`TransferClassifier` is a backbone, the taps it reads (pooled and concatenated), a
fixed feature standardiser and a new linear head. Probes train only the head on cached
features; fine-tunes also train backbone stages. Both save the same way:

* ``model.safetensors``: the head and standardiser, plus the backbone's weights when a
  fine-tune changed them;
* ``model.json``: the model card (format, backbone name and weights digest, taps, classes,
  transform, which weights the file holds), enough to rebuild the module without pickle.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from advisor.backbones import PRE_LOGITS, Backbone, TransformConfig, create_backbone
from advisor.errors import AdvisorError
from advisor.io import write_text_atomic

CARD_FORMAT = "advisor-model-v1"
MODEL_FILE = "model.safetensors"
CARD_FILE = "model.json"


class ModelCard(BaseModel):
    """What a saved model is and how to rebuild it (``model.json``)."""

    format: str = CARD_FORMAT
    strategy: str
    backbone: str
    weights_digest: str  # of the pretrained backbone the run started from
    backbone_in_file: bool  # fine-tunes store their changed backbone weights in model.safetensors
    taps: list[str]
    feature_dim: int
    classes: list[str]
    transform: TransformConfig
    metrics: dict[str, float] = {}
    created: str | None = None
    advisor_version: str | None = None


class TransferClassifier(nn.Module):
    """backbone -> pooled taps -> concat -> standardise -> linear head."""

    def __init__(self, backbone: Backbone, taps: list[str], num_classes: int) -> None:
        super().__init__()
        channels = {t.name: t.channels for t in backbone.taps}
        unknown = [t for t in taps if t not in channels]
        if unknown:
            raise AdvisorError(f"backbone {backbone.name} has no tap(s) {unknown}", hint=f"choose from {list(channels)}")
        self.backbone = backbone
        self.taps = list(taps)
        self.feature_dim = sum(channels[t] for t in taps)
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.head = nn.Linear(self.feature_dim, num_classes)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone.forward_taps(x, self.taps)
        return torch.cat([out[t].float() for t in self.taps], 1)

    def classify_features(self, f: torch.Tensor) -> torch.Tensor:
        """Logits from pooled, concatenated (unstandardised) tap features."""
        return self.head((f - self.feature_mean) / self.feature_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify_features(self.features(x))

    def set_head(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install a head fitted on standardised features (a probe's result)."""
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)
            self.feature_mean.copy_(mean)
            self.feature_std.copy_(std)

    def head_state(self) -> dict[str, torch.Tensor]:
        return {"head.weight": self.head.weight, "head.bias": self.head.bias,
                "feature_mean": self.feature_mean, "feature_std": self.feature_std}


def save_classifier(model: TransferClassifier, run_dir: str | os.PathLike, card: ModelCard) -> tuple[Path, Path]:
    """Write ``model.safetensors`` and ``model.json`` atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = dict(model.head_state())
    if card.backbone_in_file:
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.model.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = run_dir / f".{MODEL_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT})
    os.replace(tmp, run_dir / MODEL_FILE)
    write_text_atomic(run_dir / CARD_FILE, card.model_dump_json(indent=2))
    return run_dir / MODEL_FILE, run_dir / CARD_FILE


def load_classifier(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[TransferClassifier, ModelCard]:
    """Rebuild a saved classifier from ``model.json`` + ``model.safetensors`` (no pickle involved)."""
    run_dir = Path(run_dir)
    card_path, model_path = run_dir / CARD_FILE, run_dir / MODEL_FILE
    if not card_path.exists() or not model_path.exists():
        raise AdvisorError(f"{run_dir} holds no saved model ({CARD_FILE} and {MODEL_FILE})",
                           hint="point at a run directory written by `advisor run`")
    try:
        card = ModelCard.model_validate_json(card_path.read_text())
    except ValueError as err:
        raise AdvisorError(f"{card_path} is not a valid model card: {str(err).splitlines()[0]}") from err
    if card.format != CARD_FORMAT:
        raise AdvisorError(f"{card_path} has format {card.format!r}; this advisor reads {CARD_FORMAT!r}")
    tensors = load_file(str(model_path))
    if card.backbone_in_file:
        # The file has every backbone weight: start from a random init, nothing to find offline.
        backbone = create_backbone(card.backbone, pretrained=False)
        state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        missing, unexpected = backbone.model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise AdvisorError(f"{model_path} does not match {card.backbone}: missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}")
    else:
        backbone = create_backbone(card.backbone)
        if backbone.weights_digest != card.weights_digest:
            raise AdvisorError(
                f"the model was trained on {card.backbone} weights {card.weights_digest}, but the weights found now are "
                f"{backbone.weights_digest}", hint="install the same weights the run used")
    backbone.transform_config = card.transform
    model = TransferClassifier(backbone, card.taps, len(card.classes))
    model.set_head(tensors["head.weight"], tensors["head.bias"], tensors["feature_mean"], tensors["feature_std"])
    return model.to(device).eval(), card


def stage_parameters(backbone: Backbone) -> dict[int, list[tuple[str, nn.Parameter]]]:
    """Backbone parameters grouped by depth (0 = stem, 1..S = stages, S+1 = head layers).

    The ImageNet classifier (the module that consumes pre_logits) is left out: a transfer model
    replaces it with its own head, so it is never trained.
    """
    classifier = next((t.module for t in backbone.taps if t.name == PRE_LOGITS), None)
    groups: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, param in backbone.model.named_parameters():
        module = name.rsplit(".", 1)[0] if "." in name else ""
        if classifier and (module == classifier or module.startswith(classifier + ".")):
            continue
        _, depth = backbone.stage_of(module) if module else ("stem", 0)
        groups.setdefault(depth, []).append((name, param))
    return groups
