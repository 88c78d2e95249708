"""Result store: one folder per run under ``<results>/runs/<run_id>/``.

Every file is written to a temporary name in the same folder and then
renamed into place, so a crash never leaves a half-written file that a
report would read. A run counts only when the state in its
``status.json`` is ``finished``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError

RUNNING, FINISHED, FAILED = "running", "finished", "failed"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())

    _atomic_write(path, write)


def write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as parquet atomically."""
    _atomic_write(path, lambda temporary: frame.to_parquet(temporary, index=False))


def write_npz(path: Path, arrays: dict) -> None:
    """Write arrays to an uncompressed .npz file atomically."""
    import numpy as np

    def write(temporary: str) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)

    _atomic_write(path, write)


class DamagedFile(HarnessError):
    """A stored file that exists but cannot be parsed."""


def read_json(path: Path) -> Any:
    """Read a stored JSON file.

    Raises:
        DamagedFile: the file is not valid JSON (edited by hand or cut off).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFile(
            f"{path}: damaged, not valid JSON ({error}). Restore it from a backup, or delete the run folder "
            f"{path.parent} and run it again."
        ) from None


class ResultStore:
    """The run folders below one results directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def ensure_writable(self) -> None:
        """Create the runs folder and prove that a file can be written there.

        Raises:
            HarnessError: the folder cannot be created or written.
        """
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".write-test-"):
                pass
        except OSError as error:
            raise HarnessError(
                f"results directory {self.root} is not writable ({error.strerror}). "
                "Pass --results-dir with a folder you can write to."
            ) from None

    def run_dir(self, run_id: str) -> Path:
        """Return a run's folder.

        Raises:
            HarnessError: ``run_id`` is a path rather than a folder name.
        """
        if not run_id or run_id in (".", "..") or "/" in run_id or "\\" in run_id:
            raise HarnessError(
                f"invalid run id '{run_id}': pass the name of a folder in {self.runs_dir}, such as "
                "digits-sgsl-1234abcd5678-s0, and choose its results folder with --results-dir."
            )
        return self.runs_dir / run_id

    def status(self, run_id: str) -> dict[str, Any] | None:
        """Return a run's status record, or None if the run has none."""
        path = self.run_dir(run_id) / "status.json"
        if not path.exists():
            return None
        try:
            return read_json(path)
        except (OSError, DamagedFile):
            return None

    def is_finished(self, run_id: str) -> bool:
        status = self.status(run_id)
        return bool(status) and status.get("state") == FINISHED and (self.run_dir(run_id) / "metrics.parquet").exists()

    def run_ids(self) -> list[str]:
        """Return the ids of all run folders, sorted."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def clear_outputs(self, run_id: str) -> None:
        """Remove a run's result files before it is run again."""
        for name in ("metrics.parquet", "history.parquet", "error.log"):
            (self.run_dir(run_id) / name).unlink(missing_ok=True)
        embeddings = self.run_dir(run_id) / "embeddings"
        if embeddings.is_dir():
            for file in embeddings.glob("*.npz"):
                file.unlink()
