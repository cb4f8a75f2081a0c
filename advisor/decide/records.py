"""The track record: the shipped one (``advisor/reference/track_record.json``) and this machine's runs.

Every finished run appends one line to ``track_record.jsonl`` in the cache folder (its forecast
against what it achieved); the forecaster (``advisor.decide.forecast``) learns from both, and
``advisor calibrate`` scores them. The local file is read back like input: each line validated
(:class:`LocalOutcome`), a bad one skipped and counted. Imports advisor.core only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from advisor.core.io import append_text
from advisor.core.machine import machine_name

RECORD_INPUT_SIZE = 224  # a record that does not say what size it ran at: the backbone's own


LOCAL_RECORD = "track_record.jsonl"  # in the cache folder: every run's forecast against what it achieved


def shipped_track_record() -> list[dict]:
    try:
        data = json.loads(resources.files("advisor").joinpath("reference/track_record.json").read_text())
    except (FileNotFoundError, OSError, json.JSONDecodeError):
        return []
    prov = data.get("provenance", {}) if isinstance(data, dict) else {}
    rows = data.get("datasets", []) if isinstance(data, dict) else []
    # Version-1 records carried their settings once, in the provenance.
    defaults = {k: prov[k] for k in ("input_size", "epochs_cap") if prov.get(k) is not None}
    return [{**defaults, **r} for r in rows if isinstance(r, dict) and "dataset" in r and "accuracy" in r]


def local_record_path() -> Path:
    from advisor.core.io import default_cache_dir

    return default_cache_dir() / LOCAL_RECORD


class LocalOutcome(BaseModel):
    """One line of the local track record, read back like input: every number finite and in its range."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    dataset: str = Field(min_length=1, max_length=4096)
    strategy: Literal["linear-probe", "layer-probe", "partial-finetune", "full-finetune"]
    train_per_class_median: float = Field(ge=0, le=1e7)
    achieved: float = Field(ge=0, le=1)
    similarity: float | None = Field(None, ge=0, le=1)
    forecast: float | None = Field(None, ge=0, le=1)
    forecast_low: float | None = Field(None, ge=0, le=1)
    forecast_high: float | None = Field(None, ge=0, le=1)
    cv: float | None = Field(None, ge=0, le=1)
    forecast_seconds: float | None = Field(None, ge=0, le=1e8)
    seconds: float | None = Field(None, ge=0, le=1e8)  # the whole run's wall time
    fit_seconds: float | None = Field(None, ge=0, le=1e8)  # its strategy's share (older lines lack it)
    input_size: int | None = Field(None, ge=16, le=4096)
    schedule_share: float | None = Field(None, gt=0, le=1e3)
    sample_cv: dict[str, float] | None = None
    # what the probe-gap model reads (older lines lack them): the sample CV's and the training split's
    # sizes, the images' median shorter side and the size the profile ran at
    cv_images: int | None = Field(None, ge=1, le=10**8)
    train_images: int | None = Field(None, ge=1, le=10**8)
    image_side: float | None = Field(None, gt=0, le=1e6)
    profile_size: int | None = Field(None, ge=16, le=4096)
    device: str | None = Field(None, max_length=200)
    time: str | None = Field(None, max_length=40)

    @field_validator("sample_cv")
    @classmethod
    def _cv_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and not all(0 <= x <= 1 for x in v.values()):
            raise ValueError("sample_cv accuracies must be between 0 and 1")
        return v


LOCAL_RECORD_MAX_BYTES = 256 << 20


def local_outcomes(path: Path | None = None, *, skipped: list[int] | None = None) -> list[dict]:
    """The runs recorded on this machine (one JSON line each), each line validated; a bad line is skipped
    (its number appended to ``skipped``), never fatal: the record is advice's evidence, not a run's input."""
    from advisor.core.io import read_bytes_checked

    path = local_record_path() if path is None else path
    rows = []
    try:
        lines = read_bytes_checked(path, max_bytes=LOCAL_RECORD_MAX_BYTES).decode("utf-8", "replace").splitlines()
    except (OSError, ValueError):
        return []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(LocalOutcome.model_validate_json(line).model_dump(exclude_none=True))
        except ValueError:
            if line.strip() and skipped is not None:
                skipped.append(number)
    return rows


def local_datasets(outcomes: Sequence[dict]) -> list[dict]:
    """Local runs grouped per (dataset, input size) into track-record entries (the latest accuracy of each strategy)."""
    by: dict[tuple, dict] = {}
    for o in outcomes:
        size = o.get("input_size") or RECORD_INPUT_SIZE
        entry = by.setdefault((o["dataset"], size), {
            "dataset": f"{Path(o['dataset']).name} (local)", "path": o["dataset"], "accuracy": {},
            "train_per_class_median": o["train_per_class_median"], "similarity": o.get("similarity"),
            "input_size": size, "schedule_share": o.get("schedule_share"),
            **{k: o[k] for k in ("cv_images", "train_images", "image_side", "profile_size")
               if o.get(k) is not None}})
        entry["accuracy"][o["strategy"]] = o["achieved"]
        if o.get("cv") is not None:
            entry.setdefault("probe_cv", {})[o["strategy"]] = o["cv"]
        if o.get("sample_cv"):
            entry["sample_cv"] = o["sample_cv"]
    return list(by.values())


def load_track_record(*, local: bool = True) -> list[dict]:
    """The shipped track record, plus this machine's runs (marked '(local)') when ``local``."""
    return shipped_track_record() + (local_datasets(local_outcomes()) if local else [])


def group_of(record: dict) -> str:
    """Which dataset a record belongs to: a dataset's subsamples, seeds, sizes and local runs are one group."""
    return str(record.get("group") or record["dataset"]).removesuffix(" (local)")


def record_outcome(rec, strategy: str, achieved: float, seconds: float, path: Path | None = None,
                   device=None, fit_seconds: float | None = None) -> dict | None:
    """Append a finished run's forecast and outcome to the local track record (needs a forecast).

    ``seconds``: the run's whole wall time (what its forecast forecasts); ``fit_seconds``: the
    strategy's own share of it (the rest is the run's fixed cost). ``device`` is the one the run
    used: later forecasts on that device are corrected by it.
    """
    f = next((f for f in (rec.forecast.strategies if rec is not None and rec.forecast else []) if f.strategy == strategy), None)
    if f is None:
        return None
    p = rec.profile
    row = {"dataset": p.dataset, "strategy": strategy, "train_per_class_median": p.train_per_class_median,
           "similarity": p.similarity.score.value if p.similarity else None, "forecast": f.accuracy,
           "forecast_low": f.low, "forecast_high": f.high, "achieved": round(achieved, 4), "cv": f.cv,
           "forecast_seconds": f.seconds, "seconds": round(seconds, 2),
           **({"fit_seconds": round(fit_seconds, 2)} if fit_seconds is not None else {}), "input_size": rec.plan.input_size,
           "schedule_share": rec.forecast.schedule_share, "sample_cv": dict(p.probe_cv) or None,
           "cv_images": p.probe_cv_images, "train_images": p.train_images or None, "image_side": p.sizes.median_side,
           "profile_size": p.input_size,
           "device": machine_name(device), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = local_record_path() if path is None else path
    append_text(path, json.dumps(row) + "\n")  # one line per run; parallel runs' lines do not interleave
    return row


# --------------------------------------------------------------------------- accuracy models
