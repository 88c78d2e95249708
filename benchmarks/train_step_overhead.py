"""Overhead of the harness's training step against a plain PyTorch loop on the same model, batch and loss.

Usage:
    .venv/bin/python benchmarks/train_step_overhead.py [--pairs 40] [--batch 48] [--image-size 64]

Both sides train a resnet18 embedding model with the SGSL loss on the same
random batch. The plain side is four lines: forward, loss, backward, step.
The harness side is ``harness.training.train_step`` (autocast context, loss
on float32 embeddings, finiteness check, optional clipping) on a model from
``harness.model.build_model``. Steps alternate in pairs (plain then harness,
harness then plain), so drift in machine speed hits both alike. The ratio
of each pair is harness / plain. The script prints the median ratio and a
95% interval of the median (order statistics of the binomial), and never
fails on a missed target.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import ModelConfig  # noqa: E402
from harness.model import build_model  # noqa: E402
from harness.training import train_step  # noqa: E402
from losses import SGSLLoss  # noqa: E402


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Return a distribution-free interval of the median from order statistics."""
    ordered = sorted(values)
    n = len(ordered)
    z = 1.959963984540054 if confidence == 0.95 else 2.5758293035489004
    half = z * math.sqrt(n) / 2
    low = max(0, int(math.floor(n / 2 - half)))
    high = min(n - 1, int(math.ceil(n / 2 + half)) - 1)
    return ordered[low], ordered[high]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=40, help="interleaved pairs of steps (default 40)")
    parser.add_argument("--batch", type=int, default=48, help="batch size (default 48)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    args = parser.parse_args()

    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, 10, (args.batch,))

    harness_model = build_model(ModelConfig(backbone="resnet18", embedding_dim=128))
    plain_model = copy.deepcopy(harness_model)
    harness_loss, plain_loss = SGSLLoss(10, 128), SGSLLoss(10, 128)
    plain_loss.load_state_dict(harness_loss.state_dict())
    harness_optimizer = torch.optim.SGD(list(harness_model.parameters()) + list(harness_loss.parameters()), lr=1e-3, momentum=0.9)
    plain_optimizer = torch.optim.SGD(list(plain_model.parameters()) + list(plain_loss.parameters()), lr=1e-3, momentum=0.9)
    harness_model.train()
    plain_model.train()

    def plain_step() -> float:
        plain_optimizer.zero_grad(set_to_none=True)
        loss = plain_loss(plain_model(images), labels)
        loss.backward()
        plain_optimizer.step()
        return loss.item()

    def harness_step() -> float:
        return train_step(harness_model, harness_loss, harness_optimizer, images, labels)

    for _ in range(3):
        plain_step()
        harness_step()

    ratios, plain_times, harness_times = [], [], []
    for index in range(args.pairs):
        order = (plain_step, harness_step) if index % 2 == 0 else (harness_step, plain_step)
        seconds = {}
        for step in order:
            started = time.perf_counter()
            step()
            seconds[step] = time.perf_counter() - started
        plain_times.append(seconds[plain_step])
        harness_times.append(seconds[harness_step])
        ratios.append(seconds[harness_step] / seconds[plain_step])

    low, high = median_interval(ratios)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: resnet18 + 128-d linear embedding, SGSL loss, batch {args.batch} at {args.image_size} px, SGD")
    print(f"pairs: {args.pairs}; median step: plain {1000 * statistics.median(plain_times):.0f} ms, "
          f"harness {1000 * statistics.median(harness_times):.0f} ms")
    print(f"harness / plain step time: median {statistics.median(ratios):.3f}, 95% interval [{low:.3f}, {high:.3f}]")
    print(f"target: at most 1.05 -> {'met' if statistics.median(ratios) <= 1.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
