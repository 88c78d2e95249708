"""The four metric-learning benchmarks, read from their official layouts.

Each loader parses the dataset's own list files into entries of (path
relative to the dataset folder, class id, split). The metric-learning split
is class-disjoint and never uses the classification splits that some
datasets ship: CUB's ``train_test_split.txt`` and the ``test`` flag in
Cars196's ``cars_annos.mat`` are not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from harness.errors import HarnessError


@dataclass(frozen=True)
class Entry:
    """One image listed by a dataset: its path inside the dataset folder, class id and split."""

    path: str
    class_id: str
    split: str
    line: int
    list_file: str = ""


@dataclass(frozen=True)
class PublishedCounts:
    """Image and class counts of one split as published."""

    images: int
    classes: int


@dataclass(frozen=True)
class BenchmarkInfo:
    """A dataset's folder below the data root, its required files, source and published counts."""

    name: str
    folder: str
    required: tuple[str, ...]
    source: str
    counts: dict[str, PublishedCounts]
    description: str
    recall_k: tuple[int, ...]


BENCHMARKS: dict[str, BenchmarkInfo] = {
    "cub": BenchmarkInfo(
        name="cub",
        folder="CUB_200_2011",
        required=("images.txt", "image_class_labels.txt", "images"),
        source="https://www.vision.caltech.edu/datasets/cub_200_2011/ (Caltech-UCSD Birds-200-2011)",
        counts={"train": PublishedCounts(5864, 100), "test": PublishedCounts(5924, 100)},
        description="CUB-200-2011 birds: classes 1-100 train (5,864 images), 101-200 test (5,924)",
        recall_k=(1, 2, 4, 8),
    ),
    "cars": BenchmarkInfo(
        name="cars",
        folder="cars196",
        required=("cars_annos.mat", "car_ims"),
        source="Stanford Cars (Krause et al. 2013), cars_annos.mat and car_ims.tgz",
        counts={"train": PublishedCounts(8054, 98), "test": PublishedCounts(8131, 98)},
        description="Cars196: classes 1-98 train (8,054 images), 99-196 test (8,131)",
        recall_k=(1, 2, 4, 8),
    ),
    "sop": BenchmarkInfo(
        name="sop",
        folder="Stanford_Online_Products",
        required=("Ebay_train.txt", "Ebay_test.txt"),
        source="https://cvgl.stanford.edu/projects/lifted_struct/ (Stanford Online Products)",
        counts={"train": PublishedCounts(59551, 11318), "test": PublishedCounts(60502, 11316)},
        description="Stanford Online Products: 11,318 classes train (59,551 images), 11,316 test (60,502)",
        recall_k=(1, 10, 100, 1000),
    ),
    "inshop": BenchmarkInfo(
        name="inshop",
        folder="InShop",
        required=("list_eval_partition.txt", "img"),
        source="https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html (DeepFashion In-Shop)",
        counts={
            "train": PublishedCounts(25882, 3997),
            "query": PublishedCounts(14218, 3985),
            "gallery": PublishedCounts(12612, 3985),
        },
        description="In-Shop Clothes: 3,997 items train (25,882 images); 3,985 items test, query 14,218 vs gallery 12,612",
        recall_k=(1, 10, 20, 30, 40, 50),
    ),
}


@dataclass
class Problem:
    """One fault found in a dataset download."""

    kind: str
    message: str


@dataclass
class ParsedDataset:
    """A dataset's entries and the faults found while listing them."""

    info: BenchmarkInfo
    root: Path
    entries: list[Entry]
    problems: list[Problem] = field(default_factory=list)

    def split_entries(self, split: str) -> list[Entry]:
        return [entry for entry in self.entries if entry.split == split]


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """Return the data root from the option, else from HARNESS_DATA_ROOT.

    Raises:
        HarnessError: neither is set.
    """
    value = data_root or os.environ.get("HARNESS_DATA_ROOT")
    if not value:
        raise HarnessError(
            "no data root: pass --data-root PATH or set the environment variable HARNESS_DATA_ROOT "
            "to the folder that contains the dataset folders (CUB_200_2011, cars196, "
            "Stanford_Online_Products, InShop)."
        )
    return Path(value).expanduser()


