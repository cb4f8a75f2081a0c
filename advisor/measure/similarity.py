"""How similar is a dataset to ImageNet? Independent signals, each with a bootstrap interval.

* ``kid``: unbiased MMD^2 with the polynomial kernel (KID) between the dataset's pre-logits
  features and shipped ImageNet reference features of the same backbone. Unbiased, so it needs
  no sample-size correction; it enters the combined score.
* ``frechet``: the Fréchet distance to the same reference, reported with its same-N null (the
  distance between disjoint random splits of the reference itself at the dataset's sample size)
  and the excess over that null. Raw Fréchet distance at a few hundred images is dominated by
  small-sample bias; it is a cross-check and does not enter the score.
* ``bn_shift``: the shift of the dataset's BatchNorm input statistics from the pretrained
  running statistics (ImageNet's own, inside every checkpoint), per channel as the 1-D Fréchet
  distance normalised by the running variance, averaged per depth. Needs no reference images.
  Its per-depth profile tells input-level shift (early layers) from semantic shift (deep layers).
* ``imagenet_confidence``: mean max-softmax of the ImageNet head (reported, not in the score).

Each distance ``d`` maps to a similarity ``1 / (1 + d / scale)``, where ``scale`` is the
distance calibrated to sit on the similar/different boundary (0.5); the combined score is the
mean of the in-score similarities. All intervals come from one weighted bootstrap over images:
every resample is a vector of counts, so a round is a matrix product, not a recomputation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from advisor.backbones import PRE_LOGITS, Backbone
from advisor.core.stats import frechet_distance_features, polynomial_kernel
from advisor.measure.features import GREY, FeatureSet
from advisor.measure.models import DepthShift, Interval, SignalEstimate, SimilarityReport

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"  # advisor/reference
REFERENCE_FORMAT = "advisor-reference-v1"
# Running variances this small carry no information (dead channels); they would turn any
# shift into a huge number, so they are left out and counted.
MIN_RUNNING_VAR = 1e-5
# Fallback scales for a backbone whose reference file carries none (calibrated values for the
# bundled backbones live in their reference metadata; see docs/decision-rules.md).
DEFAULT_SCALES = {"kid": 0.089, "bn_shift": 0.123}
SMALL_SHIFT = 0.05  # below this excess shift at every depth, the pattern is 'small'
PATTERN_RATIO = 1.5  # one half of the network must shift this much more to name a pattern


@dataclass
class Reference:
    """ImageNet statistics shipped for one backbone (built by scripts/build_reference.py)."""

    backbone: str
    weights_digest: str
    features: torch.Tensor  # [m, d] pre-logits of the reference images
    bn_baseline: dict[str, float]  # stage -> bn shift of the reference images themselves
    confidence: float | None
    scales: dict[str, float]
    provenance: dict

    @property
    def size(self) -> int:
        return self.features.shape[0]


def reference_path(backbone_name: str) -> Path:
    return REFERENCE_DIR / (re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone_name) + ".safetensors")


def load_reference(backbone: Backbone, *, path: Path | None = None) -> tuple[Reference | None, str | None]:
    """The shipped reference for ``backbone``, or ``(None, why not)``."""
    path = path or reference_path(backbone.name)
    how = f"build it with: python scripts/build_reference.py --backbone {backbone.name} --images DIR"
    if not path.exists():
        return None, f"no ImageNet reference statistics for {backbone.name} ({how})"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != REFERENCE_FORMAT:
            return None, f"{path} is not an advisor reference file ({how})"
        if meta.get("weights_digest") != backbone.weights_digest:
            return None, (f"the reference for {backbone.name} was built for other weights "
                          f"({meta.get('weights_digest')} != {backbone.weights_digest}); {how}")
        feats = f.get_tensor("pre_logits").float()
    info = json.loads(meta.get("info", "{}"))
    return Reference(
        backbone=backbone.name,
        weights_digest=meta["weights_digest"],
        features=feats,
        bn_baseline=info.get("bn_baseline", {}),
        confidence=info.get("confidence"),
        scales={**DEFAULT_SCALES, **info.get("scales", {})},
        provenance=info.get("provenance", {}),
    ), None


# --------------------------------------------------------------------------- signals


def bootstrap_weights(n: int, rounds: int, *, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[rounds, n] resampling counts (each row sums to n): a bootstrap draw as weights."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (rounds, n), generator=gen)
    w = torch.zeros(rounds, n, dtype=torch.float64)
    w.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
    return w.to(device)


def kid_weighted(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Unbiased KID of ``x`` (rows weighted by counts ``w`` [B, n]) against ``y``; one value per row of ``w``.

    Pairs of the same original image are left out of the within-sample term, so a bootstrap
    resample (which repeats images) does not bias it upwards.
    """
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy_row = polynomial_kernel(x, y).mean(1)  # [n]
    diag = kxx.diagonal()
    wkw = ((w @ kxx) * w).sum(1)
    same = (w * w) @ diag
    pairs = n * n - (w * w).sum(1)
    term_x = (wkw - same) / pairs
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return term_x + term_y - 2 * (w @ kxy_row) / n


