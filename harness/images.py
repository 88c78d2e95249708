"""Image pipeline for the photo datasets: decode, resize, augment, normalize, and an on-disk cache.

Every image passes two stages. The first, deterministic stage decodes the
file to RGB (grayscale and CMYK files included) and resizes it as the recipe
specifies. The optional cache stores its uint8 output. The second stage
crops, flips and normalizes. Random choices in the second stage come from a
generator seeded by (run seed, epoch, image index), so they do not depend on
the number of DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
CACHE_FORMAT = 1


@dataclass(frozen=True)
class ImagePipeline:
    """Resize, crop and flip settings of a recipe.

    Args:
        resize: (S,) resizes the shorter side to S keeping the aspect ratio;
            (H, W) resizes to exactly H x W.
        image_size: side of the square crop fed to the network.
        train_crop: ``random_crop`` crops the resized image at a random
            place. ``random_resized_crop`` takes a random area (8-100%) and
            aspect ratio (3/4-4/3) of the decoded image and resizes it.
        flip: random horizontal flip in training.
        cached: read the first stage from the cache.
    """

    resize: tuple[int, ...]
    image_size: int
    train_crop: str
    flip: bool
    cached: bool = False

    @property
    def cache_shape(self) -> tuple[int, int]:
        """Return the (H, W) of cached images: the resize if it is exact, else a square of its side."""
        return (self.resize[0], self.resize[1]) if len(self.resize) == 2 else (self.resize[0], self.resize[0])

    @property
    def cache_is_deviation(self) -> bool:
        """Tell whether caching changes the training pixels.

        Only an exact (H, W) resize followed by a random crop has a
        deterministic first stage that the cache can store unchanged.
        """
        return not (self.train_crop == "random_crop" and len(self.resize) == 2)

    def first_stage(self, image: Image.Image, train: bool) -> np.ndarray:
        """Resize a decoded RGB image as the recipe's deterministic first step; return uint8 HWC."""
        if self.cached:
            height, width = self.cache_shape
            return np.array(image.resize((width, height), Image.BILINEAR))
        if train and self.train_crop == "random_resized_crop":
            return np.array(image)
        if len(self.resize) == 2:
            height, width = self.resize
        else:
            side = self.resize[0]
            if image.width <= image.height:
                width, height = side, int(side * image.height / image.width)
            else:
                height, width = side, int(side * image.width / image.height)
        return np.array(image.resize((width, height), Image.BILINEAR))

    def train_tensor(self, array: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        """Crop and flip at random, then normalize; return a float CHW tensor."""
        image = _to_tensor(array)
        size = self.image_size
        if self.train_crop == "random_resized_crop":
            top, left, height, width = random_resized_crop_box(image.shape[1], image.shape[2], generator)
            image = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
        else:
            image = _pad_to(image, size)
            top = int(torch.randint(0, image.shape[1] - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, image.shape[2] - size + 1, (1,), generator=generator))
            image = image[:, top : top + size, left : left + size]
        if self.flip and torch.rand(1, generator=generator).item() < 0.5:
            image = image.flip(-1)
        return normalize(image)

    def eval_tensor(self, array: np.ndarray) -> torch.Tensor:
        """Centre-crop and normalize; return a float CHW tensor."""
        image = _pad_to(_to_tensor(array), self.image_size)
        return normalize(TF.center_crop(image, [self.image_size, self.image_size]))


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """Convert uint8 HWC to CHW, copying arrays that PIL or a memory map marked read-only."""
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an image smaller than the crop on its bottom and right."""
    pad_height = max(0, size - image.shape[1])
    pad_width = max(0, size - image.shape[2])
    if pad_height or pad_width:
        image = torch.nn.functional.pad(image, (0, pad_width, 0, pad_height))
    return image


def normalize(image: torch.Tensor) -> torch.Tensor:
    """Scale uint8 to [0, 1] and normalize with the ImageNet mean and standard deviation."""
    return (image.float() / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def random_resized_crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """Draw a crop box covering 8-100% of the area with aspect ratio 3/4-4/3 (torchvision's defaults).

    After ten failed draws the box is the centred largest crop within that ratio range.
    """
    area = height * width
    log_low, log_high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * (0.08 + 0.92 * torch.rand(1, generator=generator).item())
        ratio = math.exp(log_low + (log_high - log_low) * torch.rand(1, generator=generator).item())
        crop_width = int(round(math.sqrt(target * ratio)))
        crop_height = int(round(math.sqrt(target / ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(torch.randint(0, height - crop_height + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - crop_width + 1, (1,), generator=generator))
            return top, left, crop_height, crop_width
    ratio = width / height
    if ratio < 3 / 4:
        crop_width, crop_height = width, int(round(width / (3 / 4)))
    elif ratio > 4 / 3:
        crop_height, crop_width = height, int(round(height * (4 / 3)))
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def decode(path: Path) -> Image.Image:
    """Open an image file and convert it to RGB (grayscale, palette and CMYK files included).

    Raises:
        OSError: the file cannot be decoded; the message names the file.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise OSError(f"{path} cannot be decoded ({error}); run harness data check to list every such file") from None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Return a 63-bit seed for one image in one epoch, independent of worker assignment."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class ImageDataset(Dataset):
    """Images listed by path, with labels, read from files or from a memory-mapped cache."""

    def __init__(
        self,
        root: Path,
        paths: list[str],
        labels: np.ndarray,
        pipeline: ImagePipeline,
        train: bool,
        seed: int = 0,
        cache_file: Path | None = None,
        cache_rows: np.ndarray | None = None,
    ) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.pipeline = pipeline
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.cache_file = cache_file
        self.cache_rows = cache_rows
        self._cache: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch; call before creating the epoch's iterator."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def first_stage(self, index: int) -> np.ndarray:
        if self.cache_file is not None:
            if self._cache is None:
                # Opened lazily so that each DataLoader worker maps the file
                # itself instead of receiving a pickled copy.
                self._cache = np.load(self.cache_file, mmap_mode="r")
            return np.asarray(self._cache[self.cache_rows[index]])
        return self.pipeline.first_stage(decode(self.root / self.paths[index]), self.train)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        array = self.first_stage(index)
        if self.train:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            tensor = self.pipeline.train_tensor(array, generator)
        else:
            tensor = self.pipeline.eval_tensor(array)
        return tensor, int(self.labels[index])


# ---------------------------------------------------------------------------
# Cache


class _DecodeDataset(Dataset):
    def __init__(self, root: Path, paths: list[str], pipeline: ImagePipeline) -> None:
        self.root, self.paths, self.pipeline = root, paths, pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.pipeline.first_stage(decode(self.root / self.paths[index]), train=False)


def cache_key(root: Path, paths: list[str], pipeline: ImagePipeline) -> str:
    """Return a key that changes when a listed file (path, size, modification time) or the cached resolution changes."""
    digest = hashlib.sha256(f"format={CACHE_FORMAT};shape={pipeline.cache_shape}".encode())
    for path in paths:
        stat = (root / path).stat()
        digest.update(f"\n{path}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def build_cache(
    root: Path, paths: list[str], pipeline: ImagePipeline, cache_dir: Path, name: str, num_workers: int, progress=None
) -> Path:
    """Decode and resize every listed image once into a uint8 ``.npy`` file of shape (N, H, W, 3).

    The file is named by :func:`cache_key`, so a later run with the same files
    and resolution reuses it and a change makes a new one. It is written
    under a temporary name and renamed when complete, so an interrupted
    build is never read.
    """
    cached = ImagePipeline(pipeline.resize, pipeline.image_size, pipeline.train_crop, pipeline.flip, cached=True)
    height, width = cached.cache_shape
    key = cache_key(root, paths, cached)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{name}-{height}x{width}-{key[:20]}.npy"
    if final.exists():
        return final

    partial = final.with_suffix(".partial.npy")
    array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(paths), height, width, 3))
    loader = DataLoader(
        _DecodeDataset(root, paths, cached), batch_size=None, num_workers=num_workers, shuffle=False
    )
    if progress is not None:
        progress.start_task(f"caching {name} at {height}x{width}", len(paths))
    for index, image in enumerate(loader):
        array[index] = image.numpy() if isinstance(image, torch.Tensor) else image
        if progress is not None:
            progress.advance_task()
    if progress is not None:
        progress.end_task()
    array.flush()
    del array
    os.replace(partial, final)
    final.with_suffix(".json").write_text(
        json.dumps({"key": key, "images": len(paths), "shape": [height, width, 3]}, indent=2), encoding="utf-8"
    )
    return final


def default_cache_dir() -> Path:
    """Return HARNESS_CACHE_DIR, else ~/.cache/dml-harness."""
    value = os.environ.get("HARNESS_CACHE_DIR")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "dml-harness"


def default_num_workers() -> int:
    """Return the DataLoader worker count for this machine: the CPU count, at most 8."""
    return max(0, min(os.cpu_count() or 1, 8))
