"""Smoke tests of the benchmark scripts, so that they keep running; they measure nothing here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_script_runs_on_cpu():
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--steps", "1"]
    command += ["--warmup", "1", "--batch", "2", "--image-size", "64", "--backbone", "resnet10t"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "harness / plain throughput" in completed.stdout


def test_train_step_overhead_script_runs():
    command = [sys.executable, str(ROOT / "benchmarks" / "train_step_overhead.py"), "--pairs", "2", "--batch", "2", "--image-size", "32"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "harness / plain step time" in completed.stdout
