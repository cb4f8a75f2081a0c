"""Profile -> rules -> plan: what ``advisor recommend`` computes (the CLI only renders it)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from advisor.backbones import PRE_LOGITS
from advisor.core.clock import StageClock
from advisor.core.distributed import resolve_device
from advisor.core.errors import AdvisorError
from advisor.core.io import read_model, write_text_atomic
from advisor.core.machine import busy_elsewhere, machine_name
from advisor.data.scan import DEFAULT_VAL_FRACTION
from advisor.decide.curves import more_data
from advisor.decide.forecast import Forecast, forecast
from advisor.decide.models import Recommendation, RunPlan
from advisor.decide.recipe import default_recipe
from advisor.decide.rules import Thresholds, finetune_schedule, plan_for_strategy, recommend
from advisor.decide.rules.policy import DEFAULT_POLICY, decide
from advisor.decide.timing import (FULL_BATCH_TIMING_SECONDS, TIME_KINDS, decode_seconds, extraction_seconds_per_image,
                                   finetune_step_seconds, forward_seconds, run_overhead, time_correction)
from advisor.measure.features import extraction_batch_size
from advisor.measure.profiler import DEFAULT_SAMPLE_SIZE, StageProgress, profile_dataset


def evidence_notes(rec: Recommendation) -> list[str]:
    """Where the measured evidence and the rule's reading of it disagree, in words."""
    notes: list[str] = []
    sim = rec.profile.similarity
    if sim is None:
        return notes
    signals = {s.name: s for s in sim.signals if s.available and s.similarity is not None}
    threshold = rec.thresholds.get("similarity", 0.5)
    sides = {name: ("similar" if s.similarity.value >= threshold else "different") for name, s in signals.items()}
    if len(set(sides.values())) > 1:
        notes.append(
            "the similarity signals disagree: " + ", ".join(f"{n} says {v} ({signals[n].similarity.value:.2f})" for n, v in sides.items())
            + f"; the plan follows their mean, {sim.score.value:.2f} ({rec.similarity_class})."
        )
    if rec.similarity_class == "similar" and sim.shift_pattern == "input-level":
        notes.append(
            "features place the dataset near ImageNet, but BatchNorm statistics shift most in the early layers "
            f"({sim.shift_pattern_reason}); the plan keeps the {rec.strategy} the table gives and adds the input-level advice."
        )
    if rec.similarity_class == "different" and sim.shift_pattern == "input-level" and rec.strategy in ("layer-probe", "full-finetune"):
        notes.append(
            "the difference is mostly at the input level (early layers); the deep, semantic layers shift less, so "
            "the top layers may still transfer: compare against a linear probe before trusting the table "
            "(`advisor compare` measures it)."
        )
    notes.extend(depth_evidence_notes(rec))
    conf = next((s for s in sim.signals if s.name == "imagenet_confidence" and s.raw is not None), None)
    if conf is not None and conf.null:
        ratio = conf.raw.value / conf.null
        if rec.similarity_class == "similar" and ratio < 0.5:
            notes.append(f"the ImageNet head is unsure on these images (mean top-1 probability {conf.raw.value:.2f} vs "
                         f"{conf.null:.2f} on ImageNet) although the feature statistics are close.")
        if rec.similarity_class == "different" and ratio > 0.9:
            notes.append(f"the ImageNet head is as confident here as on ImageNet ({conf.raw.value:.2f} vs {conf.null:.2f}), "
                         "although the feature statistics differ.")
    return notes


# An earlier tap must beat pre_logits by this much k-NN accuracy (and on LogME too) to count as clearly better.
EVIDENCE_MARGIN = 0.03


