"""What runs measured, as typed models every later layer shares: metrics, per-class scores, a strategy's
result (:class:`RunResult`) and strategies side by side (:class:`Comparison`, what ``advisor compare`` saves)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from advisor.core.stats import expected_calibration_error, wilson_interval
from advisor.decide.models import Recommendation


class ClassMetrics(BaseModel):
    name: str
    precision: float
    recall: float
    f1: float
    support: int


class Metrics(BaseModel):
    """Validation metrics of a trained classifier."""

    val_accuracy: float
    val_accuracy_ci: tuple[float, float]  # Wilson 95 % interval
    val_loss: float
    n_val: int
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # rows: true class, columns: predicted


def classification_metrics(logits: torch.Tensor, y: torch.Tensor, classes: list[str]) -> Metrics:
    logits, y = logits.detach().float().cpu(), y.cpu()
    k = len(classes)
    pred = logits.argmax(1)
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    per = []
    for i, name in enumerate(classes):
        tp = int(conf[i, i])
        p = tp / int(conf[:, i].sum()) if conf[:, i].sum() else 0.0
        r = tp / int(conf[i].sum()) if conf[i].sum() else 0.0
        per.append(ClassMetrics(name=name, precision=round(p, 4), recall=round(r, 4),
                                f1=round(2 * p * r / (p + r), 4) if p + r else 0.0, support=int(conf[i].sum())))
    correct = int((pred == y).sum())
    n = int(y.numel())
    loss = float(torch.nn.functional.cross_entropy(logits, y)) if n else float("nan")
    return Metrics(val_accuracy=correct / n if n else 0.0, val_accuracy_ci=wilson_interval(correct, n), val_loss=round(loss, 5),
                   n_val=n, per_class=per, confusion=conf.tolist())


class SplitScore(BaseModel):
    """A trained classifier scored once on labelled images nothing was chosen on: a run's test split after
    training, or a set given to ``advisor evaluate``."""

    split: str  # "test", "val", "train" or "all"
    dataset: str = ""
    accuracy: float
    accuracy_ci: tuple[float, float]  # Wilson 95 % interval
    top5_accuracy: float | None = None  # the true class among the five most probable (more than five classes)
    loss: float
    n: int
    skipped: int = 0  # images that could not be read
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # rows: true class, columns: predicted
    # Expected calibration error of the probabilities the classifier gives (strategies/temperature.py), and of
    # those it gave before its temperature was folded in (None: it was never calibrated).
    ece: float | None = None
    ece_uncalibrated: float | None = None
    loss_uncalibrated: float | None = None
    # advisor evaluate --explain: the folder of evidence pictures of the misclassified images, and how many
    evidence_dir: str | None = None
    evidence_pictures: int = 0
    tta: bool = False  # each image's logits averaged with its mirror image's (advisor evaluate --tta)
    # advisor evaluate: images given that the run itself trained / validated on (same bytes, advisor.execute.seen),
    # left out of the score unless seen_included; seen_note says why they could not be told apart (None: they were)
    seen_train: int = 0
    seen_val: int = 0
    seen_included: bool = False
    seen_note: str | None = None


def split_score(logits: torch.Tensor, y: torch.Tensor, classes: list[str], *, split: str, dataset: str = "",
                skipped: int = 0, temperature: float = 1.0) -> SplitScore:
    """``temperature``: the one folded into the classifier's head, to score its probabilities before calibration too."""
    m = classification_metrics(logits, y, classes)
    top5 = None
    if len(classes) > 5 and len(y):
        top5 = round(float((logits.float().topk(5, dim=1).indices.cpu() == y.cpu()[:, None]).any(1).float().mean()), 6)
    logits, y = logits.float().cpu(), y.cpu()
    return SplitScore(split=split, dataset=dataset, accuracy=m.val_accuracy, accuracy_ci=m.val_accuracy_ci, top5_accuracy=top5,
                      loss=m.val_loss, n=m.n_val, skipped=skipped, per_class=m.per_class, confusion=m.confusion,
                      ece=round(expected_calibration_error(logits, y), 5),
                      **(_uncalibrated(logits * temperature, y) if temperature != 1.0 and 0 < temperature < float("inf")
                         else {}))


