"""Synthetic datasets written in the official layouts of CUB, Cars196, SOP and In-Shop.

Tests use tiny ones; the loading benchmark uses larger ones with images of
realistic size (CUB's are about 500 x 375). Each class has its own colour
pattern, so a model can learn something from them. Every dataset includes
one grayscale and one CMYK JPEG, as the real downloads do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, class_index: int, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    width, height = size
    hue = np.array([(class_index * 67) % 256, (class_index * 131) % 256, (class_index * 29) % 256], dtype=np.float32)
    gradient = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0, 25, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(hue[None, None, :] + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    return image.convert(mode) if mode != "RGB" else image


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG", quality=85)


def _mode_for(index: int) -> str:
    """Make the first image grayscale and the second CMYK."""
    return {0: "L", 1: "CMYK"}.get(index, "RGB")


def write_cub(root: Path, classes: int = 3, images_per_class: int = 4, size=(500, 375), seed: int = 0) -> Path:
    """Write ``CUB_200_2011/`` with classes 1..classes (train) and 101..100+classes (test).

    A ``train_test_split.txt`` that contradicts the class split is written too,
    since the loader must never read it.
    """
    rng = np.random.default_rng(seed)
    folder = root / "CUB_200_2011"
    class_ids = list(range(1, classes + 1)) + list(range(101, 101 + classes))
    images, labels, names, split_flags = [], [], [], []
    image_id = 0
    for class_id in class_ids:
        class_folder = f"{class_id:03d}.Bird_{class_id}"
        names.append(f"{class_id} {class_folder}")
        for index in range(images_per_class):
            image_id += 1
            relative = f"{class_folder}/Bird_{class_id}_{index:04d}.jpg"
            _save(folder / "images" / relative, _image(rng, class_id, size, _mode_for(image_id - 1)))
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            split_flags.append(f"{image_id} {image_id % 2}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split_flags) + "\n")
    return folder


def write_cars(root: Path, classes: int = 3, images_per_class: int = 4, size=(500, 375), seed: int = 0) -> Path:
    """Write ``cars196/cars_annos.mat`` and ``car_ims/`` with classes 1..classes and 99..98+classes.

    The ``test`` flags alternate, so a loader that used them would get the split wrong.
    """
    import scipy.io

    rng = np.random.default_rng(seed)
    folder = root / "cars196"
    class_ids = list(range(1, classes + 1)) + list(range(99, 99 + classes))
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    records = []
    number = 0
    for class_id in class_ids:
        for _ in range(images_per_class):
            number += 1
            relative = f"car_ims/{number:06d}.jpg"
            _save(folder / relative, _image(rng, class_id, size, _mode_for(number - 1)))
            records.append((relative, 1, 1, size[0], size[1], class_id, number % 2))
    annotations = np.zeros((1, len(records)), dtype=[(name, "O") for name in fields])
    for index, record in enumerate(records):
        annotations[0, index] = tuple(
            np.array([value]) if isinstance(value, str) else np.array([[value]], dtype=np.uint16) for value in record
        )
    class_names = np.array([[f"Car {c}" for c in range(1, 197)]], dtype=object)
    scipy.io.savemat(folder / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return folder


def write_sop(root: Path, classes: int = 3, images_per_class: int = 4, size=(500, 375), seed: int = 0) -> Path:
    """Write ``Stanford_Online_Products/`` with Ebay_train.txt and Ebay_test.txt and images in ``<super>_final/``."""
    rng = np.random.default_rng(seed)
    folder = root / "Stanford_Online_Products"
    image_id = 0
    for split, first_class in (("train", 1), ("test", 1 + classes)):
        lines = ["image_id class_id super_class_id path"]
        for class_id in range(first_class, first_class + classes):
            super_name = ("bicycle", "chair", "kettle")[class_id % 3]
            for index in range(images_per_class):
                image_id += 1
                relative = f"{super_name}_final/{class_id}_{index}.JPG"
                _save(folder / relative, _image(rng, class_id, size, _mode_for(image_id - 1)))
                lines.append(f"{image_id} {class_id} {class_id % 3 + 1} {relative}")
        (folder / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_inshop(root: Path, items: int = 3, images_per_item: int = 4, size=(256, 256), seed: int = 0) -> Path:
    """Write ``InShop/list_eval_partition.txt`` and ``img/``: ``items`` train items and ``items`` test items.

    Each test item has half its images as queries and half in the gallery.
    The gallery image of each pair is a byte-identical copy of its query
    image, and the list puts gallery entries before query entries, so a
    correct loader gives Recall@1 = 1 on raw pixels.
    """
    rng = np.random.default_rng(seed)
    folder = root / "InShop"
    train_lines, query_lines, gallery_lines = [], [], []
    count = 0
    for item in range(1, 2 * items + 1):
        item_id = f"id_{item:08d}"
        base = f"img/WOMEN/Dresses/{item_id}"
        for index in range(images_per_item):
            relative = f"{base}/{index:02d}_{index + 1}_front.jpg"
            if item <= items:
                _save(folder / relative, _image(rng, item, size, _mode_for(count)))
                train_lines.append(f"{relative} {item_id} train")
            elif index % 2 == 0:
                _save(folder / relative, _image(rng, item, size, _mode_for(count)))
                query_lines.append(f"{relative} {item_id} query")
            else:
                previous = f"{base}/{index - 1:02d}_{index}_front.jpg"
                (folder / relative).write_bytes((folder / previous).read_bytes())
                gallery_lines.append(f"{relative} {item_id} gallery")
            count += 1
    entries = train_lines + gallery_lines[::-1] + query_lines
    header = "image_name item_id evaluation_status"
    (folder / "list_eval_partition.txt").write_text(f"{len(entries)}\n{header}\n" + "\n".join(entries) + "\n")
    return folder


WRITERS = {"cub": write_cub, "cars": write_cars, "sop": write_sop, "inshop": write_inshop}
