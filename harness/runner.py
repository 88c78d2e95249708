"""Planning and execution of runs: one folder per (dataset, loss, config, seed)."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from harness.benchmark_datasets import BENCHMARKS
from harness.config import (
    RunConfig,
    check_overrides,
    load_protocol,
    parse_overrides,
    resolve_config,
    run_id_for,
)
from harness.data import DATASETS, DataLocation, check_batching, check_data_config, checked_dataset, training_split_size
from harness.environment import describe_environment
from harness.errors import ConfigError, HarnessError
from harness.model import build_model, file_sha256
from harness.store import FAILED, FINISHED, RUNNING, ResultStore, read_json, write_json, write_npz, write_parquet
from harness.training import TrainingOutcome, check_train_config, resolve_device, train_and_evaluate
from losses import LOSSES


@dataclass(frozen=True)
class PlannedRun:
    """One run to execute: its config, seed and id."""

    config: RunConfig
    seed: int
    run_id: str
    protocol_path: str
    location: DataLocation = DataLocation()
    assumed: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)


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
        names = ", ".join(f"'{name}'" for name in unknown)
        raise ConfigError(f"--loss: unknown loss {names}; available losses: {', '.join(LOSSES)}.")
    return list(dict.fromkeys(names))


# The largest seed: faiss's k-means for NMI stores its seed in a C int.
MAX_SEED = 2**31 - 1


def check_seed(seed: int) -> int:
    """Return ``seed`` if it is a valid --seed value.

    Raises:
        ConfigError: the seed is negative or larger than MAX_SEED.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"--seed: invalid value {seed}; seeds are integers from 0 to {MAX_SEED} (faiss's k-means takes a C int)."
        )
    return seed


def seed_list(seeds: int | None, seed: int | None) -> list[int]:
    """Turn ``--seeds N`` or ``--seed S`` into the list of seeds to run."""
    if seeds is not None and seed is not None:
        raise ConfigError("--seeds and --seed cannot be used together: --seeds N runs seeds 0..N-1, --seed S one seed.")
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds: invalid value {seeds}; it must be at least 1 (seeds 0..N-1 are run).")
        return list(range(seeds))
    if seed is not None:
        return [check_seed(seed)]
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
        check_train_config(config.train)
        check_selection(config)
        check_batching(config.data, *training_split_size(config.data, location))
        if config.model not in checked_models:
            # Building the model once here turns a bad backbone, stride or
            # weights file into an error before any run starts.
            build_model(config.model)
            checked_models.add(config.model)
        for seed in seeds:
            applied = {
                f"{section}.{key}": value
                for (section, key), value in overrides.items()
                if section != "loss" or key == "lr_multiplier" or key in config.loss.kwargs()
            }
            planned.append(
                PlannedRun(config, seed, run_id_for(config, seed), str(loaded.path), location, loaded.assumed, applied)
            )
    return planned


def check_selection(config: RunConfig) -> None:
    """Reject a primary model selection that the run could not produce."""
    has_validation = config.data.dataset != "digits" and config.data.val_fraction > 0
    if config.eval.selection == "best-val" and not has_validation:
        raise ConfigError(
            "eval.selection: 'best-val' needs a validation split; set data.val_fraction above 0 "
            "(photo datasets only; digits has no validation split) or choose 'last'."
        )
    if config.eval.selection != "last" and config.eval.every_epochs == 0:
        raise ConfigError(
            f"eval.selection: '{config.eval.selection}' needs per-epoch evaluation; set eval.every_epochs to 1 or more."
        )


def _metrics_frame(planned: PlannedRun, outcome: TrainingOutcome) -> pd.DataFrame:
    config = planned.config
    rows = []
    for selection, selected in outcome.selections.items():
        for metric, value in selected.test.values.items():
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
                    "selection": selection,
                    "epoch": selected.epoch,
                    "primary": selection == config.eval.selection,
                    "optimistic": selection == "best-test",
                    "metric": metric,
                    "value": float(value),
                    "excluded_queries": selected.test.excluded_queries,
                    "num_queries": selected.test.num_queries,
                    "k_clipped": k is not None and k in selected.test.clipped_k,
                    "search": selected.test.search,
                }
            )
    return pd.DataFrame(rows)


def _run_warnings(config: RunConfig) -> list[str]:
    """Return warnings that follow from the config alone."""
    warnings = []
    if config.data.dataset in BENCHMARKS and not config.model.pretrained:
        warnings.append(
            "the backbone started from random initialization (no model.pretrained weights), "
            "so the numbers are not comparable with published ones"
        )
    return warnings


