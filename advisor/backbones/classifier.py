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
from advisor.core.errors import AdvisorError
from advisor.core.io import call_writing, read_model, write_text_atomic
from advisor.data.imagefile import file_digest

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
    # blake2b-128 over model.safetensors and this card (every field but this one): the two files belong together,
    # and no field of either can change unnoticed.
    model_digest: str | None = None


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
    """Write ``model.safetensors`` and then ``model.json`` (which records the former's digest), atomically."""
    run_dir = Path(run_dir)
    tensors = dict(model.head_state())
    if card.backbone_in_file:
        tensors.update({f"backbone.{k}": v for k, v in model.backbone.model.state_dict().items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    needed = sum(v.numel() * v.element_size() for v in tensors.values())
    call_writing(run_dir / MODEL_FILE, lambda tmp: save_file(tensors, str(tmp), metadata={"format": CARD_FORMAT}),
                 needed=needed)
    card = card.model_copy(update={"model_digest": model_digest(run_dir / MODEL_FILE, card)})
    write_text_atomic(run_dir / CARD_FILE, card.model_dump_json(indent=2))
    return run_dir / MODEL_FILE, run_dir / CARD_FILE


_RERUN = "the run directory is damaged: copy both files from the original run, or train again"


def model_digest(model_path: Path, card: ModelCard) -> str:
    """The digest that ties a model file to its card: the file's bytes and every card field but the digest."""
    import hashlib

    fields = card.model_dump_json(exclude={"model_digest"})
    return hashlib.blake2b((file_digest(model_path) + "\0" + fields).encode(), digest_size=16).hexdigest()


def _check_card(card: ModelCard, tensors: dict[str, torch.Tensor], card_path: Path, model_path: Path) -> None:
    """model.json and model.safetensors must describe the same model; name the first disagreement."""
    def bad(what: str) -> AdvisorError:
        return AdvisorError(f"{model_path.name} and {card_path} disagree: {what}", hint=_RERUN)

    for key in ("head.weight", "head.bias", "feature_mean", "feature_std"):
        if key not in tensors:
            raise bad(f"the model file has no {key}")
    weight = tensors["head.weight"]
    if weight.dim() != 2 or tuple(weight.shape) != (len(card.classes), card.feature_dim):
        raise bad(f"head is {tuple(weight.shape)}, the card says {len(card.classes)} classes x {card.feature_dim} features")
    for key in ("head.bias", "feature_mean", "feature_std"):
        n = len(card.classes) if key == "head.bias" else card.feature_dim
        if tuple(tensors[key].shape) != (n,):
            raise bad(f"{key} has shape {tuple(tensors[key].shape)}, expected ({n},)")
    if not all(torch.isfinite(tensors[k]).all() for k in ("head.weight", "head.bias", "feature_mean", "feature_std")):
        raise bad("the head holds non-finite values")
    if not (tensors["feature_std"] > 0).all():
        raise bad("feature_std has values <= 0")
    has_backbone = any(k.startswith("backbone.") for k in tensors)
    if has_backbone != card.backbone_in_file:
        held = "holds" if has_backbone else "does not hold"
        raise bad(f"the model file {held} backbone weights but backbone_in_file is {card.backbone_in_file}")
    if len(set(card.classes)) != len(card.classes) or not all(card.classes) or len(card.classes) < 2:
        raise bad("class names are fewer than 2, empty or repeated")
    tf = card.transform
    if not 16 <= tf.input_size <= 4096 or not all(s > 0 for s in tf.std) or not 0 < tf.crop_pct <= 1:
        raise bad(f"the transform is unusable (input size {tf.input_size}, std {list(tf.std)}, crop {tf.crop_pct})")


def load_classifier(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[TransferClassifier, ModelCard]:
    """Rebuild a saved classifier from ``model.json`` + ``model.safetensors`` (no pickle involved).

    Every field of the card is checked against the tensors (and the file's digest, when the card
    records one) before anything is built.
    """
    run_dir = Path(run_dir)
    card_path, model_path = run_dir / CARD_FILE, run_dir / MODEL_FILE
    if not run_dir.is_dir() or not card_path.exists() or not model_path.exists():
        raise AdvisorError(f"{run_dir} holds no saved model ({CARD_FILE} and {MODEL_FILE})",
                           hint="point at a run directory written by `advisor run`")
    for path in (card_path, model_path):  # a FIFO or device here would block the reads below
        if not path.is_file():
            raise AdvisorError(f"{path} is not a regular file", hint=_RERUN)
    card = read_model(card_path, ModelCard, fix=_RERUN)
    if card.format != CARD_FORMAT:
        raise AdvisorError(f"{card_path} has format {card.format!r}; this advisor reads {CARD_FORMAT!r}")
    if card.model_digest is None or model_digest(model_path, card) != card.model_digest:
        raise AdvisorError(f"{model_path} and {card_path} were not written together, or one was changed since "
                           "(their digest differs)", hint=_RERUN)
    try:
        tensors = load_file(str(model_path))
    except Exception as err:
        raise AdvisorError(f"{model_path} is damaged ({' '.join(str(err).split())[:120] or type(err).__name__})",
                           hint=_RERUN) from None
    _check_card(card, tensors, card_path, model_path)
    if card.backbone_in_file:
        # The file has every backbone weight: start from a random init, nothing to find offline.
        backbone = create_backbone(card.backbone, pretrained=False)
        state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        expected = backbone.model.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        shapes = [k for k in set(state) & set(expected) if state[k].shape != expected[k].shape]
        if missing or unexpected or shapes:
            raise AdvisorError(f"{model_path} does not match {card.backbone}: missing {missing[:3]}, unexpected "
                               f"{unexpected[:3]}, other shapes {sorted(shapes)[:3]}", hint=_RERUN)
        backbone.model.load_state_dict(state)
    else:
        backbone = create_backbone(card.backbone)
        if backbone.weights_digest != card.weights_digest:
            raise AdvisorError(
                f"the model was trained on {card.backbone} weights {card.weights_digest}, but the weights found now are "
                f"{backbone.weights_digest}", hint="install the same weights the run used")
    channels = {t.name: t.channels for t in backbone.taps}
    if unknown := [t for t in card.taps if t not in channels]:
        raise AdvisorError(f"{card_path} names taps {unknown} that {card.backbone} does not have", hint=_RERUN)
    if sum(channels[t] for t in card.taps) != card.feature_dim:
        raise AdvisorError(f"{card_path} says {card.feature_dim} features, but taps {card.taps} of {card.backbone} "
                           f"give {sum(channels[t] for t in card.taps)}", hint=_RERUN)
    model = TransferClassifier(backbone.with_transform(card.transform), card.taps, len(card.classes))
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
