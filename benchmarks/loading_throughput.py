"""Training-pipeline throughput: decode, augment and collate, against a plain torchvision ImageFolder.

Usage:
    .venv/bin/python benchmarks/loading_throughput.py [--classes 20] [--images-per-class 100] [--rounds 2]

Writes a CUB-layout fixture of JPEGs at 500 x 375 (the typical CUB size)
into a temporary folder. Then it times one pass over all training images with
a DataLoader (batch 75, one worker per CPU) for three pipelines on the same
files and transforms (resize to 256 x 256, random crop 224, flip, ImageNet
normalization):

- plain: torchvision ImageFolder with torchvision transforms;
- harness: the harness pipeline reading the JPEGs;
- harness + cache: the harness pipeline reading the memory-mapped cache
  (built once before timing; its build time is printed separately).

Rounds interleave the pipelines so that drift in machine speed hits all of
them alike. The ratios to plain use the median over rounds. The script
measures and never fails on a missed target.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.benchmark_datasets import parse_dataset  # noqa: E402
from harness.fixtures import write_cub  # noqa: E402
from harness.images import ImageDataset, ImagePipeline, build_cache, default_num_workers  # noqa: E402

BATCH = 75


def images_per_second(dataset, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=False)
    started = time.perf_counter()
    count = 0
    for images, _ in loader:
        count += images.shape[0]
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=20, help="training classes (default 20)")
    parser.add_argument("--images-per-class", type=int, default=100, help="images per class (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (default 2)")
    args = parser.parse_args()
    workers = default_num_workers()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        started = time.perf_counter()
        write_cub(root, classes=args.classes, images_per_class=args.images_per_class, size=(500, 375))
        print(f"fixture: {2 * args.classes * args.images_per_class} JPEGs at 500x375 written in {time.perf_counter() - started:.1f} s")

        parsed = parse_dataset("cub", root)
        dataset_root = parsed.root
        train = parsed.split_entries("train")
        paths = [entry.path for entry in train]
        labels = np.array([int(entry.class_id) for entry in train])

        plain_transform = transforms.Compose(
            [
                transforms.Resize((256, 256)),
                transforms.RandomCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        # ImageFolder reads every class folder; keep only the training classes, as the harness does.
        image_folder = datasets.ImageFolder(str(dataset_root / "images"), transform=plain_transform)
        train_folders = {path.split("/")[1] for path in paths}
        image_folder.samples = [s for s in image_folder.samples if Path(s[0]).parent.name in train_folders]
        image_folder.imgs = image_folder.samples

        pipeline = ImagePipeline((256, 256), 224, "random_crop", True)
        harness_plain = ImageDataset(dataset_root, paths, labels, pipeline, train=True)

        all_paths = sorted(entry.path for entry in parsed.entries)
        started = time.perf_counter()
        cache_file = build_cache(dataset_root, all_paths, pipeline, root / "cache", "cub", workers)
        build_seconds = time.perf_counter() - started
        rows = np.array([all_paths.index(path) for path in paths])
        cached_pipeline = ImagePipeline((256, 256), 224, "random_crop", True, cached=True)
        harness_cached = ImageDataset(dataset_root, paths, labels, cached_pipeline, True, 0, cache_file, rows)
        print(
            f"cache: {len(all_paths)} images at 256x256 built in {build_seconds:.1f} s "
            f"({cache_file.stat().st_size / 2**20:.0f} MiB)"
        )

        pipelines = {"plain ImageFolder": image_folder, "harness": harness_plain, "harness + cache": harness_cached}
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_index in range(args.rounds):
            for name, dataset in pipelines.items():
                rates[name].append(images_per_second(dataset, workers))
            print(f"round {round_index + 1}: " + ", ".join(f"{n} {r[-1]:.0f} img/s" for n, r in rates.items()))

    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {workers} DataLoader workers, batch {BATCH}, "
          f"{len(paths)} training images per pass, torch {torch.__version__}")
    reference = statistics.median(rates["plain ImageFolder"])
    print(f"{'pipeline':20} {'median img/s':>13} {'ratio to plain':>15}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:20} {median:13.0f} {median / reference:15.2f}")


if __name__ == "__main__":
    main()