def execute_run(planned: PlannedRun, store: ResultStore, progress=None, resume: bool = False) -> RunSummary:
    """Train, evaluate and store one run; a failure is recorded, not raised.

    Each epoch ends with a checkpoint in the run folder; ``resume`` continues
    from it. The checkpoint is removed when the run finishes.

    Raises:
        HarnessError: a user error that would fail every run in the same way.
        KeyboardInterrupt: after recording the run as failed.
    """
    run_dir = store.run_dir(planned.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "checkpoint.pt"
    if not resume:
        store.clear_outputs(planned.run_id)
        checkpoint.unlink(missing_ok=True)
    config = planned.config
    device = str(resolve_device(config.train.device))
    write_json(
        run_dir / "config.json",
        {
            "run_id": planned.run_id,
            "seed": planned.seed,
            "config_hash": config.config_hash,
            "protocol_path": planned.protocol_path,
            "assumed": planned.assumed,
            "overrides": planned.overrides,
            "config": config.to_dict(),
        },
    )
    environment = describe_environment(device)
    if config.model.pretrained:
        environment["pretrained"] = {"path": config.model.pretrained, "sha256": file_sha256(config.model.pretrained)}
    write_json(run_dir / "env.json", environment)
    previous = store.status(planned.run_id) or {}
    status = {"run_id": planned.run_id, "state": RUNNING, "started_at": _now(), "device": device}
    if resume:
        status["resumed_from"] = previous.get("reason", "an interrupted run")
    write_json(run_dir / "status.json", status)

    started = time.perf_counter()
    summary = RunSummary(planned.run_id, config.loss.name, planned.seed, FAILED)
    try:
        outcome = train_and_evaluate(config, planned.seed, progress, planned.location, checkpoint, resume)
        warnings = _run_warnings(config) + outcome.warnings
        primary = outcome.selections.get(config.eval.selection)
        if primary is None:
            warnings.append(
                f"eval.selection '{config.eval.selection}' has no evaluated epoch (no validation split, or "
                "eval.every_epochs = 0); the stored embeddings are the last epoch's"
            )
            primary = outcome.selections["last"]
        for split, arrays in primary.arrays.items():
            write_npz(run_dir / "embeddings" / f"{split}.npz", arrays)
        write_parquet(run_dir / "history.parquet", pd.DataFrame(outcome.history))
        write_parquet(run_dir / "metrics.parquet", _metrics_frame(planned, outcome))
        status.update(
            state=FINISHED,
            device=outcome.device,
            data=outcome.data_summary,
            warnings=warnings,
            dataset_manifest=outcome.manifest,
            selections={name: selected.epoch for name, selected in outcome.selections.items()},
        )
        summary.state = FINISHED
        summary.metrics = dict(outcome.test.values)
        summary.warnings = warnings
        checkpoint.unlink(missing_ok=True)
    except KeyboardInterrupt as interrupt:
        cause = f"terminated by {interrupt.args[0]}" if interrupt.args else "interrupted by the user (Ctrl-C)"
        status.update(state=FAILED, reason=f"{cause}; harness run --resume {planned.run_id} continues it")
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


def resume_run(run_id: str, store: ResultStore, location: DataLocation) -> PlannedRun:
    """Rebuild the planned run of an interrupted run folder from its config.json.

    Raises:
        HarnessError: the run does not exist, already finished, or has no checkpoint.
    """
    run_dir = store.run_dir(run_id)
    if not (run_dir / "config.json").exists():
        known = ", ".join(store.run_ids()[:5]) or "none"
        raise HarnessError(f"--resume: no run '{run_id}' in {store.runs_dir} (runs there: {known}).")
    if store.is_finished(run_id):
        raise HarnessError(f"--resume: run '{run_id}' already finished; use --force with the original options to rerun it.")
    if not (run_dir / "checkpoint.pt").exists():
        raise HarnessError(
            f"--resume: run '{run_id}' has no checkpoint (it stopped before its first epoch ended); "
            "start it again without --resume."
        )
    stored = read_json(run_dir / "config.json")
    config = RunConfig.from_dict(stored["config"])
    if config.config_hash != stored["config_hash"]:
        raise HarnessError(
            f"--resume: the config of run '{run_id}' no longer hashes to {stored['config_hash'][:12]} with this "
            "version of the harness, so it cannot be continued exactly; start it again."
        )
    return PlannedRun(
        config,
        int(stored["seed"]),
        run_id,
        stored["protocol_path"],
        location,
        stored.get("assumed", {}),
        stored.get("overrides", {}),
    )

