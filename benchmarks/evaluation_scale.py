"""Evaluation at the SOP test-split shape: our chunked exact pass against pytorch-metric-learning.

Usage:
    .venv/bin/python benchmarks/evaluation_scale.py [--items 60502] [--classes 11316] [--dims 512 2048]
    [--search cpu gpu]

Random clustered embeddings with the SOP test shape (60,502 items of 11,316
classes) are written to a temporary file: class centres drawn from a
standard normal, plus noise of standard deviation --spread (default 2.2,
which gives a Recall@1 near 0.8, close to published SOP results; at 1.0
every metric is 1). Each measurement runs in its own
child process, which loads the file, times only the evaluation call, and
reports its peak resident memory (ru_maxrss), so neither side pays for the
other's memory. Ours computes Recall@1, 10, 100 and 1000, MAP@R and
R-precision (no NMI); pytorch-metric-learning's AccuracyCalculator computes
precision_at_1, MAP@R and R-precision with k="max_bin_count". With
``--search cpu gpu`` (a faiss build with GPU support), ours runs once per
backend, and the script prints the GPU/CPU time ratio and the largest metric
difference between them. The script measures and never fails on a missed
target.
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
if side.startswith("ours"):
    from harness.evaluation import evaluate_retrieval
    search = side.split(":")[1]
    values = evaluate_retrieval(embeddings, labels, [1, 10, 100, 1000], compute_nmi=False, search=search).values
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
    parser.add_argument("--spread", type=float, default=2.2, help="noise around the class centres (default 2.2)")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--skip-library-at", type=int, nargs="*", default=[2048], help="dimensions where only ours runs")
    parser.add_argument("--search", nargs="+", default=["cpu"], choices=["cpu", "gpu"], help="our backends to time")
    args = parser.parse_args()
    if "gpu" in args.search:
        from harness.evaluation import faiss_gpu_count

        if faiss_gpu_count() == 0:
            parser.error("--search gpu needs a faiss build with GPU support that detects a GPU; this one detects none.")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.items} items of {args.classes} classes, spread {args.spread}"
    )
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.arange(args.items) % args.classes).astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        label_path = Path(folder) / "labels.npy"
        np.save(label_path, labels)
        for dim in args.dims:
            centres = rng.normal(size=(args.classes, dim)).astype(np.float32)
            embeddings = centres[labels] + args.spread * rng.normal(size=(args.items, dim)).astype(np.float32)
            embedding_path = Path(folder) / f"embeddings_{dim}.npy"
            np.save(embedding_path, embeddings.astype(np.float32))
            del embeddings, centres
            for search in args.search:
                rows.append((dim, f"ours ({search})", measure(f"ours:{search}", embedding_path, label_path)))
            ours = rows[-len(args.search)][2]
            if len(args.search) == 2:
                cpu_values, gpu_values = rows[-2][2]["values"], rows[-1][2]["values"]
                largest = max(abs(cpu_values[name] - gpu_values[name]) for name in cpu_values)
                print(f"d={dim}: largest |cpu - gpu| metric difference = {largest:.2e}")
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
    print(f"{'dim':>5} {'side':26} {'seconds':>8} {'peak GiB':>9} {'R@1':>6}")
    for dim, side, result in rows:
        values = result["values"]
        recall = values.get("recall@1", values.get("precision_at_1"))
        print(f"{dim:5d} {side:26} {result['seconds']:8.1f} {result['peak_gib']:9.2f} {recall:6.3f}")
    by_dim = {}
    for dim, side, result in rows:
        by_dim.setdefault(dim, {})[side] = result
    first = f"ours ({args.search[0]})"
    for dim, sides in by_dim.items():
        if "pytorch-metric-learning" in sides:
            ratio = sides[first]["seconds"] / sides["pytorch-metric-learning"]["seconds"]
            print(f"d={dim}: {first} / library time = {ratio:.2f} (target at most 1.2)")
        if "ours (cpu)" in sides and "ours (gpu)" in sides:
            ratio = sides["ours (gpu)"]["seconds"] / sides["ours (cpu)"]["seconds"]
            print(f"d={dim}: ours (gpu) / ours (cpu) time = {ratio:.2f}")


if __name__ == "__main__":
    main()
