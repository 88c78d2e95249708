"""Datasets and their class-disjoint splits.

Each dataset provides a training split and a test split whose classes do not
overlap (the metric-learning "zero-shot" protocol); labels are remapped to
0..C-1 within each split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from harness.config import DataConfig
from harness.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Splits:
    """Training and test data of one dataset, with class counts and the K list."""

    train: Dataset
    test: Dataset
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_class_ids: tuple
    test_class_ids: tuple

    @property
    def num_train_classes(self) -> int:
        return int(len(np.unique(self.train_labels)))


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's one-line description, Recall@K list and loader."""

    description: str
    recall_k: tuple[int, ...]
    loader: Callable[[DataConfig], Splits]


def remap_labels(labels: np.ndarray) -> np.ndarray:
    """Map the sorted distinct labels to 0..C-1."""
    _, remapped = np.unique(labels, return_inverse=True)
    return remapped.astype(np.int64)


def load_digits_splits(config: DataConfig) -> Splits:
    """Load scikit-learn's digits: classes 0-4 train, 5-9 test, upsampled to RGB squares.

    The 8x8 images (values 0-16) are scaled to [0, 1], resized bilinearly to
    ``config.image_size``, copied to three channels and normalized with the
    ImageNet mean and standard deviation, like photographs for a timm model.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(config.image_size, config.image_size), mode="bilinear", align_corners=False)
    images = images.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = ((images - mean) / std).contiguous()
    targets = digits.target.astype(np.int64)

    is_train = targets <= 4
    train_labels = remap_labels(targets[is_train])
    test_labels = remap_labels(targets[~is_train])
    return Splits(
        train=TensorDataset(images[torch.from_numpy(is_train)], torch.from_numpy(train_labels)),
        test=TensorDataset(images[torch.from_numpy(~is_train)], torch.from_numpy(test_labels)),
        train_labels=train_labels,
        test_labels=test_labels,
        train_class_ids=tuple(int(c) for c in np.unique(targets[is_train])),
        test_class_ids=tuple(int(c) for c in np.unique(targets[~is_train])),
    )


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        description="scikit-learn's bundled 8x8 handwritten digits (1,797 images); classes 0-4 train, 5-9 test",
        recall_k=(1, 2, 4, 8),
        loader=load_digits_splits,
    ),
}


def load_splits(config: DataConfig) -> Splits:
    """Load a dataset's splits and check that their classes are disjoint."""
    if config.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset '{config.dataset}'; available datasets: {', '.join(DATASETS)}.")
    splits = DATASETS[config.dataset].loader(config)
    shared = set(splits.train_class_ids) & set(splits.test_class_ids)
    if shared:
        raise ConfigError(
            f"dataset '{config.dataset}': training and test splits share classes {sorted(shared)[:10]}; "
            "the metric-learning protocol needs class-disjoint splits."
        )
    return splits