def dataset_folder(info: BenchmarkInfo, data_root: Path) -> Path:
    """Return the dataset's folder below the data root, checking that its required files exist.

    Raises:
        HarnessError: the folder or a required file is missing; the message
            names the path, the expected files and where the dataset is published.
    """
    folder = data_root / info.folder
    missing = [name for name in info.required if not (folder / name).exists()]
    if not folder.is_dir() or missing:
        what = "folder not found" if not folder.is_dir() else f"missing {', '.join(missing)}"
        raise HarnessError(
            f"dataset '{info.name}' not found at {folder} ({what}). Expected {folder}/ to contain "
            f"{', '.join(info.required)}. Download it from {info.source} and unpack it below the data root."
        )
    return folder


def _inside(relative: str) -> bool:
    """Tell whether a listed path stays inside the dataset folder."""
    path = PurePosixPath(relative.replace("\\", "/"))
    if path.is_absolute() or not relative:
        return False
    return ".." not in PurePosixPath(os.path.normpath(str(path))).parts and os.path.normpath(str(path)) != ".."


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise HarnessError(f"{path} is not a UTF-8 text file ({error}).") from None


def _split_fields(path: Path, number: int, line: str, count: int) -> list[str]:
    fields = line.split()
    if len(fields) != count:
        raise HarnessError(f"{path} line {number}: expected {count} fields, found {len(fields)}: {line!r}.")
    return fields


def parse_cub(root: Path) -> list[Entry]:
    """Read CUB from ``images.txt`` and ``image_class_labels.txt``: classes 1-100 train, 101-200 test."""
    images_file = root / "images.txt"
    labels_file = root / "image_class_labels.txt"
    paths = {}
    for number, line in enumerate(_read_lines(images_file), start=1):
        if line.strip():
            image_id, relative = _split_fields(images_file, number, line, 2)
            if image_id in paths:
                raise HarnessError(
                    f"{images_file} line {number}: image id {image_id} is listed again (first at line {paths[image_id][1]})."
                )
            paths[image_id] = (f"images/{relative}", number)
    entries = []
    for number, line in enumerate(_read_lines(labels_file), start=1):
        if not line.strip():
            continue
        image_id, class_text = _split_fields(labels_file, number, line, 2)
        if image_id not in paths:
            raise HarnessError(f"{labels_file} line {number}: image id {image_id} is not listed in {images_file}.")
        if not class_text.isdigit():
            raise HarnessError(f"{labels_file} line {number}: class id {class_text!r} is not a positive integer.")
        relative, image_line = paths[image_id]
        split = "train" if int(class_text) <= 100 else "test"
        entries.append(Entry(relative, class_text, split, image_line, "images.txt"))
    unlabelled = sorted(set(paths) - {entry_id for entry_id in _labelled_ids(labels_file)}, key=lambda i: paths[i][1])
    if unlabelled:
        first = unlabelled[0]
        raise HarnessError(
            f"{images_file} lists {len(unlabelled)} image(s) that {labels_file.name} gives no class, "
            f"first id {first} at line {paths[first][1]}."
        )
    return entries


def _labelled_ids(labels_file: Path) -> set[str]:
    return {line.split()[0] for line in _read_lines(labels_file) if line.strip()}


def parse_cars(root: Path) -> list[Entry]:
    """Read Cars196 from ``cars_annos.mat``: classes 1-98 train, 99-196 test; the ``test`` flag is ignored."""
    import scipy.io

    annotations_file = root / "cars_annos.mat"
    try:
        contents = scipy.io.loadmat(annotations_file, squeeze_me=True)
    except (ValueError, OSError, TypeError) as error:
        raise HarnessError(f"{annotations_file} cannot be read as a MATLAB file: {error}.") from None
    if "annotations" not in contents:
        raise HarnessError(f"{annotations_file} has no 'annotations' struct array.")
    annotations = contents["annotations"]
    names = annotations.dtype.names or ()
    for needed in ("relative_im_path", "class"):
        if needed not in names:
            raise HarnessError(f"{annotations_file}: the annotations have no field '{needed}' (fields: {names}).")
    entries = []
    for index, annotation in enumerate(annotations.reshape(-1), start=1):
        class_id = int(annotation["class"])
        split = "train" if class_id <= 98 else "test"
        entries.append(Entry(str(annotation["relative_im_path"]), str(class_id), split, index, "cars_annos.mat"))
    return entries


def parse_sop(root: Path) -> list[Entry]:
    """Read SOP from ``Ebay_train.txt`` and ``Ebay_test.txt`` (header, then ``image_id class_id super_class_id path``)."""
    entries = []
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        path = root / name
        lines = _read_lines(path)
        for number, line in enumerate(lines[1:], start=2):
            if line.strip():
                _, class_id, _, relative = _split_fields(path, number, line, 4)
                entries.append(Entry(relative, class_id, split, number, name))
    return entries


