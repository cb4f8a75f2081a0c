"""What rules see: :class:`RuleContext`, built from a profile, the thresholds and the backbone's taps."""

from __future__ import annotations

import dataclasses
from typing import Any

from advisor.backbones import TapInfo
from advisor.core.stats import wilson_interval
from advisor.decide.recipe import finetune_schedule
from advisor.decide.rules.thresholds import SimilarityClass, SizeClass, Thresholds, frozen_stages_for, probe_sweep_taps
from advisor.measure.models import DatasetProfile


@dataclasses.dataclass(frozen=True)
class RuleContext:
    """What rules see: the profile, the thresholds, the backbone's taps and derived values."""

    profile: DatasetProfile
    thresholds: Thresholds
    taps: tuple[TapInfo, ...]
    stage_taps: tuple[str, ...]  # stage outputs in depth order (pre_logits excluded)
    size_class: SizeClass
    similarity_class: SimilarityClass
    similarity_measured: bool
    score: float | None
    score_low: float | None
    score_high: float | None
    score_level: float | None
    greyscale_observed: float | None  # measured share of greyscale images
    median_short_side: float  # min(median width, median height): SizeSummary has no exact median
    low_res: bool
    input_shift_reasons: tuple[str, ...]
    tiny_classes: tuple[tuple[str, int], ...]
    epochs_cap: int | None = None  # the user's cap on fine-tune epochs (a budget), if any
    # The resolved strategy, and what it would be across each boundary; filled by build_context.
    strategy: str | None = None
    similarity_flip_strategy: str | None = None
    size_flip_strategy: str | None = None

    @property
    def frozen_stages(self) -> int:
        """Stages a partial fine-tune keeps frozen (see :func:`frozen_stages_for`)."""
        return frozen_stages_for(len(self.stage_taps), self.thresholds.frozen_fraction)

    @property
    def layer_probe_taps(self) -> tuple[str, ...]:
        return probe_sweep_taps(self.stage_taps, self.thresholds.probe_stages)

    @property
    def earlier_tap(self) -> str | None:
        """The stage just before the layer-probe sweep, if any."""
        n, k = len(self.stage_taps), self.thresholds.probe_stages
        return self.stage_taps[n - k - 1] if n > k else None

    @property
    def flips_change_labels(self) -> bool:
        """R17: the profiler's flip check lost at least ``flip_drop`` accuracy, beyond twice its standard error."""
        fc = self.profile.flip_check
        return fc is not None and fc.drop >= self.thresholds.flip_drop and fc.drop > 2 * fc.drop_se

    @property
    def val_accuracy_level(self) -> float | None:
        """The accuracy a run is expected near: the profile's best probe CV (training images only); None unmeasured."""
        cv = self.profile.probe_cv
        return max(cv.values()) if cv else None

    @property
    def val_half_width(self) -> float | None:
        """Half the Wilson 95 % interval of an accuracy at :attr:`val_accuracy_level` on :attr:`val_images` images."""
        p, n = self.val_accuracy_level, self.profile.val_images
        if p is None or n < 1:
            return None
        lo, hi = wilson_interval(p * n, n)
        return (hi - lo) / 2

    @property
    def val_too_small(self) -> bool:
        """R19: the validation split cannot resolve differences of ``val_resolution`` between strategies."""
        half = self.val_half_width
        return half is not None and half > self.thresholds.val_resolution

    @property
    def straddles(self) -> bool:
        """Whether the similarity interval has points on both sides of the threshold."""
        if self.score_low is None or self.score_high is None:
            return False
        return self.score_low < self.thresholds.similarity <= self.score_high

    def values(self) -> dict[str, Any]:
        """The names rationale templates may use; missing measurements are NaN, never None."""
        p, t = self.profile, self.thresholds
        nan = float("nan")
        steps, epochs = finetune_schedule(p.train_images) if p.train_images > 0 else (0, 0)
        strategy = self.strategy or "linear-probe"  # set by build_context; the fallback only for bare contexts
        other = "different" if self.similarity_class == "similar" else "similar"
        if self.similarity_flip_strategy is None:
            flip_effect = "the strategy on the other side is unknown"
        elif self.similarity_flip_strategy == strategy:
            flip_effect = f"the other side gives {strategy} too, so the strategy does not depend on it"
        else:
            flip_effect = (
                f"if the data is in fact {other} the strategy becomes "
                f"{self.similarity_flip_strategy} instead of {strategy}"
            )
        if self.similarity_measured:
            relation = ">=" if self.similarity_class == "similar" else "<"
            evidence = (
                f"similarity score {self.score:.2f} [{self.score_low:.2f}, {self.score_high:.2f}] "
                f"{relation} {t.similarity:.2f}"
            )
        else:
            evidence = "similarity not measured, treated as similar"
        smallest = min(p.train_per_class, key=p.train_per_class.__getitem__, default="")
        return {
            **t.model_dump(),
            "dataset": p.dataset,
            "backbone": p.backbone,
            "num_classes": p.num_classes,
            "train_images": p.train_images,
            "train_per_class_min": p.train_per_class_min,
            "train_per_class_median": p.train_per_class_median,
            "smallest_class": smallest,
            "imbalance_ratio": p.imbalance_ratio,
            "input_size": p.input_size,
            "smaller_than_input": p.smaller_than_input,
            "cross_split_duplicates": p.cross_split_duplicates,
            "conflicting_label_duplicates": p.conflicting_label_duplicates,
            "size_class": self.size_class,
            "similarity_class": self.similarity_class,
            "per_class_ratio": p.train_per_class_median / t.large_per_class,
            "total_ratio": p.train_images / t.large_total,
            "score": nan if self.score is None else self.score,
            "score_low": nan if self.score_low is None else self.score_low,
            "score_high": nan if self.score_high is None else self.score_high,
            "score_level_pct": nan if self.score_level is None else 100 * self.score_level,
            "similarity_evidence": evidence,
            "shift_pattern": p.similarity.shift_pattern if p.similarity else "unknown",
            "greyscale_observed": nan if self.greyscale_observed is None else self.greyscale_observed,
            "median_short_side": self.median_short_side,
            "input_shift_reasons": "; ".join(self.input_shift_reasons) or "none",
            "input_shift_action": _INPUT_SHIFT_ACTION[strategy].format(earlier_tap=self.earlier_tap)
            if strategy != "layer-probe" or self.earlier_tap
            else "the layer probe already sweeps every stage",
            "tiny_classes": ", ".join(f"{name} ({n})" for name, n in self.tiny_classes) or "none",
            "tiny_class_count": len(self.tiny_classes),
            "stages": len(self.stage_taps),
            "frozen_stages": self.frozen_stages,
            "trainable_stages": len(self.stage_taps) - self.frozen_stages,
            "probe_taps": ", ".join(self.layer_probe_taps),
            "strategy": strategy,
            "similarity_flip_strategy": self.similarity_flip_strategy or "unknown",
            "similarity_flip_effect": flip_effect,
            "size_flip_strategy": self.size_flip_strategy or "unknown",
            "finetune_steps": steps,
            "finetune_epochs": epochs,
            "epochs_cap": self.epochs_cap if self.epochs_cap is not None else nan,
            "flip_accuracy": p.flip_check.accuracy if p.flip_check else nan,
            "flip_flipped_accuracy": p.flip_check.flipped_accuracy if p.flip_check else nan,
            "flip_drop_pct": 100 * p.flip_check.drop if p.flip_check else nan,
            "flip_drop_se_pct": 100 * p.flip_check.drop_se if p.flip_check else nan,
            "flip_images": p.flip_check.images if p.flip_check else 0,
            "schedule_share_pct": 100 * self.epochs_cap / epochs if self.epochs_cap is not None and epochs else nan,
            "val_images": p.val_images,
            "val_per_class": p.val_images / max(1, p.num_classes),
            # a split the scan carved grows with --val-fraction; a split of the user's folders or manifest, by hand
            "val_action": "raise --val-fraction" if p.split_source == "stratified" else "move more images into it",
            "val_level_pct": nan if self.val_accuracy_level is None else 100 * self.val_accuracy_level,
            "val_half_width_pct": nan if self.val_half_width is None else 100 * self.val_half_width,
            "val_resolution_pct": 100 * t.val_resolution,
        }