def depth_evidence_notes(rec: Recommendation) -> list[str]:
    """Where per-depth evidence (k-NN accuracy and LogME on the sample) disagrees with the table's depth."""
    ev = {e.tap: e for e in rec.profile.tap_evidence}
    top = ev.get("pre_logits")
    if top is None or len(ev) < 2:
        return []
    best = max(ev.values(), key=lambda e: (e.knn_accuracy, e.logme))
    clearly = (best.tap != "pre_logits" and best.knn_accuracy >= top.knn_accuracy + EVIDENCE_MARGIN
               and best.logme > top.logme)
    if clearly and rec.strategy == "linear-probe":
        return [f"per-depth evidence favours an earlier layer: {best.tap} scores k-NN {best.knn_accuracy:.3f} and LogME "
                f"{best.logme:.3f} against pre_logits' {top.knn_accuracy:.3f} and {top.logme:.3f}; the table says top layer "
                f"({rec.quadrant_rule}) and the plan follows it, but a layer probe may do better (`advisor run --strategy "
                f"layer-probe` or `advisor compare` measures it)."]
    if rec.strategy == "layer-probe" and best.tap == "pre_logits":
        return [f"per-depth evidence does not favour an earlier layer: pre_logits has the best k-NN accuracy "
                f"({top.knn_accuracy:.3f}); the layer probe sweeps it too and keeps whichever tap cross-validates best."]
    return []


def recommend_dataset(
    dataset: str | os.PathLike,
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | os.PathLike | None = None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    seed: int = 0,
    rounds: int = 200,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    num_workers: int | None = None,
    thresholds: Thresholds | None = None,
    progress: StageProgress | None = None,
    similarity: bool = True,
    force_strategy: str | None = None,
    epochs_cap: int | None = None,
    budget_seconds: float | None = None,
    input_size: int | None = None,
    batch_size: int | None = None,
    policy: str = DEFAULT_POLICY,
) -> Recommendation:
    """Measure ``dataset`` and apply the rule table: the placement, the rationale and the plan.

    ``similarity=False`` measures only what needs no forward pass (R14 then says so);
    ``epochs_cap`` shortens a fine-tune's schedule (the advice warns when it is shorter than the
    track record measured); ``budget_seconds`` picks the best forecast that fits the time;
    ``input_size`` and ``batch_size`` go into the plan before its time is forecast.
    """
    if sample_size < 4:
        raise AdvisorError(f"--sample-size must be at least 4, got {sample_size}")
    t0 = time.perf_counter()
    profile, backbone_model, scan = profile_dataset(
        dataset, backbone=backbone, weights=weights, sample_size=sample_size, seed=seed, rounds=rounds,
        device=device, cache_dir=cache_dir, val_fraction=val_fraction, num_workers=num_workers, progress=progress,
        similarity=similarity,
    )
    rec = recommend(profile, taps=backbone_model.taps, thresholds=thresholds, seed=seed, epochs_cap=epochs_cap,
                    val_fraction=scan.val_fraction if scan.split_source == "stratified" else None)
    rec.evidence_notes = evidence_notes(rec)
    if rec.plan.strategy == "layer-probe" and profile.tap_evidence:
        # The sweep always includes the tap the evidence ranks first.
        best = max(profile.tap_evidence, key=lambda e: (e.knn_accuracy, e.logme)).tap
        if best not in rec.plan.taps:
            rec.plan.taps = [t.name for t in backbone_model.taps if t.name in {*rec.plan.taps, best}]
            rec.plan.notes.append(f"added {best} to the sweep: it has the best per-depth evidence")
    table_strategy = rec.strategy
    table_rule = "+".join(h.id for h in rec.hits if h.kind in ("quadrant", "override")) or rec.quadrant_rule
    if force_strategy is not None:
        rec.plan = plan_for_strategy(rec, force_strategy, taps=backbone_model.taps)
    _apply_settings(rec, input_size=input_size, batch_size=batch_size)  # plans built from it later keep the batch
    short, warning = _short_cap(rec)
    if warning:
        rec.warnings.append(warning)
    clock = StageClock()
    clock.seconds.update(profile.stage_seconds)
    if profile.probe_cv:
        rec.forecast, kwargs = _forecast(rec, backbone_model, scan, device=device, short_schedule=short,
                                         cache_dir=cache_dir, dataset=str(Path(dataset).resolve()), clock=clock)
        if rec.profile.probe_curve:
            with clock("more data"):
                rec.more_data = more_data(rec, kwargs, forecast, schedule=lambda n: finetune_schedule(n)[1],
                                      epochs_cap=rec.epochs_cap, large_per_class=rec.thresholds["large_per_class"],
                                      large_total=rec.thresholds["large_total"])
        if warning:
            rec.forecast.notes.append(warning)
    if force_strategy is None:
        rec.decision = decide(policy, table=table_strategy, table_rule=table_rule, column=rec.similarity_class,
                              forecast=rec.forecast, per_class=profile.train_per_class_median)
        if rec.decision.chosen != rec.strategy:
            _switch(rec, rec.decision.chosen, rule_id="forecast", taps=backbone_model.taps, input_size=input_size)
        if budget_seconds is not None:
            _fit_budget(rec, budget_seconds, taps=backbone_model.taps, input_size=input_size)
    rec.seconds = round(time.perf_counter() - t0, 2)
    rec.stage_seconds = clock.rounded()
    return rec


