"""Timing on this machine: training steps, decoding, the load, and what finished runs say about the forecasts.

The forecaster (advisor/decide/forecast.py) turns these measurements into wall-time forecasts; this
module only measures and reads them. It imports advisor.core at module level, nothing else.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch


# Time the run's own batch when one step of it is forecast to take at most this long. A small
# batch scaled linearly over-counts the per-step overhead where steps are short (measured on 2 CPU
# cores: batch 8 scaled to 32 was 1.8x the real step at 64 px, 1.5x at 96 px, 1.0x at 128 px),
# and where steps are long the real batch costs seconds to time while the scaled figure is close.
FULL_BATCH_TIMING_SECONDS = 1.0


def finetune_step_seconds(backbone, *, input_size: int, batch_size: int, device: torch.device | str,
                          steps: int = 3, probe_batch: int = 8, frozen_stages: int = 0,
                          full_batch_under: float = FULL_BATCH_TIMING_SECONDS) -> float:
    """Seconds of one optimiser step at ``batch_size``: the median of a few timed steps.

    First a small batch (``probe_batch``), scaled linearly; where that forecasts a step of at most
    ``full_batch_under`` seconds, the run's own batch is timed and its figure returned instead.
    The median, not the minimum or the mean: one step slowed by another process neither sets nor
    skews it. ``frozen_stages`` (a partial fine-tune) freezes the stem and that many stages for
    the timing, so autograd skips their backward pass as the run will. The backbone comes back as
    it went in: weights, ``requires_grad`` flags, BatchNorm running statistics (train-mode
    forward passes on noise would otherwise move them) and memory layout.
    """
    from advisor.backbones.backbone import memory_format_of

    layout = memory_format_of(backbone)
    net = backbone.to(device).train()
    saved = {n: p.requires_grad for n, p in net.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in net.named_buffers()}
    if frozen_stages:
        for n, p in backbone.model.named_parameters():
            if backbone.stage_of(n.rsplit(".", 1)[0])[1] <= frozen_stages:
                p.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad] or list(net.parameters())
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: the timing must not change the weights
    net = net.to(memory_format=torch.channels_last)
    try:
        seconds = _at_batch(lambda b: _median_step(net, opt, b, input_size, device, steps), batch_size, probe_batch,
                            full_batch_under)
    finally:
        opt.zero_grad(set_to_none=True)
        for n, p in net.named_parameters():
            p.requires_grad_(saved[n])
        with torch.no_grad():
            for n, b in net.named_buffers():
                b.copy_(buffers[n])
        net.eval().to(memory_format=layout)
    return seconds


def _at_batch(median_at, batch_size: int, probe_batch: int, full_batch_under: float) -> float:
    """Seconds at ``batch_size`` from ``median_at(batch)``: a small batch scaled linearly, or, where that says
    at most ``full_batch_under`` seconds, the batch itself timed (scaling over-counts short passes' overhead)."""
    small = min(probe_batch, batch_size)
    seconds = median_at(small) * batch_size / small
    if small < batch_size and seconds <= full_batch_under:
        seconds = median_at(batch_size)
    return seconds


def _median_step(net, opt, batch: int, input_size: int, device, steps: int) -> float:
    """Median seconds of ``steps`` optimiser steps after one warm-up, in the run's precision: bfloat16
    autocast on CUDA as the training loop uses (strategies/loop_data.py), float32 elsewhere."""
    x = torch.randn(batch, 3, input_size, input_size, device=device).contiguous(memory_format=torch.channels_last)
    cuda = torch.device(device).type == "cuda"
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=cuda):
            out = net(x)
        out.float().mean().backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first step pays one-off allocation and kernel selection
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward_seconds(backbone, *, input_size: int, batch_size: int, device: torch.device | str, steps: int = 3,
                    probe_batch: int = 8, full_batch_under: float = FULL_BATCH_TIMING_SECONDS) -> float:
    """Seconds of one inference pass over ``batch_size`` images, as feature extraction runs it (every tap,
    channels_last, bfloat16 autocast on CUDA): the median of a few passes, a small batch scaled
    where one pass would take longer than ``full_batch_under`` (as :func:`finetune_step_seconds`).

    A forward pass is not a fixed share of a training step: on 2 CPU cores (Lite0, batch 32) it
    was 0.39 of the step at 224 px and 0.24 at 128 px, so extraction is timed, not derived.
    """
    from advisor.backbones.backbone import memory_format_of

    layout = memory_format_of(backbone)
    net = backbone.to(device).eval().to(memory_format=torch.channels_last)
    dev = torch.device(device)
    taps = [t.name for t in backbone.taps]

    def median_pass(batch: int) -> float:
        x = torch.randn(batch, 3, input_size, input_size, device=dev).contiguous(memory_format=torch.channels_last)
        times = []
        cuda = dev.type == "cuda"
        with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            for i in range(steps + 1):
                t0 = time.perf_counter()
                net.forward_taps(x, taps)
                if cuda:
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
        return statistics.median(times)

    try:
        seconds = _at_batch(median_pass, batch_size, probe_batch, full_batch_under)
    finally:
        net.to(memory_format=layout)  # the caller's layout comes back, as after extraction
    return seconds