def _uncalibrated(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """What a calibrated classifier's split scored before its temperature was folded in."""
    loss = torch.nn.functional.cross_entropy(logits, y) if len(y) else torch.tensor(float("nan"))
    return {"ece_uncalibrated": round(expected_calibration_error(logits, y), 5), "loss_uncalibrated": round(float(loss), 5)}


class Calibration(BaseModel):
    """Temperature scaling fitted on the validation split (strategies/temperature.py). The "after" figures are
    cross-fitted: each fifth of the split scored with the temperature fitted on the other four."""

    applied: bool
    temperature: float  # the head's logits are divided by it; 1.0: the model was left as trained
    reason: str
    n: int
    # what T was fitted and scored on: the validation split, or (a probe whose validation split is too small) the
    # out-of-fold predictions of its training split: every figure below is on those rows
    source: str = "validation"
    nll_before: float
    nll_after: float
    ece_before: float  # expected calibration error, 15 equal-width confidence bins
    ece_after: float
    # per confidence bin: (mean confidence, accuracy, images), before and after (the report's reliability diagram)
    reliability_before: list[tuple[float, float, int]] = []
    reliability_after: list[tuple[float, float, int]] = []


class RunResult(BaseModel):
    """What a strategy's ``fit`` returns."""

    strategy: str
    metrics: Metrics
    curves: dict[str, list[float]] = {}
    trainable_params: int
    total_params: int
    seconds: float
    device: str
    selected: dict[str, Any] = {}  # what the strategy chose (tap, l2, epochs run, ...)
    sweep: list[dict[str, Any]] = []  # layer probe: one row per candidate
    artifacts: dict[str, str] = {}
    epochs_completed: int | None = None
    stopped_early: bool = False
    # (path, true class, predicted class) of every validation image evaluated: paired comparisons
    # between strategies (compare) need the per-image outcomes, not only the accuracy.
    predictions: list[tuple[str, int, int]] = []
    confidence: list[float] = []  # per prediction: the probability of the predicted class (report galleries)
    # The dataset's test split, scored once by the saved classifier after training (None: it has none).
    test: SplitScore | None = None
    calibration: Calibration | None = None  # None: not calibrated (the plan said no, or an older run)
    # The validation logits and labels the metrics came from, for the runner's calibration; never saved.
    val_logits: Any = Field(default=None, exclude=True, repr=False)
    val_labels: Any = Field(default=None, exclude=True, repr=False)
    # probes: each training image's logits from the probe refitted without its CV fold (ProbeFit.oof_logits),
    # kept where the validation split is too small to calibrate on
    oof_logits: Any = Field(default=None, exclude=True, repr=False)
    oof_labels: Any = Field(default=None, exclude=True, repr=False)


class CompareRow(BaseModel):
    strategy: str
    val_accuracy: float
    ci: tuple[float, float]
    n_val: int
    seconds: float
    trainable_params: int
    total_params: int
    input_size: int
    epochs: int | None
    selected: dict
    run_dir: str
    recommended: bool = False
    winner: bool = False
    # Accuracy points behind the most accurate strategy, paired over the same validation images,
    # with its 95 % bootstrap interval; tied: the interval reaches 0, so the data cannot order them.
    behind_best: float = 0.0
    behind_best_ci: tuple[float, float] = (0.0, 0.0)
    tied_with_best: bool = True


class Comparison(BaseModel):
    """What ``advisor compare`` prints and saves as ``compare.json``."""

    dataset: str
    backbone: str
    recommended: str
    winner: str
    regret_points: float  # winner's accuracy minus the recommended strategy's, in accuracy points
    regret_ci: tuple[float, float] = (0.0, 0.0)  # paired bootstrap, 95 %, in points
    verdict: str = ""  # what the comparison can and cannot claim, in words
    rows: list[CompareRow]
    input_size: int | None
    epochs_cap: int | None
    recommend_seconds: float
    compare_seconds: float
    recommend_cost_fraction: float  # recommend time / the time of running every strategy
    saved_to: str
    recommendation: Recommendation