def frechet_with_null(x: torch.Tensor, ref: torch.Tensor, *, splits: int = 3, seed: int = 0) -> tuple[float, float, float]:
    """(raw, null, null_sd): Fréchet distance of ``x`` to ``ref`` and of same-size reference splits.

    Each split draws n reference images as a pseudo-dataset and compares them with the other
    m - n; the dataset is compared with the same m - n images, so both distances carry the same
    small-sample bias and their difference estimates the real one.
    """
    n, m = x.shape[0], ref.shape[0]
    n_use = min(n, m // 2)
    gen = torch.Generator().manual_seed(seed)
    raw, null = [], []
    for _ in range(splits):
        perm = torch.randperm(m, generator=gen)
        a, b = ref[perm[:n_use]], ref[perm[n_use:]]
        xs = x[torch.randperm(n, generator=gen)[:n_use]]
        raw.append(frechet_distance_features(xs, b))
        null.append(frechet_distance_features(a, b))
    t_raw, t_null = torch.tensor(raw), torch.tensor(null)
    return float(t_raw.mean()), float(t_null.mean()), float(t_null.std()) if splits > 1 else 0.0


def bn_shift_weighted(feature_set: FeatureSet, backbone: Backbone, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int, int]]]:
    """Per-stage BatchNorm shift for each weight row: stage -> [B]; and stage -> (layers, channels, skipped).

    Per channel: ((mu - mu_r)^2 + (sigma - sigma_r)^2) / var_r, the 1-D Fréchet distance between
    the dataset's activation Gaussian and ImageNet's, in units of ImageNet's variance. The dataset
    variance combines within-image and between-image variance (law of total variance). All
    layers go through three matrix products at once; the per-image means are centred on the
    running mean first, so float32 loses nothing to cancellation in E[m^2] - E[m]^2.
    """
    n = w.shape[1]
    dev = w.device
    cols_m, cols_v, rms, rvs, layer_of, stage_of_layer = [], [], [], [], [], []
    counts: dict[str, list[int]] = {}
    for li, layer in enumerate(backbone.bn_layers()):
        bn = backbone.model.get_submodule(layer.name)
        rm = bn.running_mean.detach().float().cpu()
        rv = bn.running_var.detach().float().cpu()
        keep = (rv > MIN_RUNNING_VAR) & (rv > 1e-4 * rv.median())
        cols_m.append(feature_set.features[f"bn:{layer.name}:mean"].float()[:, keep] - rm[keep])
        cols_v.append(feature_set.features[f"bn:{layer.name}:var"].float()[:, keep])
        rms.append(rm[keep])
        rvs.append(rv[keep])
        layer_of.append(torch.full((int(keep.sum()),), li, dtype=torch.long))
        stage_of_layer.append(layer.stage)
        c = counts.setdefault(layer.stage, [0, 0, 0])
        c[0] += 1
        c[1] += layer.channels
        c[2] += int((~keep).sum())
    m = torch.cat(cols_m, 1).to(dev)  # [n, K], centred on the running mean
    v = torch.cat(cols_v, 1).to(dev)
    rv = torch.cat(rvs).to(dev)
    wf = w.float()
    mu = wf @ m / n  # [B, K]: dataset mean minus running mean
    var = wf @ v / n + wf @ (m * m) / n - mu * mu
    d = (mu * mu + (var.clamp_min(0).sqrt() - rv.sqrt()) ** 2) / rv  # [B, K]
    ids = torch.cat(layer_of).to(dev)
    n_layers = len(stage_of_layer)
    sums = torch.zeros(d.shape[0], n_layers, device=dev).index_add_(1, ids, d)
    live = torch.bincount(ids, minlength=n_layers).cpu()
    per_layer = (sums / live.to(dev).clamp_min(1)).double()  # [B, L]
    per_stage: dict[str, list[torch.Tensor]] = {}
    for li, stage in enumerate(stage_of_layer):
        if live[li] > 0:  # a layer with every channel dead says nothing; it must not count as 0
            per_stage.setdefault(stage, []).append(per_layer[:, li])
    return {s: torch.stack(v).mean(0) for s, v in per_stage.items()}, {s: tuple(c) for s, c in counts.items()}


