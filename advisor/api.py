"""The Python API: what the command line does, as functions that return typed results and never print.

``import advisor`` offers these names (loaded on first use, so importing advisor stays cheap).
The command line (``advisor.cli``) is a thin layer over them: it parses, calls, renders.
Imports every stage below it; only ``advisor.cli`` and the package face import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from advisor.backbones import DEFAULT_BACKBONE
from advisor.core.errors import AdvisorError
from advisor.data.scan import DEFAULT_VAL_FRACTION
from advisor.decide.models import MAX_INPUT, MAX_SEED, MIN_INPUT, Recommendation, RunPlan
from advisor.decide.recipe import EPOCHS_LIMIT, MAX_BATCH, MIN_BATCH
from advisor.measure.models import DatasetProfile
from advisor.measure.profiler import DEFAULT_SAMPLE_SIZE
from strategies.results import Comparison

__all__ = ["AdvisorError", "Classifier", "compare", "load", "profile", "recommend", "resume", "run"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as each stage advances (extract, profile, train, ...)."""

# The command line's ranges (one home: the plan's model), applied here too: the API refuses what the CLI refuses.
MIN_SAMPLE, MAX_SAMPLE = 4, 100_000


def _check_range(name: str, value: int | None, low: int, high: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AdvisorError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def _check_fraction(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise AdvisorError(f"val_fraction must be strictly between 0 and 1, got {value!r}", hint="e.g. 0.2, or 0.4 to measure more precisely")


def _device(device: str | None) -> str | None:
    return None if device in (None, "auto") else device


def _seconds(budget: float | str | None) -> float | None:
    from advisor.decide.advise import parse_duration

    return None if budget is None else parse_duration(str(budget))


def profile(dataset: str | os.PathLike, *, backbone: str = DEFAULT_BACKBONE, weights: str | os.PathLike | None = None,
            sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0, device: str | None = None,
            cache_dir: str | os.PathLike | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
            progress: Progress | None = None) -> DatasetProfile:
    """Measure a dataset: size, balance, image sizes, duplicates and leakage, similarity to ImageNet.

    Parameters
    ----------
    dataset : path
        A folder (``<class>/<image>`` or ``<split>/<class>/<image>``) or a CSV manifest ``path,label[,split]``.
    backbone : str, default "efficientnet_lite0"
        A registered backbone, ``timm/<name>`` or ``torchvision/<name>`` (see ``advisor backbones``).
    weights : path, optional
        A weights file for the backbone (safetensors or a torch state dict).
    sample_size : int, default 300
        Images read for the similarity estimate (stratified by class), 4 to 100,000.
    seed : int, default 0
        Seed of the sample, the bootstrap and the validation split.
    val_fraction : float, default 0.2
        The validation share carved (stratified, seeded) when the dataset has no validation split of
        its own, strictly between 0 and 1; a dataset with its own split keeps it. Runs report their
        accuracy on it: a larger share measures more precisely (R19 warns when it cannot tell strategies apart).
    device : str, optional
        "auto" (default), "cpu", "cuda" or "cuda:N".
    cache_dir : path, optional
        The feature cache [default: ``$ADVISOR_CACHE_DIR`` or ``~/.cache/advisor``].
    progress : callable, optional
        ``progress(stage, done, total)``; nothing is printed either way.

    Returns
    -------
    DatasetProfile
        Every measurement the rules may look at, with intervals (``.similarity``, ``.tap_evidence``, ...).

    Raises
    ------
    AdvisorError
        Bad input (a missing folder, one class, an unknown backbone, ...); ``str(err)`` is the CLI's one-line error.

    Examples
    --------
    >>> import advisor
    >>> p = advisor.profile("examples/ants-bees")  # doctest: +SKIP
    >>> p.num_classes, p.similarity.score.value     # doctest: +SKIP
    (2, 0.63)
    """
    from advisor.measure.profiler import profile_dataset

    _check_range("sample_size", sample_size, MIN_SAMPLE, MAX_SAMPLE)
    _check_range("seed", seed, 0, MAX_SEED)
    _check_fraction(val_fraction)
    prof, _, _ = profile_dataset(dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed,
                                 device=_device(device), cache_dir=cache_dir, val_fraction=val_fraction, progress=progress)
    return prof


def recommend(dataset: str | os.PathLike, *, budget: float | str | None = None, epochs: int | None = None,
              input_size: int | None = None, batch_size: int | None = None, backbone: str = DEFAULT_BACKBONE,
              weights: str | os.PathLike | None = None, sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
              device: str | None = None, cache_dir: str | os.PathLike | None = None,
              save_plan: str | os.PathLike | None = None, backbones: Sequence[str] | None = None,
              val_fraction: float = DEFAULT_VAL_FRACTION, progress: Progress | None = None) -> Recommendation:
    """Profile a dataset, place it in the 2x2 table, forecast every strategy, and decide which to run.

    Parameters
    ----------
    dataset : path
        A folder or CSV manifest, as for :func:`profile`.
    budget : float or str, optional
        A wall-time budget in seconds, or a duration like "15m", "90s", "1h": the strategy with the
        best forecast that fits it is chosen. None: no budget.
    epochs : int, optional
        The fine-tune epoch cap you will run with (1-1000); a short cap lets the forecast choose.
    input_size : int, optional
        The input resolution you will train at (32-1024 px); the forecast conditions on it.
    batch_size : int, optional
        The fine-tune's training batch (2-4096) [default: 32]; its learning rates scale by the
        square root of batch / 32. Lower it when the GPU runs out of memory.
    backbone, weights, sample_size, seed, device, cache_dir, val_fraction, progress
        As for :func:`profile` (the plan records a carved split's share, so runs of it use the same split).
    save_plan : path, optional
        Also write the executable plan there (JSON) and its report next to it (``.html``).
    backbones : list of str, optional
        Also profile and forecast on these backbones (one extraction of the profiling sample each)
        and rank them (``.backbones``); with ``budget`` the best (backbone, strategy) pair that fits runs.

    Returns
    -------
    Recommendation
        ``.plan`` (the :class:`RunPlan` that would run), ``.decision`` (which strategy and why, in one
        sentence), ``.forecast`` (each strategy's accuracy and time with intervals), ``.hits`` (the rules that fired).

    Raises
    ------
    AdvisorError
        Bad input; ``str(err)`` is the CLI's one-line error.

    Examples
    --------
    >>> rec = advisor.recommend("examples/ants-bees", input_size=128)  # doctest: +SKIP
    >>> rec.plan.strategy, rec.decision.sentence                        # doctest: +SKIP
    ('linear-probe', 'the table and the forecast agree on linear-probe ...')
    """
    from advisor.decide.advise import recommend_dataset

    _check_range("epochs", epochs, 1, EPOCHS_LIMIT)
    _check_range("input_size", input_size, MIN_INPUT, MAX_INPUT)
    _check_range("sample_size", sample_size, MIN_SAMPLE, MAX_SAMPLE)
    _check_range("seed", seed, 0, MAX_SEED)
    _check_fraction(val_fraction)
    _check_range("batch_size", batch_size, MIN_BATCH, MAX_BATCH)
    kwargs = dict(sample_size=sample_size, seed=seed, device=_device(device), cache_dir=cache_dir, progress=progress,
                  epochs_cap=epochs, budget_seconds=_seconds(budget), input_size=input_size, batch_size=batch_size,
                  val_fraction=val_fraction)
    rec = recommend_dataset(dataset, backbone=backbone, weights=weights, **kwargs)
    if backbones:
        from advisor.decide.backbones import rank_backbones

        others = [b for b in dict.fromkeys(backbones) if b != backbone]
        recs = [rec] + [recommend_dataset(dataset, backbone=b, **kwargs) for b in others]
        ranking, chosen = rank_backbones(recs, budget_seconds=kwargs["budget_seconds"])
        rec = recs[chosen].model_copy(update={"backbones": ranking})
    if save_plan is not None:
        from advisor.report.html import save_advice

        save_advice(rec, save_plan)
    return rec


def run(dataset: str | os.PathLike | None = None, *, strategy: str = "auto", plan: RunPlan | str | os.PathLike | None = None,
        epochs: int | None = None, input_size: int | None = None, batch_size: int | None = None,
        budget: float | str | None = None, backbone: str = DEFAULT_BACKBONE, sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0,
        runs_dir: str | os.PathLike = "runs", device: str | None = None, cache_dir: str | os.PathLike | None = None,
        workers: int | None = None, keep_checkpoint: bool = False, loggers: Sequence[str] = (),
        val_fraction: float | None = None, progress: Progress | None = None,
        on_recommendation: Callable[[Recommendation], None] | None = None):
    """Train a classifier on a dataset: follow the advice (``strategy="auto"``), force a strategy, or run a plan.

    Parameters
    ----------
    dataset : path
        A folder or CSV manifest (optional with ``plan``, which names its dataset).
    strategy : str, default "auto"
        "auto" (profile, recommend, run the decision), "linear-probe", "layer-probe",
        "partial-finetune" or "full-finetune".
    plan : RunPlan or path, optional
        A plan from :func:`recommend` (``rec.plan``) or a file written with ``save_plan``.
    epochs : int, optional
        Override the fine-tune's epochs (1-1000).
    input_size : int, optional
        Train at this resolution (32-1024 px).
    batch_size : int, optional
        The fine-tune's training batch (2-4096) [default: 32]; its learning rates scale by the
        square root of batch / 32. Lower it when the GPU runs out of memory.
    budget : float or str, optional
        With "auto": the wall-time budget the chosen strategy must fit.
    runs_dir : path, default "runs"
        Where the run directory is created.
    workers : int, optional
        DataLoader worker processes (0-64) [default: by device and free cores].
    keep_checkpoint : bool, default False
        Keep ``checkpoints/`` (weights and optimiser) after the run finishes.
    loggers : list of str, default ()
        Besides ``metrics.csv`` (always): "tensorboard" (``RUN_DIR/tensorboard``) and/or "mlflow"
        (``RUN_DIR/mlruns``, a local file store); each needs its package installed.
    on_recommendation : callable, optional
        Called with the :class:`Recommendation` before training starts ("auto" only).
    backbone, sample_size, seed, device, cache_dir, progress
        As for :func:`profile`.
    val_fraction : float, optional
        As for :func:`profile` [default 0.2]; not with ``plan``, which keeps the split it records.

    Returns
    -------
    RunOutcome
        ``.run_dir`` (load it with :func:`load`), ``.result`` (a :class:`RunResult`: ``.metrics.val_accuracy``
        with its interval, curves, what the strategy chose), ``.plan`` and ``.recommendation``.

    Raises
    ------
    AdvisorError
        Bad input; ``str(err)`` is the CLI's one-line error. A Ctrl-C raises ``RunInterrupted``
        (a KeyboardInterrupt) after the checkpoint is saved: :func:`resume` continues the run.

    Examples
    --------
    >>> out = advisor.run("examples/ants-bees", strategy="linear-probe")  # doctest: +SKIP
    >>> out.result.metrics.val_accuracy                                     # doctest: +SKIP
    0.95
    """
    from advisor.decide.advise import load_plan
    from advisor.execute import runner
    from strategies import strategy_names

    _check_range("epochs", epochs, 1, EPOCHS_LIMIT)
    _check_range("input_size", input_size, MIN_INPUT, MAX_INPUT)
    _check_range("sample_size", sample_size, MIN_SAMPLE, MAX_SAMPLE)
    _check_range("seed", seed, 0, MAX_SEED)
    _check_range("workers", workers, 0, 64)
    _check_range("batch_size", batch_size, MIN_BATCH, MAX_BATCH)
    if val_fraction is not None:
        _check_fraction(val_fraction)
        if plan is not None:
            raise AdvisorError("val_fraction does not apply to a plan: it keeps the split it records",
                               hint="run the plan as it is, or recommend again with the new val_fraction")
    forced = None if strategy == "auto" else strategy
    if forced is not None and forced not in strategy_names():
        raise AdvisorError(f"unknown strategy {strategy!r}", hint=f"choose auto or one of {', '.join(strategy_names())}")
    if plan is not None:
        the_plan = plan if isinstance(plan, RunPlan) else load_plan(plan)
        the_plan = runner.apply_overrides(the_plan, epochs=epochs, input_size=input_size, batch_size=batch_size,
                                          strategy=forced)
        return runner.run_plan(the_plan, dataset=dataset, runs_dir=runs_dir, device=_device(device), cache_dir=cache_dir,
                               num_workers=workers, progress=progress, keep_checkpoint=keep_checkpoint,
                               loggers=list(loggers))
    if dataset is None:
        raise AdvisorError("a dataset is needed", hint="advisor.run('path/to/images') or advisor.run(plan=...)")
    return runner.auto_run(dataset, strategy=forced, backbone=backbone, sample_size=sample_size, seed=seed,
                           runs_dir=runs_dir, device=_device(device), cache_dir=cache_dir, num_workers=workers,
                           epochs=epochs, input_size=input_size, batch_size=batch_size, progress=progress,
                           on_recommendation=on_recommendation,
                           keep_checkpoint=keep_checkpoint, budget_seconds=_seconds(budget), loggers=list(loggers),
                           val_fraction=DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)


def resume(run_dir: str | os.PathLike, *, device: str | None = None, progress: Progress | None = None):
    """Continue an interrupted run from its directory; a fine-tune restarts from its last checkpoint.

    Returns the same ``RunOutcome`` as :func:`run`; on the CPU the model equals an uninterrupted run's.
    """
    from advisor.execute.runner import resume_run

    return resume_run(run_dir, device=_device(device), progress=progress)


def compare(dataset: str | os.PathLike, *, strategies: Sequence[str] | None = None, epochs: int | None = None,
            input_size: int | None = None, batch_size: int | None = None, backbone: str = DEFAULT_BACKBONE,
            sample_size: int = DEFAULT_SAMPLE_SIZE, seed: int = 0, runs_dir: str | os.PathLike = "runs", device: str | None = None,
            cache_dir: str | os.PathLike | None = None, workers: int | None = None,
            val_fraction: float = DEFAULT_VAL_FRACTION, progress: Progress | None = None) -> Comparison:
    """Run several strategies on the same split, backbone, input size and epoch cap, and rank them.

    Parameters
    ----------
    strategies : list of str, optional
        A subset of the four strategies [default: all four].
    epochs, input_size, batch_size, backbone, sample_size, seed, runs_dir, device, cache_dir, workers, val_fraction, progress
        As for :func:`run`; every strategy runs on the same split.

    Returns
    -------
    Comparison
        ``.rows`` (each strategy's accuracy with its interval, its paired gap to the best, time),
        ``.winner``, ``.recommended``, ``.regret_points`` and ``.verdict`` (what the data can and cannot separate).

    Raises
    ------
    AdvisorError
        Bad input; ``str(err)`` is the CLI's one-line error.
    """
    from advisor.execute.compare import check_strategies
    from advisor.execute.compare import compare as compare_strategies

    _check_range("epochs", epochs, 1, EPOCHS_LIMIT)
    _check_range("input_size", input_size, MIN_INPUT, MAX_INPUT)
    _check_range("workers", workers, 0, 64)
    _check_range("sample_size", sample_size, MIN_SAMPLE, MAX_SAMPLE)
    _check_range("seed", seed, 0, MAX_SEED)
    _check_fraction(val_fraction)
    _check_range("batch_size", batch_size, MIN_BATCH, MAX_BATCH)
    names = check_strategies(list(strategies) if strategies is not None else None)
    return compare_strategies(dataset, strategies=names, backbone=backbone, runs_dir=runs_dir, input_size=input_size,
                              epochs=epochs, sample_size=sample_size, seed=seed, device=_device(device),
                              cache_dir=cache_dir, num_workers=workers, progress=progress, val_fraction=val_fraction,
                              batch_size=batch_size)


class Classifier:
    """A trained run's classifier, loaded: ``predict`` on files, folders or PIL images; ``export`` for use elsewhere.

    Build it with :func:`load`. ``classes`` are the class names in label order, ``card`` the model
    card (backbone, transform, strategy), ``model`` the ``torch.nn.Module`` (eval mode).
    """

    def __init__(self, run_dir: str | os.PathLike, model, card, device) -> None:
        self.run_dir, self.model, self.card, self.device = Path(run_dir), model, card, device

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    def predict(self, images, *, top_k: int = 5, batch_size: int = 32, workers: int | None = None,
                progress: Progress | None = None, explain_to: str | os.PathLike | None = None, tta: bool = False):
        """Top-k classes with probabilities for image files, folders or PIL images (one or a list).

        Files are decoded by ``workers`` DataLoader processes [default: by free cores] while the model runs;
        ``progress("predict", done, total)`` follows the images. Returns a ``PredictionReport``: ``.predictions`` (path or ``<image N>``, and its top-k), ``.skipped``
        (unreadable files, with the reason), ``.ignored``. Raises AdvisorError when nothing could be classified.
        ``explain_to``: a folder that also gets each image's evidence picture (see :meth:`explain`); each
        prediction's ``.evidence`` names its file. ``tta``: average each image's logits with its mirror
        image's (twice the compute; refused where the run's flip check found that flips change labels).
        """
        from advisor.execute.predict import predict_with

        _check_range("workers", workers, 0, 64)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        return predict_with(self.model, self.card, items, run_dir=self.run_dir, top_k=top_k, device=self.device,
                            batch_size=batch_size, workers=workers, explain_to=explain_to, tta=tta,
                            progress=(lambda done, total: progress("predict", done, total)) if progress else None)

    def explain(self, images, *, target: str | None = None, versus: str | None = None):
        """Where in each image the evidence for one class over another lies: a list of ``Explanation``.

        ``target`` defaults to the model's top class, ``versus`` to the most likely other class.
        ``.evidence`` is a map over the centre crop (``.crop``) in logit units whose mean is ``.gap``
        (logit of target minus logit of versus: exact for this model's linear head on averaged
        maps); ``.image()`` / ``.save(path)`` give the crop beside the map (vermillion: towards the
        target, blue: towards versus). Raises AdvisorError for an unknown class or an unreadable file.
        """
        from advisor.execute.predict import expand_inputs
        from advisor.report.evidence import explain

        items = list(images) if isinstance(images, (list, tuple)) else [images]
        paths = [i for i in items if isinstance(i, (str, os.PathLike))]
        files, skipped, _ = expand_inputs(paths) if paths else ([], [], 0)
        if skipped:
            raise AdvisorError(f"cannot explain {skipped[0].path}: {skipped[0].reason}")
        pil = [i for i in items if not isinstance(i, (str, os.PathLike))]
        if not files and not pil:
            raise AdvisorError("no images to explain", hint="pass image files, folders that contain images, or PIL images")
        index = {c: n for n, c in enumerate(self.card.classes)}
        for name in (target, versus):
            if name is not None and name not in index:
                raise AdvisorError(f"{name!r} is not one of this model's classes", hint=f"choose from {self.classes}")
        pair = (index.get(target) if target else None, index.get(versus) if versus else None)
        found = explain(self.model, self.classes, [*files, *pil], [pair] * (len(files) + len(pil)), device=self.device)
        if bad := [(i, r) for i, r in zip([*files, *pil], found) if isinstance(r, str)]:
            raise AdvisorError(f"cannot explain {bad[0][0]}: {bad[0][1]}")
        return found

    def evaluate(self, dataset: str | os.PathLike, *, split: str = "test", batch_size: int = 32, workers: int | None = None,
                 progress: Progress | None = None, explain_to: str | os.PathLike | None = None, tta: bool = False,
                 include_seen: bool = False):
        """Score this classifier on labelled images: class folders (all of them), split folders or a CSV manifest.

        ``split``: "test" (class folders without split folders count as test), "val", "train" or "all".
        Returns a ``SplitScore``: ``.accuracy`` with its 95 % interval ``.accuracy_ci``, ``.per_class``,
        ``.confusion`` (rows: true class, in the run's class order), ``.skipped``. Raises AdvisorError
        when a class of ``dataset`` is not among the run's, or the split is empty. ``explain_to``: a folder
        that gets the evidence picture (predicted against true class) of every misclassified image.
        ``tta``: as for :meth:`predict`. Images this run trained or validated on (the same bytes) are left out and
        counted in ``.seen_train`` / ``.seen_val``, unless ``include_seen``; when nothing else is left it raises.
        """
        from advisor.execute.evaluate import evaluate_with

        _check_range("workers", workers, 0, 64)
        return evaluate_with(self.model, self.card, dataset, split=split, device=self.device, workers=workers,
                             batch_size=batch_size, explain_to=explain_to, tta=tta, run_dir=self.run_dir,
                             include_seen=include_seen, progress=(lambda done, total: progress("evaluate", done, total)) if progress else None)

    def export(self, out_dir: str | os.PathLike | None = None):
        """Write timm safetensors, TorchScript and ONNX (where installed), each checked against this classifier.

        Returns an ``ExportResult``: ``.files`` (format -> path), ``.skipped`` (format -> why), ``.max_abs_diff``.
        """
        from advisor.execute.export import export_run

        return export_run(self.run_dir, out_dir=out_dir)

    def __repr__(self) -> str:
        return f"Classifier({str(self.run_dir)!r}, strategy={self.card.strategy!r}, classes={len(self.card.classes)})"


def load(run_dir: str | os.PathLike, *, device: str | None = None) -> Classifier:
    """Load the classifier a run saved (``model.safetensors`` + ``model.json``, checked against each other).

    Raises AdvisorError when the run directory is incomplete or its files do not match.

    Examples
    --------
    >>> clf = advisor.load(out.run_dir)                     # doctest: +SKIP
    >>> clf.predict("examples/ants-bees/ants", top_k=1)     # doctest: +SKIP
    """
    from advisor.backbones.classifier import load_classifier
    from advisor.core.distributed import resolve_device

    dev = resolve_device(_device(device))
    model, card = load_classifier(run_dir, device=dev)
    return Classifier(run_dir, model.eval(), card, dev)