def extraction_seconds_per_image(forward: float, decode: float, device) -> float:
    """Wall seconds of one image's cold extraction from its timed forward share and its decoding.

    On a GPU the loader workers decode on the CPU while the device runs the forward: the slower of
    the two sets the pace. On the CPU the workers share the cores the forward's threads use, so the
    two add (benchmarks/extract_throughput.py on 2 cores, hymenoptera: at 128 px forward 7.2 ms and
    decoding 2.5-2.9 ms an image, cold extraction 10.2 ms; at 224 px decoding is 1.2 ms, a few
    per cent of the forward, where either reading fits).
    """
    return max(forward, decode) if torch.device(device).type == "cuda" else forward + decode


TIME_KINDS = ("probe", "finetune")


def time_kind(strategy: str) -> str:
    """Which timing a strategy's forecast rests on: an extraction pass ("probe") or training steps ("finetune")."""
    return "probe" if strategy.endswith("-probe") else "finetune"


def time_correction(outcomes: Sequence[dict], *, device: str, last: int = 5, since: str | None = None,
                    kind: str | None = None) -> tuple[float, int]:
    """(median achieved/forecast wall-time ratio, runs it rests on) over this machine's latest finished runs on ``device``.

    Each finished run feeds back: a timing taken under load, or a cost the step timing misses, is
    corrected by what runs actually took. ``since`` (an ISO time) keeps the runs recorded after
    the step timing in use; ``kind`` (:func:`time_kind`) only the runs whose forecast rests on the
    same timing, so a probe that took twice its few seconds does not double a fine-tune's forecast
    (on the track record when this was chosen, each run corrected by the 5 before it of its own
    kind: 65 % within +-30 % of the forecast, against 58 % corrected by any 5; benchmarks/policy.py
    prints today's share). Ratios outside 1/20-20 are dropped as broken records.
    """
    ratios = [o["seconds"] / o["forecast_seconds"] for o in outcomes
              if o.get("device") == device and finite_number(o.get("seconds")) and finite_number(o.get("forecast_seconds"))
              and o["forecast_seconds"] > 0 and 0.05 <= o["seconds"] / o["forecast_seconds"] <= 20
              and (since is None or str(o.get("time", "")) >= since)
              and (kind is None or time_kind(str(o.get("strategy", ""))) == kind)]
    ratios = ratios[-last:]
    return (statistics.median(ratios), len(ratios)) if ratios else (1.0, 0)


# Seconds a run spends outside its strategy's own work: scanning the folder, building the
# backbone, saving the model and writing report.md/report.html (figures included). Measured on the
# reference machine (2 idle CPU cores, the shipped example, a linear probe with its features cached,
# each in a fresh process as the CLI runs it: run_plan's wall time minus its fit time, 1.23, 1.06 and
# 1.05 s on 2026-12-06, most of it report.html's figures and importing matplotlib for them; the
# full fine-tune of the demo 1.36 s; 0.4 s before, measured in a process that had imported
# matplotlib already); a machine's own finished runs replace it (``run_overhead``).
DEFAULT_RUN_OVERHEAD_SECONDS = 1.1


def run_overhead(outcomes: Sequence[dict], *, device: str, last: int = 5) -> tuple[float, int]:
    """(median seconds a finished run spent outside its strategy's fit, runs it rests on) on ``device``;
    the reference machine's figure when no finished run recorded both times."""
    extra = [o["seconds"] - o["fit_seconds"] for o in outcomes
             if o.get("device") == device and finite_number(o.get("seconds")) and finite_number(o.get("fit_seconds"))
             and 0 <= o["seconds"] - o["fit_seconds"] <= 3600]
    extra = extra[-last:]
    return (statistics.median(extra), len(extra)) if extra else (DEFAULT_RUN_OVERHEAD_SECONDS, 0)


def decode_seconds(paths: Sequence[str], transform, *, min_side: int | None = None) -> float:
    """Seconds to decode and transform one image, timed on ``paths`` (``min_side``: as the extraction decodes,
    :func:`advisor.data.imagefile.load_image`)."""
    from advisor.data.imagefile import load_image

    t0 = time.perf_counter()
    for p in paths:
        transform(load_image(p, min_side=min_side))
    return (time.perf_counter() - t0) / max(1, len(paths))


def finite_number(v) -> bool:
    """A real, finite number (not a bool, NaN or infinity): what a number read back from a file must be."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
