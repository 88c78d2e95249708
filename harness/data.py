"""Datasets and their class-disjoint splits.

Each dataset provides a training split and a test split whose classes do not
overlap (the metric-learning "zero-shot" protocol), and optionally a
validation split carved from the training classes. Labels are remapped to
0..C-1 within each split; In-Shop's query and gallery share one label map.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from harness.benchmark_datasets import BENCHMARKS, ParsedDataset, count_problems, parse_dataset, resolve_data_root
from harness.config import DataConfig
from harness.errors import ConfigError, HarnessError
from harness.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    ImagePipeline,
    build_cache,
    default_cache_dir,
    default_num_workers,
)


@dataclass(frozen=True)
class DataLocation:
    """Data root and cache folder of photo datasets on this machine (not part of the config)."""

    data_root: Path | None = None
    cache_dir: Path | None = None


@dataclass
class Splits:
    """The splits of one dataset with their remapped labels and original class ids."""

    train: Dataset
    train_labels: np.ndarray
    test: Dataset
    test_labels: np.ndarray
    class_ids: dict[str, tuple]
    gallery: Dataset | None = None
    gallery_labels: np.ndarray | None = None
    val: Dataset | None = None
    val_labels: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)
    num_workers: int = 0

    @property
    def num_train_classes(self) -> int:
        return int(len(np.unique(self.train_labels)))

    def summary(self) -> dict:
        """Return split sizes and class counts for the run's status record."""
        summary = {
            "train_images": len(self.train),
            "train_classes": self.num_train_classes,
            "test_images": len(self.test),
            "test_classes": int(len(np.unique(self.test_labels))),
        }
        if self.gallery is not None:
            summary["gallery_images"] = len(self.gallery)
        if self.val is not None:
            summary["val_images"] = len(self.val)
            summary["val_classes"] = int(len(np.unique(self.val_labels)))
        return summary


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's one-line description, Recall@K list and loader."""

    description: str
    recall_k: tuple[int, ...]
    loader: Callable[..., Splits]


