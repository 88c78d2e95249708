"""Evaluation at the SOP test-split shape: our chunked exact pass against pytorch-metric-learning.

Usage:
    .venv/bin/python benchmarks/evaluation_scale.py [--items 60502] [--classes 11316] [--dims 512 2048]

Random clustered embeddings with the SOP test shape (60,502 items of 11,316
classes) are written to a temporary file. Each measurement runs in its own
child process, which loads the file, times only the evaluation call, and
reports its peak resident memory (ru_maxrss), so neither side pays for the
other's memory. Ours computes Recall@1, 10, 100 and 1000, MAP@R and
R-precision (no NMI); pytorch-metric-learning's AccuracyCalculator computes
precision_at_1, MAP@R and R-precision with k="max_bin_count". The script
measures and never fails on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
embeddings = np.load({embeddings!r})
labels = np.load({labels!r})
side = {side!r}
started = time.perf_counter()
if side == "ours":
    from harness.evaluation import evaluate_retrieval
    values = evaluate_retrieval(embeddings, labels, [1, 10, 100, 1000], compute_nmi=False).values
else:
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from harness.evaluation import l2_normalize
    calculator = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count")
    values = calculator.get_accuracy(torch.from_numpy(l2_normalize(embeddings)), torch.from_numpy(labels))
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({{"seconds": seconds, "peak_gib": peak, "values": {{k: float(v) for k, v in values.items()}}}}))
"""


def measure(side: str, embeddings: Path, labels: Path) -> dict:
    code = CHILD.format(root=str(ROOT), embeddings=str(embeddings), labels=str(labels), side=side)
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{side} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=60502)
    parser.add_argument("--classes", type=int, default=11316)
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--skip-library-at", type=int, nargs="*", default=[2048], help="dimensions where only ours runs")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.items} items of {args.classes} classes")
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(args.items) % args.classes).astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        label_path = Path(folder) / "labels.npy"
        np.save(label_path, labels)
        for dim in args.dims:
            centres = rng.normal(size=(args.classes, dim)).astype(np.float32)
            embeddings = centres[labels] + 1.0 * rng.normal(size=(args.items, dim)).astype(np.float32)
            embedding_path = Path(folder) / f"embeddings_{dim}.npy"
            np.save(embedding_path, embeddings.astype(np.float32))
            del embeddings, centres
            ours = measure("ours", embedding_path, label_path)
            rows.append((dim, "ours", ours))
            if dim not in args.skip_library_at:
                library = measure("library", embedding_path, label_path)
                rows.append((dim, "pytorch-metric-learning", library))
                for ours_name, library_name in (
                    ("recall@1", "precision_at_1"),
                    ("map@r", "mean_average_precision_at_r"),
                    ("r_precision", "r_precision"),
                ):
                    difference = abs(ours["values"][ours_name] - library["values"][library_name])
                    print(f"d={dim}: |{ours_name} - {library_name}| = {difference:.2e}")

    print()
    print(f"{'dim':>5} {'side':26} {'seconds':>8} {'peak GiB':>9}")
    for dim, side, result in rows:
        print(f"{dim:5d} {side:26} {result['seconds']:8.1f} {result['peak_gib']:9.2f}")
    by_dim = {}
    for dim, side, result in rows:
        by_dim.setdefault(dim, {})[side] = result
    for dim, sides in by_dim.items():
        if "pytorch-metric-learning" in sides:
            ratio = sides["ours"]["seconds"] / sides["pytorch-metric-learning"]["seconds"]
            print(f"d={dim}: ours / library time = {ratio:.2f} (target at most 1.2)")


if __name__ == "__main__":
    main()
