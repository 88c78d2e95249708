"""Progress display for training: rich bars for epochs and batches, or nothing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class NullProgress:
    """Progress reporter that shows nothing (``--quiet``)."""

    def start_run(self, label: str, epochs: int, batches_per_epoch: int) -> None:
        pass

    def start_epoch(self, epoch: int) -> None:
        pass

    def advance_batch(self, loss: float) -> None:
        pass

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        pass

    def end_run(self) -> None:
        pass

    def start_task(self, label: str, total: int) -> None:
        pass

    def advance_task(self) -> None:
        pass

    def end_task(self) -> None:
        pass


class RichProgress(NullProgress):
    """Two rich progress bars: epochs of the run, and batches of the epoch with rate and ETA."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None

    def start_run(self, label: str, epochs: int, batches_per_epoch: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.epoch_task = self.progress.add_task(f"{label} epochs", total=epochs, rate="", status="")
        self.batch_task = self.progress.add_task("batches", total=batches_per_epoch, rate="", status="")

    def start_epoch(self, epoch: int) -> None:
        if self.progress:
            self.progress.reset(self.batch_task, description=f"epoch {epoch} batches", rate="", status="")

    def advance_batch(self, loss: float) -> None:
        if self.progress:
            self.progress.advance(self.batch_task)
            speed = self.progress.tasks[self.batch_task].speed
            rate = f"{speed:.1f} batch/s" if speed else ""
            self.progress.update(self.batch_task, rate=rate, status=f"loss {loss:.4f}")

    def end_epoch(self, epoch: int, mean_loss: float) -> None:
        if self.progress:
            self.progress.advance(self.epoch_task)
            self.progress.update(self.epoch_task, status=f"last epoch loss {mean_loss:.4f}")

    def end_run(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None

    def start_task(self, label: str, total: int) -> None:
        self.task_progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task_progress.start()
        self.task = self.task_progress.add_task(label, total=total)

    def advance_task(self) -> None:
        self.task_progress.advance(self.task)

    def end_task(self) -> None:
        self.task_progress.stop()