def remap_labels(labels) -> np.ndarray:
    """Map the sorted distinct labels to 0..C-1 (numeric ids in numeric order)."""
    labels = list(labels)
    distinct = sorted(set(labels), key=_class_order)
    index = {label: position for position, label in enumerate(distinct)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def _class_order(class_id):
    text = str(class_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def load_digits_splits(config: DataConfig, seed: int = 0, location: DataLocation | None = None, progress=None) -> Splits:
    """Load scikit-learn's digits: classes 0-4 train, 5-9 test, upsampled to RGB squares.

    The 8x8 images (values 0-16) are scaled to [0, 1], resized bilinearly to
    ``config.image_size``, copied to three channels and normalized with the
    ImageNet mean and standard deviation, like photographs for a timm model.
    The photo settings (resize, crop, flip, cache) do not apply.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(config.image_size, config.image_size), mode="bilinear", align_corners=False)
    images = ((images.expand(-1, 3, -1, -1) - IMAGENET_MEAN) / IMAGENET_STD).contiguous()
    targets = digits.target.astype(np.int64)

    is_train = targets <= 4
    train_labels = remap_labels(targets[is_train])
    test_labels = remap_labels(targets[~is_train])
    return Splits(
        train=TensorDataset(images[torch.from_numpy(is_train)], torch.from_numpy(train_labels)),
        train_labels=train_labels,
        test=TensorDataset(images[torch.from_numpy(~is_train)], torch.from_numpy(test_labels)),
        test_labels=test_labels,
        class_ids={
            "train": tuple(int(c) for c in np.unique(targets[is_train])),
            "test": tuple(int(c) for c in np.unique(targets[~is_train])),
        },
        manifest={"source": "sklearn.datasets.load_digits", "images": len(targets)},
    )


_PARSED: dict[tuple[str, str], ParsedDataset] = {}


def checked_dataset(name: str, data_root: Path | None) -> tuple[ParsedDataset, list[str]]:
    """Parse a photo dataset and run the cheap checks once per process.

    Returns the parsed dataset and the warnings to store with each run (split
    counts that differ from the published ones).

    Raises:
        HarnessError: the dataset is missing, or its lists name files that are
            missing, duplicated or outside the dataset folder.
    """
    root = resolve_data_root(data_root)
    key = (name, str(root.resolve()))
    if key not in _PARSED:
        _PARSED[key] = parse_dataset(name, root, check_files=True)
    parsed = _PARSED[key]
    if parsed.problems:
        shown = "; ".join(problem.message for problem in parsed.problems[:5])
        more = f" (and {len(parsed.problems) - 5} more)" if len(parsed.problems) > 5 else ""
        raise HarnessError(
            f"dataset '{name}' at {parsed.root} has {len(parsed.problems)} problem(s): {shown}{more}. "
            f"Run `harness data check --dataset {name}` for the full list."
        )
    warnings = [
        f"{problem.message}; results are not comparable like for like with published numbers"
        for problem in count_problems(parsed)
    ]
    return parsed, warnings


def manifest_of(parsed: ParsedDataset) -> dict:
    """Return a hash over the listed files' paths, splits, classes and sizes."""
    digest = hashlib.sha256()
    for entry in sorted(parsed.entries, key=lambda e: e.path):
        size = (parsed.root / entry.path).stat().st_size
        digest.update(f"{entry.path}\t{entry.split}\t{entry.class_id}\t{size}\n".encode())
    return {"root": str(parsed.root), "files": len(parsed.entries), "sha256": digest.hexdigest()}


def validation_classes(train_classes: set, fraction: float) -> set:
    """Return the last ``fraction`` of the training classes by class id, held out for validation.

    Raises:
        ConfigError: the fraction would leave no class for training.
    """
    ordered = sorted(train_classes, key=_class_order)
    held_out = math.ceil(fraction * len(ordered)) if fraction > 0 else 0
    if held_out >= len(ordered):
        raise ConfigError(
            f"data.val_fraction: invalid value {fraction}; it would move {held_out} of the {len(ordered)} "
            "training classes to validation, and at least one must stay for training."
        )
    return set(ordered[len(ordered) - held_out :])


def load_benchmark_splits(
    config: DataConfig, seed: int = 0, location: DataLocation | None = None, progress=None
) -> Splits:
    """Load CUB, Cars196, SOP or In-Shop from their official layouts below the data root."""
    location = location or DataLocation()
    parsed, warnings = checked_dataset(config.dataset, location.data_root)
    pipeline = ImagePipeline(config.resize, config.image_size, config.train_crop, config.flip, cached=config.cache)
    num_workers = default_num_workers() if config.num_workers < 0 else config.num_workers

    cache_file, row_of = None, {}
    if config.cache_is_deviation:
        height, width = pipeline.cache_shape
        warnings = warnings + [
            f"images were cached at {height}x{width} before the recipe's {config.train_crop} "
            f"(resize {list(config.resize)}), a deviation from the recipe that changes the training pixels"
        ]
    if config.cache:
        all_paths = sorted(entry.path for entry in parsed.entries)
        cache_file = build_cache(
            parsed.root,
            all_paths,
            pipeline,
            location.cache_dir or default_cache_dir(),
            config.dataset,
            num_workers,
            progress,
        )
        row_of = {path: row for row, path in enumerate(all_paths)}

    def dataset(entries, labels, train):
        paths = [entry.path for entry in entries]
        rows = np.array([row_of[p] for p in paths], dtype=np.int64) if cache_file else None
        return ImageDataset(parsed.root, paths, labels, pipeline, train, seed, cache_file, rows)

    train_entries = parsed.split_entries("train")
    val_classes = validation_classes({entry.class_id for entry in train_entries}, config.val_fraction)
    val_entries = [entry for entry in train_entries if entry.class_id in val_classes]
    train_entries = [entry for entry in train_entries if entry.class_id not in val_classes]

    train_labels = remap_labels(entry.class_id for entry in train_entries)
    splits = Splits(
        train=dataset(train_entries, train_labels, train=True),
        train_labels=train_labels,
        test=None,
        test_labels=None,
        class_ids={"train": tuple(sorted({e.class_id for e in train_entries}, key=_class_order))},
        warnings=warnings,
        manifest=manifest_of(parsed),
        num_workers=num_workers,
    )
    if val_entries:
        splits.val_labels = remap_labels(entry.class_id for entry in val_entries)
        splits.val = dataset(val_entries, splits.val_labels, train=False)
        splits.class_ids["val"] = tuple(sorted(val_classes, key=_class_order))

    if config.dataset == "inshop":
        query = parsed.split_entries("query")
        gallery = parsed.split_entries("gallery")
        shared = remap_labels([entry.class_id for entry in query] + [entry.class_id for entry in gallery])
        splits.test_labels, splits.gallery_labels = shared[: len(query)], shared[len(query) :]
        splits.test = dataset(query, splits.test_labels, train=False)
        splits.gallery = dataset(gallery, splits.gallery_labels, train=False)
        splits.class_ids["test"] = tuple(sorted({e.class_id for e in query + gallery}, key=_class_order))
    else:
        test = parsed.split_entries("test")
        splits.test_labels = remap_labels(entry.class_id for entry in test)
        splits.test = dataset(test, splits.test_labels, train=False)
        splits.class_ids["test"] = tuple(sorted({e.class_id for e in test}, key=_class_order))
    return splits


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        description="scikit-learn's bundled 8x8 handwritten digits (1,797 images); classes 0-4 train, 5-9 test",
        recall_k=(1, 2, 4, 8),
        loader=load_digits_splits,
    ),
}
for _name, _info in BENCHMARKS.items():
    DATASETS[_name] = DatasetInfo(
        description=f"{_info.description}; expects <data root>/{_info.folder}/",
        recall_k=_info.recall_k,
        loader=load_benchmark_splits,
    )


