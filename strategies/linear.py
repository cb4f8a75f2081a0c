"""``linear-probe`` and ``layer-probe``: linear classifiers on cached, frozen features.

Neither strategy forwards an image twice: the pooled taps come from the feature cache (one
extraction serves every tap), and the classifier is full-batch L-BFGS with the L2 strength
chosen by cross-validation on the training split (``strategies/probe.py``).
"""

from __future__ import annotations

import time

import torch
from pydantic import BaseModel

from advisor.backbones import PRE_LOGITS, Backbone
from advisor.backbones.classifier import TransferClassifier
from advisor.core.errors import AdvisorError
from advisor.decide.models import RunPlan
from advisor.decide.rules import probe_sweep_taps
from advisor.measure.features import extract_features
from advisor.measure.logistic import class_weights_from
from strategies.base import (
    RunContext,
    RunData,
    Strategy,
    confidence_of,
    count_params,
    predictions_of,
    register_strategy,
)
from strategies.probe import fit_probe, layer_probe_sweep
from strategies.results import RunResult, classification_metrics
from strategies.temperature import MIN_IMAGES


class ProbeConfig(BaseModel):
    """Settings of both probes; ``sweep`` makes it a layer probe over ``taps``."""

    taps: list[str] | None = None  # None: pre_logits; for a sweep, rules.probe_sweep_taps
    sweep: bool = False
    concat_top: int = 2
    folds: int = 5
    class_weighting: bool = False
    input_size: int | None = None
    batch_size: int = 32


def _extract(data: RunData, backbone: Backbone, taps: list[str], config: ProbeConfig, ctx: RunContext):
    feature_set = extract_features(data.train + data.val, backbone, taps=taps, cache_dir=ctx.cache_dir, device=str(ctx.device),
                          batch_size=config.batch_size, num_workers=ctx.num_workers,
                          progress=lambda d, t: ctx.report("features", d, t))
    if feature_set.summary.failed:
        ctx.event("skipped_images", count=len(feature_set.summary.failed), paths=[f.path for f in feature_set.summary.failed])
    tr, va = feature_set.rows("train"), feature_set.rows("val")
    if len(tr) == 0 or len(va) == 0:
        raise AdvisorError(f"no usable {'training' if len(tr) == 0 else 'validation'} images after decoding")
    return feature_set, tr, va


class _Probe(Strategy):
    Config = ProbeConfig

    def fit(self, data: RunData, backbone: Backbone, config: ProbeConfig, ctx: RunContext) -> tuple[RunResult, TransferClassifier]:
        t0 = time.perf_counter()
        taps = config.taps
        if not taps:
            stages = [t.name for t in backbone.taps if t.name != PRE_LOGITS]
            taps = list(probe_sweep_taps(stages)) if config.sweep else [PRE_LOGITS]
        config = config.model_copy(update={"taps": taps})
        if config.input_size:
            backbone = backbone.with_input_size(config.input_size)
        feature_set, tr, va = _extract(data, backbone, taps, config, ctx)
        num_classes = len(data.classes)
        y_train = feature_set.labels[tr]
        weights = class_weights_from(y_train, num_classes) if config.class_weighting else None
        train_feats = {t: feature_set.features[t][tr] for t in config.taps}
        ctx.report("probe", 0, 1)
        sweep = []
        keep_oof = len(va) < MIN_IMAGES  # the runner calibrates on them instead of a validation split this small
        if config.sweep and len(config.taps) > 1:
            fit, rows = layer_probe_sweep(train_feats, y_train, taps=config.taps, num_classes=num_classes, concat_top=config.concat_top,
                                          class_weights=weights, folds=config.folds, seed=ctx.seed, device=ctx.device,
                                          keep_oof=keep_oof)
            sweep = [r.model_dump() for r in rows]
        else:
            fit = fit_probe(train_feats, y_train, taps=config.taps, num_classes=num_classes, class_weights=weights,
                            folds=config.folds, seed=ctx.seed, device=ctx.device, keep_oof=keep_oof)
        ctx.report("probe", 1, 1)
        model = TransferClassifier(backbone, list(fit.taps), num_classes)
        model.set_head(fit.W, fit.b, fit.standardizer.mean, fit.standardizer.std)
        model.requires_grad_(False)
        model.head.requires_grad_(True)  # what the probe trained
        with torch.no_grad():
            logits = model.classify_features(torch.cat([feature_set.features[t][va] for t in fit.taps], 1))
        metrics = classification_metrics(logits, feature_set.labels[va], data.classes)
        trainable, total = count_params(model)
        ctx.event("probe", taps=list(fit.taps), l2=fit.l2, cv_accuracy=fit.cv_accuracy, val_accuracy=metrics.val_accuracy)
        result = RunResult(
            strategy=self.name, metrics=metrics, trainable_params=trainable, total_params=total,
            seconds=round(time.perf_counter() - t0, 2), device=str(ctx.device),
            selected={"taps": list(fit.taps), "l2": fit.l2, "cv_accuracy": fit.cv_accuracy,
                      "cv_table": [list(r) for r in fit.cv_table], "features_from_cache": feature_set.summary.from_cache,
                      "cache_invalid": len(feature_set.summary.cache_dropped),
                      "features_computed": feature_set.summary.computed},
            sweep=sweep, predictions=predictions_of(logits, feature_set.labels[va], [feature_set.paths[i] for i in va.tolist()]),
            confidence=confidence_of(logits), val_logits=logits, val_labels=feature_set.labels[va],
        )
        if fit.oof_logits is not None:
            # a class with one training image is predicted by a probe that never saw the class: not a calibration row
            known = torch.bincount(y_train, minlength=num_classes)[y_train] >= 2
            result.oof_logits, result.oof_labels = fit.oof_logits[known], y_train[known]
        return result, model.eval()


@register_strategy("linear-probe")
class LinearProbe(_Probe):
    """Logistic regression on the top layer's (pre-logits) features."""

    def config_from_plan(self, plan: RunPlan) -> ProbeConfig:
        return ProbeConfig(taps=[PRE_LOGITS], class_weighting=plan.class_weighting, input_size=plan.input_size,
                           batch_size=plan.batch_size)


@register_strategy("layer-probe")
class LayerProbe(_Probe):
    """Logistic regression on each earlier tap (and the top few concatenated); the best by CV wins."""

    def config_from_plan(self, plan: RunPlan) -> ProbeConfig:
        return ProbeConfig(taps=plan.taps or None, sweep=True, class_weighting=plan.class_weighting, input_size=plan.input_size,
                           batch_size=plan.batch_size)