def _size_class(profile: DatasetProfile, t: Thresholds) -> SizeClass:
    large = profile.train_per_class_median >= t.large_per_class and profile.train_images >= t.large_total
    return "large" if large else "small"


def _similarity_class(profile: DatasetProfile, t: Thresholds) -> SimilarityClass:
    # Unmeasured similarity counts as similar: the cheaper, head-only strategies are the safer
    # default, and R14 says so in the report.
    if profile.similarity is None:
        return "similar"
    return "similar" if profile.similarity.score.value >= t.similarity else "different"


def place(profile: DatasetProfile, thresholds: Thresholds | None = None) -> tuple[SizeClass, SimilarityClass]:
    """The dataset's cell of the 2x2 table: (size class, similarity class)."""
    t = thresholds or Thresholds()
    return _size_class(profile, t), _similarity_class(profile, t)


def _greyscale_share(profile: DatasetProfile) -> float | None:
    if profile.greyscale_share is not None:
        return profile.greyscale_share.value
    # Without a pixel estimate, files stored single-channel are a lower bound worth using.
    if profile.images_total > 0 and profile.greyscale_by_mode > 0:
        return profile.greyscale_by_mode / profile.images_total
    return None


def _low_resolution(profile: DatasetProfile, t: Thresholds) -> tuple[bool, float]:
    sizes = profile.sizes
    short = float(min(sizes.median_width, sizes.median_height))
    below = sizes.smaller_than.get(t.low_resolution)
    if below is not None and sizes.count > 0:
        # More than half the shorter sides below the threshold is exactly "median below it".
        return below > sizes.count / 2, short
    return short < t.low_resolution, short


_INPUT_SHIFT_ACTION = {
    "linear-probe": "a linear probe on pre_logits cannot correct it: if it underperforms, try a layer "
    "probe or a fine-tune with re-estimated BatchNorm statistics",
    "layer-probe": "the layer probe therefore also sweeps an earlier tap ({earlier_tap})",
    "partial-finetune": "the fine-tune's trainable stages adapt to it; BatchNorm statistics are not re-estimated, "
    "which measured worse even under such a shift (mnist-small, 64 px, 3 epochs: 0.780 re-estimated vs 0.903 kept)",
    "full-finetune": "the full fine-tune retrains the early stages too; BatchNorm statistics are not re-estimated, "
    "which measured worse even under such a shift (mnist-small, 64 px, 3 epochs: 0.780 re-estimated vs 0.903 kept)",
}