def check_data_config(config: DataConfig) -> None:
    """Reject data settings whose combination is invalid."""
    if len(config.resize) not in (1, 2):
        raise ConfigError(f"data.resize: expected [S] or [H, W], got {list(config.resize)}.")
    if config.val_fraction >= 1:
        raise ConfigError(f"data.val_fraction: {config.val_fraction} must be below 1.")


def check_batching(config: DataConfig, images: int, classes: int) -> None:
    """Reject a batch size or sampler that the training split cannot fill."""
    batch_size = config.batch_size
    if images < batch_size:
        raise ConfigError(f"data.batch_size: {batch_size} is larger than the training split ({images} images).")
    if config.sampler != "class_balanced":
        return
    per_class = config.images_per_class
    if batch_size % per_class:
        raise ConfigError(f"data.images_per_class: {per_class} must divide data.batch_size ({batch_size}).")
    if classes * per_class < batch_size:
        raise ConfigError(
            f"data.batch_size: {batch_size} needs {batch_size // per_class} classes with {per_class} images each "
            f"(data.images_per_class), but the training split has {classes} classes. Lower data.batch_size to at "
            f"most {classes * per_class} or raise data.images_per_class."
        )


def training_split_size(config: DataConfig, location: DataLocation | None = None) -> tuple[int, int]:
    """Return (images, classes) of the training split without decoding images."""
    if config.dataset == "digits":
        from sklearn.datasets import load_digits

        targets = load_digits().target
        return int((targets <= 4).sum()), 5
    parsed, _ = checked_dataset(config.dataset, (location or DataLocation()).data_root)
    entries = parsed.split_entries("train")
    val_classes = validation_classes({entry.class_id for entry in entries}, config.val_fraction)
    kept = [entry for entry in entries if entry.class_id not in val_classes]
    return len(kept), len({entry.class_id for entry in kept})


def load_splits(config: DataConfig, seed: int = 0, location: DataLocation | None = None, progress=None) -> Splits:
    """Load a dataset's splits and check that train, validation and test classes are disjoint."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{config.dataset}'; available datasets: {', '.join(DATASETS)}.")
    check_data_config(config)
    splits = DATASETS[config.dataset].loader(config, seed, location, progress)
    names = list(splits.class_ids)
    for position, first in enumerate(names):
        for second in names[position + 1 :]:
            shared = set(splits.class_ids[first]) & set(splits.class_ids[second])
            if shared:
                raise HarnessError(
                    f"dataset '{config.dataset}': the {first} and {second} splits share classes "
                    f"{sorted(shared, key=_class_order)[:10]}; the metric-learning protocol needs class-disjoint splits."
                )
    return splits