def parse_inshop(root: Path) -> list[Entry]:
    """Read In-Shop from ``list_eval_partition.txt`` (a count line, a header line, then ``image_name item_id evaluation_status``)."""
    path = root / "list_eval_partition.txt"
    lines = _read_lines(path)
    if len(lines) < 2:
        raise HarnessError(f"{path}: expected a count line and a header line, found {len(lines)} line(s).")
    entries = []
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        relative, item_id, status = _split_fields(path, number, line, 3)
        if status not in ("train", "query", "gallery"):
            raise HarnessError(f"{path} line {number}: evaluation status {status!r} is not train, query or gallery.")
        entries.append(Entry(relative, item_id, status, number, "list_eval_partition.txt"))
    declared = lines[0].strip()
    if declared.isdigit() and int(declared) != len(entries):
        raise HarnessError(f"{path}: line 1 declares {declared} images, but {len(entries)} are listed.")
    return entries


PARSERS = {"cub": parse_cub, "cars": parse_cars, "sop": parse_sop, "inshop": parse_inshop}


def parse_dataset(name: str, data_root: Path, check_files: bool = True) -> ParsedDataset:
    """List a dataset's images and find the cheap faults: paths outside the folder, duplicates, missing files.

    Raises:
        HarnessError: the dataset folder or a list file is missing or malformed.
    """
    info = BENCHMARKS[name]
    root = dataset_folder(info, data_root)
    entries = PARSERS[name](root)
    parsed = ParsedDataset(info, root, entries)
    seen: dict[str, str] = {}
    kept = []
    for entry in entries:
        if not _inside(entry.path):
            parsed.problems.append(
                Problem("outside", f"{entry.list_file} line {entry.line} names {entry.path}, which is outside {root}")
            )
            continue
        if entry.path in seen:
            parsed.problems.append(
                Problem("duplicate", f"{entry.list_file} line {entry.line} repeats {entry.path} (first at {seen[entry.path]})")
            )
            continue
        seen[entry.path] = f"{entry.list_file} line {entry.line}"
        kept.append(entry)
    parsed.entries = kept

    if check_files:
        for entry in kept:
            if not (root / entry.path).is_file():
                parsed.problems.append(
                    Problem("missing", f"{entry.list_file} line {entry.line}: {root / entry.path} not found")
                )
    return parsed


def count_problems(parsed: ParsedDataset) -> list[Problem]:
    """Compare image and class counts per split with the published ones."""
    problems = []
    for split, published in parsed.info.counts.items():
        entries = parsed.split_entries(split)
        images = len(entries)
        classes = len({entry.class_id for entry in entries})
        if images != published.images or classes != published.classes:
            problems.append(
                Problem(
                    "count",
                    f"{parsed.info.name} {split} split has {images} images of {classes} classes; "
                    f"published: {published.images} images of {published.classes} classes",
                )
            )
    return problems


def find_unreadable(parsed: ParsedDataset, progress=None) -> list[Problem]:
    """Decode every listed image fully and report files that cannot be read or are truncated."""
    from PIL import Image

    problems = []
    if progress is not None:
        progress.start_task(f"decoding {parsed.info.name} images", len(parsed.entries))
    for entry in parsed.entries:
        path = parsed.root / entry.path
        if path.is_file():
            try:
                with Image.open(path) as image:
                    image.load()
            except (OSError, SyntaxError, ValueError) as error:
                problems.append(Problem("unreadable", f"{path} cannot be decoded: {error}"))
        if progress is not None:
            progress.advance_task()
    if progress is not None:
        progress.end_task()
    return problems


def split_counts(parsed: ParsedDataset) -> list[tuple[str, int, int, PublishedCounts | None]]:
    """Return (split, images, classes, published counts) for each split present or published."""
    splits = list(dict.fromkeys([*parsed.info.counts, *(entry.split for entry in parsed.entries)]))
    rows = []
    for split in splits:
        entries = parsed.split_entries(split)
        rows.append((split, len(entries), len({entry.class_id for entry in entries}), parsed.info.counts.get(split)))
    return rows


def check_download(name: str, data_root: Path, count_check: bool = True, progress=None) -> tuple[ParsedDataset, list[Problem]]:
    """Run every check of ``harness data check``: lists, paths, duplicates, missing and unreadable files, counts."""
    parsed = parse_dataset(name, data_root, check_files=True)
    problems = list(parsed.problems) + find_unreadable(parsed, progress)
    if count_check:
        problems += count_problems(parsed)
    return parsed, problems
