"""Planning and execution of runs: one folder per (dataset, loss, config, seed)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.config import (
    RunConfig,
    check_overrides,
    load_protocol,
    parse_overrides,
    resolve_config,
    run_id_for,
)
from harness.data import DATASETS, DataLocation, check_data_config, checked_dataset
from harness.benchmark_datasets import BENCHMARKS
from harness.environment import describe_environment
from harness.errors import ConfigError, HarnessError
from harness.model import build_model
from harness.store import FAILED, FINISHED, RUNNING, ResultStore, write_json, write_parquet
from harness.training import TrainingOutcome, resolve_device, train_and_evaluate
from losses import LOSSES


@dataclass(frozen=True)
class PlannedRun:
    """One run to execute: its config, seed and id."""

    config: RunConfig
    seed: int
    run_id: str
    protocol_path: str
    location: DataLocation = DataLocation()


@dataclass
class RunSummary:
    """Outcome of one planned run."""

    run_id: str
    loss: str
    seed: int
    state: str
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_loss_names(text: str) -> list[str]:
    """Split a comma-separated loss list and check every name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--loss: no loss name given; available losses: {', '.join(LOSSES)}.")
    unknown = [name for name in names if name not in LOSSES]
    if unknown:
        raise ConfigError(f"--loss: unknown loss {', '.join(unknown)}; available losses: {', '.join(LOSSES)}.")
    return list(dict.fromkeys(names))


def seed_list(seeds: int | None, seed: int | None) -> list[int]:
    """Turn ``--seeds N`` or ``--seed S`` into the list of seeds to run."""
    if seeds is not None and seed is not None:
        raise ConfigError("--seeds and --seed cannot be used together: --seeds N runs seeds 0..N-1, --seed S one seed.")
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: invalid value {seeds}; it must be at least 1 (seeds 0..N-1 are run).")
        return list(range(seeds))
    if seed is not None:
        if seed < 0:
            raise ConfigError(f"--seed: invalid value {seed}; seeds are non-negative integers.")
        return [seed]
    return [0]


def plan_runs(
    loss_names: list[str],
    dataset: str,
    seeds: list[int],
    protocol: str | None,
    set_items: list[str],
    location: DataLocation | None = None,
) -> list[PlannedRun]:
    """Check every input and return the runs to execute, before any training starts.

    For a photo dataset this parses its lists and checks that every listed
    file exists inside the dataset folder, once per process.
    """
    location = location or DataLocation()
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset '{dataset}'; available datasets: {', '.join(DATASETS)}.")
    loaded = load_protocol(protocol, dataset)
    overrides = parse_overrides(set_items)
    check_overrides(overrides, loss_names)
    if dataset in BENCHMARKS:
        checked_dataset(dataset, location.data_root)

    planned = []
    checked_models = set()
    for loss_name in loss_names:
        config = resolve_config(loaded, dataset, loss_name, overrides)
        resolve_device(config.train.device)
        check_data_config(config.data)
        if config.model not in checked_models:
            # Building the model once here turns a bad backbone, stride or
            # weights file into an error before any run starts.
            build_model(config.model)
            checked_models.add(config.model)
        for seed in seeds:
            planned.append(PlannedRun(config, seed, run_id_for(config, seed), str(loaded.path), location))
    return planned


def _metrics_frame(planned: PlannedRun, outcome: TrainingOutcome) -> pd.DataFrame:
    config = planned.config
    rows = []
    for metric, value in outcome.test.values.items():
        k = int(metric.split("@")[1]) if metric.startswith("recall@") else None
        rows.append(
            {
                "run_id": planned.run_id,
                "loss": config.loss.name,
                "dataset": config.data.dataset,
                "protocol": config.protocol,
                "config_hash": config.config_hash,
                "seed": planned.seed,
                "split": "test",
                "selection": "last",
                "metric": metric,
                "value": float(value),
                "excluded_queries": outcome.test.excluded_queries,
                "num_queries": outcome.test.num_queries,
                "k_clipped": k is not None and k in outcome.test.clipped_k,
            }
        )
    return pd.DataFrame(rows)


def execute_run(planned: PlannedRun, store: ResultStore, progress=None) -> RunSummary:
    """Train, evaluate and store one run; a failure is recorded, not raised.

    Raises:
        HarnessError: a user error that would fail every run in the same way.
        KeyboardInterrupt: after recording the run as failed.
    """
    run_dir = store.run_dir(planned.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    store.clear_outputs(planned.run_id)
    config = planned.config
    device = str(resolve_device(config.train.device))
    write_json(
        run_dir / "config.json",
        {
            "run_id": planned.run_id,
            "seed": planned.seed,
            "config_hash": config.config_hash,
            "protocol_path": planned.protocol_path,
            "config": config.to_dict(),
        },
    )
    write_json(run_dir / "env.json", describe_environment(device))
    status = {"run_id": planned.run_id, "state": RUNNING, "started_at": _now(), "device": device}
    write_json(run_dir / "status.json", status)

    started = time.perf_counter()
    summary = RunSummary(planned.run_id, config.loss.name, planned.seed, FAILED)
    try:
        outcome = train_and_evaluate(config, planned.seed, progress, planned.location)
        write_parquet(run_dir / "history.parquet", pd.DataFrame(outcome.history))
        write_parquet(run_dir / "metrics.parquet", _metrics_frame(planned, outcome))
        status.update(
            state=FINISHED,
            device=outcome.device,
            data=outcome.data_summary,
            warnings=outcome.warnings,
            dataset_manifest=outcome.manifest,
        )
        summary.state = FINISHED
        summary.metrics = dict(outcome.test.values)
        summary.warnings = list(outcome.warnings)
    except KeyboardInterrupt:
        status.update(state=FAILED, reason="interrupted by the user (KeyboardInterrupt)")
        raise
    except HarnessError as error:
        status.update(state=FAILED, reason=str(error))
        raise
    except Exception as error:  # any training failure is recorded with its traceback
        reason = f"{type(error).__name__}: {error}"
        status.update(state=FAILED, reason=reason)
        (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        summary.reason = reason
    finally:
        elapsed = time.perf_counter() - started
        status.update(ended_at=_now(), wall_seconds=round(elapsed, 3))
        write_json(run_dir / "status.json", status)
        summary.seconds = elapsed
    return summary


def results_dir_default() -> Path:
    return Path("results")