def recommend_once(dataset: str | os.PathLike, **kwargs) -> Recommendation:
    """:func:`recommend_dataset` on rank 0 only, its result sent to every rank (one process: just the call).

    The profile reads a sample, not worth sharding, and the forecast times the device, which
    would differ per rank: one rank decides, so every rank runs the same plan.
    """
    from advisor.core import distributed

    rec = None
    if distributed.is_main():
        with distributed.rank_zero_only():
            rec = recommend_dataset(dataset, **kwargs)
    return distributed.broadcast(rec)


def _short_cap(rec: Recommendation) -> tuple[bool, str | None]:
    """(the fine-tunes would run below the share of their schedule the track record measured, a warning if the plan is one)."""
    if rec.epochs_cap is None or rec.profile.train_images < 1:
        return False, None
    epochs = finetune_schedule(rec.profile.train_images)[1]
    share = rec.epochs_cap / epochs
    least = rec.thresholds.get("min_schedule_fraction", 0.26)
    if share >= least:
        return False, None
    if rec.plan.recipe is None:
        return True, None
    return True, _short_cap_text(rec, epochs, share, least)


def _short_cap_text(rec: Recommendation, epochs: int, share: float, least: float) -> str:
    return (f"the epoch cap keeps {rec.epochs_cap} of {epochs} epochs ({share:.0%}) of the {rec.strategy}: "
            f"the shortest capped fine-tunes measured ran {least:.0%} of their schedules, so the forecast credits it no "
            "gain over the probes")


def parse_duration(text: str) -> float:
    """'15m', '90s', '1.5h' or a plain number of seconds -> seconds; anything else is a one-line error."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise AdvisorError(f"a budget must be a positive duration like 15m, 90s or 1h; got {text!r}")
    return value


def _apply_settings(rec: Recommendation, *, input_size: int | None, batch_size: int | None = None) -> None:
    """The plan shown is the plan that runs: the user's input size, batch and epoch cap go into it."""
    if batch_size is not None:
        rec.plan = rec.plan.with_batch_size(batch_size)
    update: dict = {}
    if input_size is not None:
        update["input_size"] = input_size
    if rec.epochs_cap is not None and rec.plan.recipe is not None and rec.epochs_cap < rec.plan.recipe.epochs:
        warmup = min(rec.plan.recipe.warmup_epochs, max(0, rec.epochs_cap - 1))
        update["recipe"] = rec.plan.recipe.model_copy(update={"epochs": rec.epochs_cap, "warmup_epochs": warmup})
    if update:
        rec.plan = rec.plan.model_copy(update=update)


def _switch(rec: Recommendation, strategy: str, *, rule_id: str, taps, input_size: int | None) -> None:
    """Run ``strategy`` instead of the table's: its own plan fields, the same modifiers, ``rule_id`` recorded."""
    rec.plan = plan_for_strategy(rec, strategy, taps=taps)
    rec.plan.notes = [n for n in rec.plan.notes if "forced" not in n]
    rec.plan.rule_ids = [r for r in rec.plan.rule_ids if r != "user"] + [rule_id]
    rec.strategy = strategy
    _apply_settings(rec, input_size=input_size)  # plan_for_strategy kept the plan's batch


