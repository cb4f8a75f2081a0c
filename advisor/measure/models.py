"""What the measure stage returns: the dataset profile and its evidence (similarity, depth, duplicates, flips).

Pydantic models at the boundary: ``advisor profile --json`` prints them, so field names are part of the interface.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from advisor.data.imagefile import SkippedFile
from advisor.data.scan import SizeSummary
from advisor.measure.labels import LabelReport
from advisor.measure.transferability import TapEvidence


class Interval(BaseModel):
    """A point estimate with a bootstrap percentile interval."""

    value: float
    low: float
    high: float
    level: float = 0.95


class SignalEstimate(BaseModel):
    """One similarity signal: its raw value, its [0, 1] similarity and how it was computed."""

    name: str  # 'kid', 'frechet', 'bn_shift', 'imagenet_confidence'
    available: bool = True
    unavailable_reason: str | None = None
    raw: Interval | None = None  # in the signal's own units
    null: float | None = None  # what ImageNet-like data scores at the same sample size
    similarity: Interval | None = None  # mapped to [0, 1]; 1 = ImageNet itself
    scale: float | None = None  # the raw value at which similarity is 0.5 (calibrated)
    in_score: bool = True  # whether it enters the combined score
    method: str = ""


class DepthShift(BaseModel):
    """BatchNorm-statistics shift of one depth group (a stage of the backbone)."""

    stage: str
    depth: int  # 0 = stem, increasing with depth
    layers: int
    channels: int
    skipped_channels: int  # running variance ~0: no information, left out
    shift: Interval  # mean per-channel KL(dataset || ImageNet running stats)
    excess: float | None = None  # shift minus what the ImageNet sample itself shows


class SimilarityReport(BaseModel):
    """How similar the dataset is to ImageNet, from several independent signals."""

    backbone: str
    sample_size: int
    bootstrap_rounds: int
    seed: int
    signals: list[SignalEstimate]
    bn_by_depth: list[DepthShift] = Field(default_factory=list)
    shift_pattern: Literal["input-level", "semantic", "mixed", "small", "unknown"] = "unknown"
    shift_pattern_reason: str = ""
    score: Interval  # combined similarity in [0, 1]
    method: str  # how the signals were combined
    reference: str | None = None  # provenance of the ImageNet reference statistics


class DuplicateGroup(BaseModel):
    """Files that are the same image (exact: same bytes; near: feature cosine >= threshold)."""

    kind: Literal["exact", "near"]
    paths: list[str]
    splits: list[str]
    labels: list[str]
    similarity: float | None = None

    @property
    def crosses_splits(self) -> bool:
        return len(set(self.splits)) > 1

    @property
    def conflicting_labels(self) -> bool:
        return len(set(self.labels)) > 1


class FlipCheck(BaseModel):
    """Whether labels survive a horizontal flip, measured with a cross-validated linear probe.

    The probe is fitted on the original images of the other folds and scored on the held-out
    images, as they are and mirrored. Natural photographs lose nothing; digits, characters and
    anything with a handedness lose accuracy, and then flips must not be used as augmentation.
    """

    images: int
    folds: int
    accuracy: float  # held-out accuracy on the original images
    flipped_accuracy: float  # the same probes on the same images, mirrored
    drop: float  # accuracy - flipped_accuracy
    drop_se: float  # standard error of the paired difference
    method: str = ""


class CurvePoint(BaseModel):
    """The probe's cross-validated accuracy on a subsample: training images per class (in a fold), accuracy."""

    per_class: float
    accuracy: float
    images: int


class DatasetProfile(BaseModel):
    """Everything measured about a dataset that the rules may look at."""

    dataset: str
    layout: str
    backbone: str
    input_size: int
    classes: list[str]
    num_classes: int
    images_total: int
    images_per_split: dict[str, int]
    train_per_class: dict[str, int]
    train_images: int
    train_per_class_min: int
    train_per_class_median: float
    imbalance_ratio: float  # largest / smallest class in the training split
    sizes: SizeSummary
    smaller_than_input: int  # images whose shorter side is below the backbone's input size
    greyscale_share: Interval | None = None  # estimated on the profiling sample (R == G == B)
    greyscale_by_mode: int = 0  # files stored in a single-channel mode (L, 1, I;16, ...)
    exact_duplicates: list[DuplicateGroup] = Field(default_factory=list)
    near_duplicates: list[DuplicateGroup] = Field(default_factory=list)
    near_duplicate_threshold: float | None = None
    near_duplicate_sample: int = 0  # how many images the near-duplicate search covered
    cross_split_duplicates: int = 0  # duplicate groups (exact or near) spanning train and val/test
    conflicting_label_duplicates: int = 0
    skipped: list[SkippedFile] = Field(default_factory=list)
    ignored_files: int = 0
    similarity: SimilarityReport | None = None
    tap_evidence: list[TapEvidence] = Field(default_factory=list)  # per depth, on the profiling sample
    flip_check: FlipCheck | None = None  # do labels survive a horizontal flip (on the profiling sample)
    probe_cv: dict[str, float] = Field(default_factory=dict)  # tap -> 5-fold CV accuracy of a logistic probe (sample)
    # Seconds that CV took per training row per feature column: what the forecast scales a probe's solve by.
    probe_cv_seconds_per_unit: float | None = None
    probe_cv_images: int | None = None  # training images of the sample the probe CV held out (its own noise)
    probe_curve: list[CurvePoint] = Field(default_factory=list)  # the probe's learning curve on the sample
    labels: LabelReport | None = None  # images of the sample whose label the data contradicts
    split_source: str
    split_seed: int | None = None
    # Wall seconds of each profiling stage (scan, backbone, features, similarity, probe CV, ...): where recommend's time went.
    stage_seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def val_images(self) -> int:
        """Images every run is scored on and strategies are compared on: the validation split."""
        return self.images_per_split.get("val", 0)

    @property
    def test_images(self) -> int:
        """The test split's images: scored once by the saved classifier at the end of a run, never compared on."""
        return self.images_per_split.get("test", 0)
