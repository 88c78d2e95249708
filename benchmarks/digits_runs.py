"""Time the digits jobs end to end: SGSL over 5 seeds, the repeat that skips them, and the main job.

Usage:
    .venv/bin/python benchmarks/digits_runs.py [--main-job]

Each job runs as a child process (`harness run`) in a fresh temporary
results folder, so the times include interpreter start-up and imports, as a
user sees them. The script prints the wall times next to their targets and
never fails on a missed target: benchmarks measure, tests gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HARNESS = str(Path(sys.executable).with_name("harness"))
RUN_FILES = ("config.json", "status.json", "metrics.parquet", "history.parquet", "env.json")


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {completed.returncode}:\n{completed.stderr}")
    return elapsed, completed.stderr + completed.stdout


def count_complete_runs(results: Path) -> int:
    folders = [p for p in (results / "runs").iterdir() if p.is_dir()]
    return sum(all((folder / name).is_file() for name in RUN_FILES) for folder in folders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--main-job", action="store_true", help="also time the four-loss, five-seed main job and its report")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        command = [HARNESS, "run", "--loss", "sgsl", "--dataset", "digits", "--seeds", "5", "--quiet"]
        seconds, _ = timed(command, work)
        rows.append(("harness run --loss sgsl --dataset digits --seeds 5", seconds, 180.0))
        print(f"complete run folders: {count_complete_runs(work / 'results')} of 5")

        seconds, output = timed(command, work)
        rows.append(("the same command again (all 5 skipped)", seconds, None))
        print(f"runs reported as skipped on the repeat: {output.count('already finished, skipped')} of 5")

    if args.main_job:
        with tempfile.TemporaryDirectory() as folder:
            work = Path(folder)
            losses = "sgsl,softmax,l2softmax,normsoftmax"
            run_seconds, _ = timed([HARNESS, "run", "--loss", losses, "--dataset", "digits", "--seeds", "5", "--quiet"], work)
            report_seconds, _ = timed([HARNESS, "report"], work)
            rows.append(("main job: 4 losses x 5 seeds, then harness report", run_seconds + report_seconds, 360.0))

    print()
    print(f"{'job':58} {'seconds':>8} {'target':>8}  verdict")
    for name, seconds, target in rows:
        verdict, target_text = "", ""
        if target is not None:
            verdict = "within target" if seconds <= target else "OVER TARGET"
            target_text = f"{target:.0f}"
        print(f"{name:58} {seconds:8.1f} {target_text:>8}  {verdict}")


if __name__ == "__main__":
    main()