def _fit_budget(rec: Recommendation, budget: float, *, taps, input_size: int | None = None) -> None:
    """Replace the advice by the most accurate forecast that fits ``budget`` seconds, and say what more time buys."""
    if rec.forecast is None:
        rec.warnings.append("no forecast could be made (similarity not measured), so the budget was not applied")
        return
    timed = [f for f in rec.forecast.strategies if f.seconds is not None]
    fits = [f for f in timed if f.seconds <= budget]
    if not fits:
        cheapest = min(timed, key=lambda f: f.seconds, default=None)
        rec.warnings.append(f"nothing is forecast to fit the budget of {budget:.0f} s" + (
            f"; the cheapest, {cheapest.strategy}, needs about {cheapest.seconds:.0f} s" if cheapest else ""))
        return
    best = max(fits, key=lambda f: (f.accuracy, -f.seconds))
    note = f"budget {budget:.0f} s: {best.strategy} has the best forecast that fits ({best.accuracy:.3f}, about {best.seconds:.0f} s)"
    better = [f for f in timed if f.accuracy > best.accuracy and f.seconds > budget]
    if better:
        top = max(better, key=lambda f: f.accuracy)
        note += (f"; {top.strategy} is forecast {100 * (top.accuracy - best.accuracy):+.1f} points but needs about "
                 f"{top.seconds:.0f} s")
    if best.strategy != rec.strategy:
        _switch(rec, best.strategy, rule_id="budget", taps=taps, input_size=input_size)
        if rec.decision is not None:
            rec.decision = rec.decision.model_copy(update={
                "chosen": best.strategy, "agree": False,
                "sentence": rec.decision.sentence.rstrip(".") + f"; the budget then chose {best.strategy}: {note}."})
    rec.plan.notes.append(note)
    rec.warnings.append(note)


STEP_TIMES = "step_times.json"  # in the cache folder: timed training steps, per machine and configuration
# How a step is timed, in the key: entries timed another way (before 2026-12: always a batch of 8,
# scaled; before 2026-12-07: the 1-minute load average recorded beside them) are timed again rather than trusted.
STEP_TIMING = f"full-batch-under-{FULL_BATCH_TIMING_SECONDS:g}s-other-work"
# Re-time a step when other processes kept this many more cores busy when it was timed than now (busy_elsewhere:
# the cores' own ticks, less this process's; the 1-minute load average, which counts this process's own profiling
# and the last command's, let a timing taken beside a test run stand for a whole night of records).
RETIME_LOAD = 0.75
RETIME_RATIO = (0.5, 2.0)  # finished runs' achieved/forecast time outside this: the timing itself is re-taken
KIND_WORDS = {"probe": "probe", "finetune": "fine-tune"}


def _step_seconds(backbone_model, plan: RunPlan, dev, frozen: int, cache_dir, *,
                  retime: bool = False, forward: bool = False) -> tuple[float, str, str]:
    """(seconds of a training step, where that figure comes from, when it was timed), remembered in the cache folder.

    ``forward``: an extraction batch's inference pass instead (:func:`forward_seconds`, at the
    extraction's batch). The key names the backbone, weights, input size, batch, frozen stages
    (or "forward"), device and thread count; each entry records the load the step was timed
    under. A step timed while other processes kept the cores busier than now is timed again, and
    an entry that is not a finite positive number is ignored.
    """
    import json

    from advisor.core.io import default_cache_dir, read_bytes_checked

    batch = extraction_batch_size(dev) if forward else plan.batch_size
    key = "|".join(map(str, (backbone_model.name, backbone_model.weights_digest[:16], plan.input_size, batch,
                              "forward" if forward else frozen, machine_name(dev), STEP_TIMING)))
    path = Path(cache_dir or default_cache_dir()) / STEP_TIMES
    try:  # read back like input: a regular file of bounded size (a FIFO here must not hang recommend)
        known = json.loads(read_bytes_checked(path, max_bytes=4 << 20))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    load = busy_elsewhere()
    if isinstance(entry, dict) and not retime:
        secs, then, stamp = entry.get("seconds"), entry.get("load"), entry.get("time")
        usable = isinstance(secs, (int, float)) and math.isfinite(secs) and 0 < secs < 3600 and isinstance(stamp, str)
        calm = not (isinstance(then, (int, float)) and load is not None and then - load > RETIME_LOAD)
        if usable and calm:
            return float(secs), f"step timed {stamp} (other work on {f'{then:.1f}' if isinstance(then, (int, float)) else '?'} cores)", stamp
    if forward:
        seconds = forward_seconds(backbone_model, input_size=plan.input_size, batch_size=batch, device=dev)
    else:
        seconds = finetune_step_seconds(backbone_model, input_size=plan.input_size, batch_size=batch, device=dev,
                                        frozen_stages=frozen)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        write_text_atomic(path, json.dumps({**known, key: {"seconds": seconds, "load": load, "time": stamp}}, indent=1))
    except AdvisorError:
        pass  # a full or read-only cache only costs the timing next time
    return seconds, f"step timed now (other work on {load:.1f} cores)" if load is not None else "step timed now", stamp