def head_confidence(features: torch.Tensor, backbone: Backbone) -> torch.Tensor | None:
    """Per-image max softmax of the ImageNet head applied to pre-logits, when the head is linear."""
    tap = next((t for t in backbone.taps if t.name == PRE_LOGITS), None)
    if tap is None or tap.module is None:
        return None
    head = backbone.model.get_submodule(tap.module)
    if not isinstance(head, torch.nn.Linear) or head.in_features != features.shape[1]:
        return None
    with torch.no_grad():
        logits = torch.nn.functional.linear(features.float(), head.weight.float().cpu(), head.bias.float().cpu() if head.bias is not None else None)
    return logits.softmax(1).amax(1).double()


def _to_similarity(d: torch.Tensor, scale: float) -> torch.Tensor:
    return 1.0 / (1.0 + d.clamp_min(0) / scale)


def _interval(point: float, draws: torch.Tensor, level: float = 0.95) -> Interval:
    q = torch.quantile(draws.double().cpu(), torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return Interval(value=float(point), low=float(q[0]), high=float(q[1]), level=level)


def _pattern(depths: list[DepthShift]) -> tuple[str, str]:
    """Input-level (early layers shift most), semantic (deep layers), mixed, or small.

    Depth groups in order (stem, stages, head) are split into an early and a deep half; each
    half's mean excess shift (over what ImageNet itself shows) is compared.
    """
    if len(depths) < 2:
        return "unknown", "too few depth groups to compare early and deep layers"
    ex = [max(d.excess if d.excess is not None else d.shift.value, 0.0) for d in sorted(depths, key=lambda d: d.depth)]
    half = len(ex) // 2
    early, late = sum(ex[:half]) / half, sum(ex[half:]) / (len(ex) - half)
    if max(early, late) < SMALL_SHIFT:
        return "small", f"BatchNorm statistics are within {SMALL_SHIFT} of ImageNet's at every depth (early {early:.3f}, deep {late:.3f})"
    if early > PATTERN_RATIO * late:
        return "input-level", (f"early layers shift more than deep ones ({early:.2f} vs {late:.2f}): low-level statistics "
                               "(colour, contrast, resolution, blur) differ from ImageNet's")
    if late > PATTERN_RATIO * early:
        return "semantic", (f"the shift grows with depth ({early:.2f} early vs {late:.2f} deep): the content differs "
                            "more than the pixels")
    return "mixed", f"early and deep layers shift alike ({early:.2f} vs {late:.2f}): both pixels and content differ"


def measure_similarity(
    feature_set: FeatureSet,
    backbone: Backbone,
    *,
    reference: Reference | None = None,
    reference_missing: str | None = None,
    rounds: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SimilarityReport:
    """Similarity signals and the combined score for the images in ``feature_set``.

    ``feature_set`` must hold ``pre_logits`` and the BatchNorm moments (``extract_features(...,
    bn_moments=True)``). Runs on ``device`` (the GPU when there is one).
    """
    n = feature_set.features[PRE_LOGITS].shape[0]
    if n < 4:
        raise ValueError(f"similarity needs at least 4 images, got {n}")
    w = bootstrap_weights(n, rounds, seed=seed, device=device)
    ones = torch.ones(1, n, dtype=torch.float64, device=device)
    x = feature_set.features[PRE_LOGITS].to(device)
    signals: list[SignalEstimate] = []
    combined_point, combined_draws = [], []

    if reference is not None:
        ref = reference.features.to(device)
        point = float(kid_weighted(x, ref, ones)[0])
        draws = kid_weighted(x, ref, w)
        scale = reference.scales["kid"]
        sim_point, sim_draws = _to_similarity(torch.tensor(point), scale), _to_similarity(draws, scale)
        signals.append(SignalEstimate(
            name="kid", raw=_interval(point, draws), null=0.0,
            similarity=_interval(float(sim_point), sim_draws), scale=scale,
            method=(f"unbiased KID (cubic polynomial kernel) of {n} images' pre-logits features against "
                    f"{reference.size} ImageNet reference images; unbiased, so ImageNet-like data scores ~0 at any sample size"),
        ))
        combined_point.append(sim_point)
        combined_draws.append(sim_draws)
        raw, null, null_sd = frechet_with_null(x.cpu(), reference.features, seed=seed)
        signals.append(SignalEstimate(
            name="frechet", raw=Interval(value=raw - null, low=raw - null - 2 * null_sd, high=raw - null + 2 * null_sd),
            null=null, in_score=False,
            method=(f"Fréchet distance {raw:.1f} minus its same-N null {null:.1f} (reference split against itself at "
                    f"n={min(n, reference.size // 2)}, sd {null_sd:.1f}); raw values at this size are mostly "
                    "small-sample bias, so only the excess is shown; a cross-check, not in the score"),
        ))
    else:
        for name in ("kid", "frechet"):
            signals.append(SignalEstimate(name=name, available=False, unavailable_reason=reference_missing, in_score=False))

    depths: list[DepthShift] = []
    if any(k.startswith("bn:") for k in feature_set.features):
        both, counts = bn_shift_weighted(feature_set, backbone, torch.cat([ones, w]))
        per_stage_1 = {k: v[:1] for k, v in both.items()}
        per_stage_w = {k: v[1:] for k, v in both.items()}
        baseline = reference.bn_baseline if reference is not None else {}
        order = {layer.stage: layer.depth for layer in backbone.bn_layers()}
        for stage in sorted(per_stage_w, key=order.get):
            layers, channels, skipped = counts[stage]
            point = float(per_stage_1[stage][0])
            depths.append(DepthShift(
                stage=stage, depth=order[stage], layers=layers, channels=channels, skipped_channels=skipped,
                shift=_interval(point, per_stage_w[stage]),
                excess=point - baseline[stage] if stage in baseline else None,
            ))
        # Stages weigh equally, so the many deep layers do not drown the few early ones.
        base = sum(baseline.get(s, 0.0) for s in per_stage_w) / len(per_stage_w)
        total_1 = torch.stack([per_stage_1[s] for s in per_stage_w]).mean(0)[0] - base
        total_w = torch.stack([per_stage_w[s] for s in per_stage_w]).mean(0) - base
        scale = reference.scales["bn_shift"] if reference is not None else DEFAULT_SCALES["bn_shift"]
        sim_point, sim_draws = _to_similarity(total_1, scale), _to_similarity(total_w, scale)
        signals.append(SignalEstimate(
            name="bn_shift", raw=_interval(float(total_1), total_w), null=0.0,
            similarity=_interval(float(sim_point), sim_draws), scale=scale,
            method=("mean over stages of the per-channel 1-D Fréchet distance between the dataset's BatchNorm input "
                    "statistics and the pretrained running statistics, in units of the running variance"
                    + (", minus what the ImageNet reference images themselves show" if baseline else
                       " (no reference baseline: raw values)")),
        ))
        combined_point.append(sim_point)
        combined_draws.append(sim_draws)
    else:
        signals.append(SignalEstimate(name="bn_shift", available=False, in_score=False,
                                      unavailable_reason=f"{backbone.name} has no BatchNorm layers"))

    conf = head_confidence(feature_set.features[PRE_LOGITS].cpu(), backbone)
    if conf is not None:
        cw = (w.cpu() @ conf) / n
        signals.append(SignalEstimate(
            name="imagenet_confidence", raw=_interval(float(conf.mean()), cw),
            null=reference.confidence if reference is not None else None, in_score=False,
            method="mean max-softmax of the ImageNet head on the dataset (ImageNet reference value in 'null'); reported only",
        ))

    if not combined_point:
        raise ValueError("no similarity signal is available for this backbone")
    point = float(torch.stack([torch.as_tensor(p, dtype=torch.float64).cpu() for p in combined_point]).mean())
    draws = torch.stack([d.cpu() for d in combined_draws]).mean(0)
    pattern, why = _pattern(depths) if depths else ("unknown", "no BatchNorm statistics")
    used = [s.name for s in signals if s.in_score and s.available]
    return SimilarityReport(
        backbone=backbone.name, sample_size=n, bootstrap_rounds=rounds, seed=seed, signals=signals,
        bn_by_depth=depths, shift_pattern=pattern, shift_pattern_reason=why,
        score=_interval(point, draws),
        method=(f"mean of the similarities of {', '.join(used)}; each maps its distance d to 1/(1 + d/scale), "
                f"scale = the calibrated distance of the similar/different boundary; 95% percentile bootstrap "
                f"over images ({rounds} resamples, the same resamples for every signal)"),
        reference=json.dumps(reference.provenance) if reference is not None else None,
    )


def greyscale_share(feature_set: FeatureSet, rounds: int = 200, seed: int = 0) -> Interval | None:
    if GREY not in feature_set.features or feature_set.features[GREY].shape[0] == 0:
        return None
    g = feature_set.features[GREY][:, 0].double()
    w = bootstrap_weights(g.shape[0], rounds, seed=seed)
    return _interval(float(g.mean()), (w @ g) / g.shape[0])