def _forecast(rec: Recommendation, backbone_model, scan, *, device: str | None, short_schedule: bool = False,
              cache_dir=None, dataset: str | None = None, clock: StageClock | None = None) -> Forecast:
    from advisor.decide.records import local_outcomes, local_record_path

    p = rec.profile
    plan = rec.plan
    taps = backbone_model.taps
    schedule = finetune_schedule(p.train_images)[1]
    epochs = plan.recipe.epochs if plan.recipe is not None else default_recipe(p.train_images, full=True).epochs
    if rec.epochs_cap is not None:
        epochs = min(epochs, rec.epochs_cap)
    clock = clock if clock is not None else StageClock()
    dev = resolve_device(device)
    with clock("step timing"):
        step, source, timed_at = _step_seconds(backbone_model, plan, dev, 0, cache_dir)
    # Only runs forecast from this timing say how good it is.
    finished = local_outcomes(local_record_path())
    # Probes rest on the extraction pass's timing, fine-tunes on the steps': each kind is corrected by its own runs.
    corrections = {k: time_correction(finished, device=machine_name(dev), since=timed_at, kind=k) for k in TIME_KINDS}
    overhead, overhead_runs = run_overhead(finished, device=machine_name(dev))
    # Finished runs that took less than half or more than twice their forecast say the timing is wrong
    # (taken under load, or stale): that kind's timing (the steps, or the extraction pass) is taken
    # again, and its correction starts afresh from it.
    off = {k: fr for k, fr in corrections.items() if fr[1] and not RETIME_RATIO[0] <= fr[0] <= RETIME_RATIO[1]}
    frozen = plan_for_strategy(rec, "partial-finetune", taps=taps).frozen_stages or 0
    with clock("step timing"):
        if "finetune" in off:
            step, source, _ = _step_seconds(backbone_model, plan, dev, 0, cache_dir, retime=True)
        partial = (_step_seconds(backbone_model, plan, dev, frozen, cache_dir, retime="finetune" in off)[0]
                   if frozen else None)
        extract_batch = _step_seconds(backbone_model, plan, dev, 0, cache_dir, retime="probe" in off, forward=True)[0]
    val_images = p.val_images or max(1, p.images_total // 5)
    sample = [s.path for s in scan.samples[:: max(1, len(scan.samples) // 16)][:16]]
    with clock("forecast"):
        tc = backbone_model.transform_config.with_input_size(plan.input_size)
        decode = decode_seconds(sample, tc.eval_transform(), min_side=tc.resize_size)
        extract_rate = 1.0 / extraction_seconds_per_image(extract_batch / extraction_batch_size(dev), decode, dev)
        cached = _cached_share(backbone_model, plan.input_size, scan, cache_dir)
    if cached:
        source += f"; {cached:.0%} of the images' features already cached at {plan.input_size} px"
    fixed = (f"; +{overhead:.1f} s per run for scanning, the model and its report files ("
             + (f"median of {overhead_runs} finished run(s) here)" if overhead_runs else "the reference machine's figure)"))
    factors, sources = {}, {}
    for k, (f, n) in corrections.items():
        if k in off:
            factors[k], corrected = 1.0, (f"; re-timed: {n} finished {KIND_WORDS[k]} run(s) took x{f:.2f} their "
                                          f"forecast, outside {RETIME_RATIO[0]}-{RETIME_RATIO[1]}")
        elif n:
            factors[k], corrected = f, (f"; x{f:.2f}, the median achieved/forecast time of {n} finished "
                                        f"{KIND_WORDS[k]} run(s) on this machine")
        else:
            factors[k], corrected = 1.0, ""
        sources[k] = source + corrected + fixed
    kwargs = dict(probe_cv=p.probe_cv, val_images=val_images, test_images=p.test_images, train_images=p.train_images,
                  per_class=p.train_per_class_median, similarity=p.similarity.score.value if p.similarity else None,
                  epochs=epochs, step_seconds=step, partial_step_seconds=partial, batch_size=plan.batch_size,
                  decode_seconds_per_image=decode, extract_images_per_second=extract_rate,
                  probe_solve_seconds=_probe_solve_seconds(rec, taps),
                  short_schedule=short_schedule, input_size=plan.input_size,
                  schedule_share=round(min(1.0, epochs / schedule), 4), dataset=dataset, time_factor=factors["finetune"],
                  time_source=sources["finetune"], probe_time_factor=factors["probe"], probe_time_source=sources["probe"],
                  cv_images=p.probe_cv_images, cached_share=cached, overhead_seconds=overhead,
                  image_side=p.sizes.median_side, profile_size=p.input_size)
    with clock("forecast"):
        return forecast(**kwargs), kwargs


def _cached_share(backbone_model, input_size: int, scan, cache_dir, *, probe: int = 64, seed: int = 0) -> float:
    """The share of the dataset's images whose features are already cached at ``input_size``, from a random probe.

    An extraction pass costs nothing for a cached image (a second run, another strategy on the
    same data): the forecast charges only the rest. Hashing a probe of files, not all of them,
    keeps this cheap on large datasets.
    """
    import random

    from advisor.core.io import default_cache_dir
    from advisor.measure.cache import FeatureCache, image_key

    if not scan.samples:
        return 0.0
    cache = FeatureCache.for_backbone(Path(cache_dir or default_cache_dir()), backbone_model.with_input_size(input_size))
    if not cache.dir.is_dir():
        return 0.0
    picks = random.Random(seed).sample(scan.samples, min(probe, len(scan.samples)))
    index = cache.index()
    hits = 0
    for s in picks:
        try:
            hits += image_key(s.path) in index
        except OSError:
            continue
    return hits / len(picks)


def _probe_solve_seconds(rec: Recommendation, taps) -> dict[str, float]:
    """Each probe's solve on the whole training split: the profile's CV seconds per (row x column), scaled.

    The linear probe cross-validates pre_logits; the layer probe every candidate of its sweep
    (each tap, then the top ones concatenated); the final refit on all rows adds about a tenth.
    """
    from advisor.decide.rules.thresholds import sweep_candidates

    unit = rec.profile.probe_cv_seconds_per_unit
    if not unit:
        return {}
    dims = {t.name: t.channels for t in taps}
    per_column = unit * rec.profile.train_images * 1.1
    sweep = sweep_candidates(plan_for_strategy(rec, "layer-probe", taps=taps).taps)
    return {"linear-probe": per_column * dims.get(PRE_LOGITS, 0),
            "layer-probe": per_column * sum(dims.get(t, 0) for cand in sweep for t in cand)}


def save_plan(plan: RunPlan, path: str | os.PathLike) -> Path:
    return write_text_atomic(path, plan.model_dump_json(indent=2))


def load_plan(path: str | os.PathLike) -> RunPlan:
    """Read a plan saved by ``recommend --save-plan``; a missing or bad file is a one-line error."""
    return read_model(path, RunPlan, fix="write a fresh one with advisor recommend DATASET --save-plan FILE")