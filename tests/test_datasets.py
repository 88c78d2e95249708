"""Photo datasets from their official layouts: parsing, splits, checks, image pipeline and cache."""

import json

import numpy as np
import pytest
import torch

from harness.benchmark_datasets import check_download, count_problems, parse_dataset, resolve_data_root
from harness.cli import app
from harness.config import DataConfig, load_protocol, parse_overrides, resolve_config
from harness.data import DataLocation, load_splits
from harness.errors import HarnessError
from harness.evaluation import evaluate_retrieval
from harness.fixtures import WRITERS, write_cars, write_cub, write_inshop, write_sop
from harness.images import ImageDataset, ImagePipeline, build_cache, decode, sample_seed

SMALL = {"resize": (40, 40), "image_size": 32, "num_workers": 0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cub(root, classes=3, images_per_class=4, size=(64, 48))
    write_cars(root, classes=3, images_per_class=4, size=(64, 48))
    write_sop(root, classes=3, images_per_class=4, size=(64, 48))
    write_inshop(root, items=3, images_per_item=4, size=(48, 48))
    return root


def fresh(tmp_path, name, **kwargs):
    WRITERS[name](tmp_path, size=(48, 40), **kwargs)
    return tmp_path


def set_line(path, index, text):
    """Replace one line of a list file."""
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# Parsing and splits


def test_cub_split_by_class_not_split_file(data_root):
    splits = load_splits(DataConfig(dataset="cub", **SMALL), location=DataLocation(data_root))
    assert splits.class_ids["train"] == ("1", "2", "3")
    assert splits.class_ids["test"] == ("101", "102", "103")
    assert len(splits.train) == 12
    assert len(splits.test) == 12
    assert sorted(set(splits.test_labels.tolist())) == [0, 1, 2]


def test_cars_ignores_test_flag_and_remaps(data_root):
    splits = load_splits(DataConfig(dataset="cars", **SMALL), location=DataLocation(data_root))
    assert splits.class_ids["train"] == ("1", "2", "3")
    assert splits.class_ids["test"] == ("99", "100", "101")
    assert splits.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert splits.test_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_sop_reads_both_lists_skipping_header(data_root):
    parsed = parse_dataset("sop", data_root)
    assert len(parsed.split_entries("train")) == 12
    assert len(parsed.split_entries("test")) == 12
    assert parsed.problems == []


def test_inshop_query_gallery_share_label_map(data_root):
    splits = load_splits(DataConfig(dataset="inshop", **SMALL), location=DataLocation(data_root))
    query_paths = set(splits.test.paths)
    gallery_paths = set(splits.gallery.paths)
    assert not query_paths & gallery_paths
    item_of = lambda path: path.split("/")[3]  # noqa: E731
    for dataset, labels in ((splits.test, splits.test_labels), (splits.gallery, splits.gallery_labels)):
        for path, label in zip(dataset.paths, labels):
            assert label == int(item_of(path)[3:]) - 4


def test_inshop_identical_pairs_give_recall_one(data_root):
    splits = load_splits(DataConfig(dataset="inshop", **SMALL), location=DataLocation(data_root))
    embed = lambda dataset: np.stack([dataset[i][0].flatten().numpy() for i in range(len(dataset))])  # noqa: E731
    result = evaluate_retrieval(
        embed(splits.test), splits.test_labels, [1], embed(splits.gallery), splits.gallery_labels, compute_nmi=False
    )
    assert result.values["recall@1"] == 1.0


def test_grayscale_and_cmyk_become_rgb(data_root):
    folder = data_root / "CUB_200_2011" / "images"
    modes = set()
    for path in sorted(folder.rglob("*.jpg"))[:3]:
        from PIL import Image

        with Image.open(path) as image:
            modes.add(image.mode)
        assert decode(path).mode == "RGB"
    assert {"L", "CMYK"} <= modes
    splits = load_splits(DataConfig(dataset="cub", **SMALL), location=DataLocation(data_root))
    assert splits.train[0][0].shape == (3, 32, 32)


def test_validation_split_is_class_disjoint(tmp_path):
    root = fresh(tmp_path, "cub", classes=4, images_per_class=3)
    splits = load_splits(DataConfig(dataset="cub", val_fraction=0.5, **SMALL), location=DataLocation(root))
    assert splits.class_ids["train"] == ("1", "2")
    assert splits.class_ids["val"] == ("3", "4")
    assert len(splits.val) == 6
    assert splits.val_labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_count_differences_are_warnings(data_root):
    splits = load_splits(DataConfig(dataset="cub", **SMALL), location=DataLocation(data_root))
    assert len(splits.warnings) == 2
    assert "published: 5864 images of 100 classes" in splits.warnings[0]


def test_manifest_changes_with_file_size(tmp_path):
    root = fresh(tmp_path, "sop")
    first = load_splits(DataConfig(dataset="sop", **SMALL), location=DataLocation(root)).manifest
    image = next((root / "Stanford_Online_Products").rglob("*.JPG"))
    image.write_bytes(image.read_bytes() + b"\0")
    from harness import data

    data._PARSED.clear()
    second = load_splits(DataConfig(dataset="sop", **SMALL), location=DataLocation(root)).manifest
    assert first["files"] == second["files"] == 24
    assert first["sha256"] != second["sha256"]


# ---------------------------------------------------------------------------
# Errors and checks


def test_missing_dataset_names_path_files_and_source(tmp_path):
    with pytest.raises(HarnessError) as error:
        parse_dataset("cars", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "cars196") in message
    assert "cars_annos.mat" in message
    assert "car_ims" in message
    assert "Download it from" in message


def test_data_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(tmp_path))
    assert resolve_data_root(None) == tmp_path
    monkeypatch.delenv("HARNESS_DATA_ROOT")
    with pytest.raises(HarnessError, match="--data-root"):
        resolve_data_root(None)


def test_entry_outside_dataset_rejected(tmp_path):
    root = fresh(tmp_path, "sop")
    listing = root / "Stanford_Online_Products" / "Ebay_train.txt"
    lines = listing.read_text().splitlines()
    lines.append("99 1 1 ../../etc/passwd")
    listing.write_text("\n".join(lines) + "\n")
    parsed = parse_dataset("sop", root)
    assert [p.kind for p in parsed.problems] == ["outside"]
    assert "../../etc/passwd" in parsed.problems[0].message
    assert all(".." not in entry.path for entry in parsed.entries)


def test_duplicate_and_missing_entries_found(tmp_path):
    root = fresh(tmp_path, "inshop")
    listing = root / "InShop" / "list_eval_partition.txt"
    lines = listing.read_text().splitlines()
    lines += [lines[2], "img/WOMEN/Dresses/id_99999999/00_1_front.jpg id_99999999 train"]
    lines[0] = str(len(lines) - 2)
    listing.write_text("\n".join(lines) + "\n")
    kinds = sorted(p.kind for p in parse_dataset("inshop", root).problems)
    assert kinds == ["duplicate", "missing"]


def test_truncated_image_found_by_check(tmp_path):
    root = fresh(tmp_path, "cub")
    image = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[5]
    image.write_bytes(image.read_bytes()[:300])
    _, problems = check_download("cub", root, count_check=False)
    assert [p.kind for p in problems] == ["unreadable"]
    assert image.name in problems[0].message


def test_malformed_list_line_names_file_and_line(tmp_path):
    root = fresh(tmp_path, "cub")
    set_line(root / "CUB_200_2011" / "image_class_labels.txt", 2, "3")
    with pytest.raises(HarnessError, match=r"image_class_labels.txt line 3: expected 2 fields"):
        parse_dataset("cub", root)


def test_inshop_count_line_checked(tmp_path):
    root = fresh(tmp_path, "inshop")
    set_line(root / "InShop" / "list_eval_partition.txt", 0, "5")
    with pytest.raises(HarnessError, match="line 1 declares 5 images"):
        parse_dataset("inshop", root)


def test_count_check_compares_published(data_root):
    problems = count_problems(parse_dataset("cub", data_root))
    assert [p.kind for p in problems] == ["count", "count"]


def test_data_check_cli_exit_codes(runner, tmp_path):
    root = fresh(tmp_path, "cars")
    clean = runner.invoke(app, ["data", "check", "--dataset", "cars", "--data-root", str(root), "--no-count-check"])
    assert clean.exit_code == 0, clean.output
    assert "no problems found" in clean.output
    counted = runner.invoke(app, ["data", "check", "--dataset", "cars", "--data-root", str(root)])
    assert counted.exit_code == 1
    assert "published: 8054 images of 98 classes" in " ".join(counted.output.split())
    next((root / "cars196" / "car_ims").glob("*.jpg")).unlink()
    broken = runner.invoke(app, ["data", "check", "--dataset", "cars", "--data-root", str(root), "--no-count-check"])
    assert broken.exit_code == 1
    assert "missing" in broken.output


def test_run_stops_on_broken_download(runner, tmp_path):
    root = fresh(tmp_path, "sop")
    next((root / "Stanford_Online_Products").rglob("*.JPG")).unlink()
    result = runner.invoke(
        app, ["run", "--loss", "sgsl", "--dataset", "sop", "--data-root", str(root), "--results-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "harness data check --dataset sop" in " ".join(result.output.split())
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())


# ---------------------------------------------------------------------------
# Image pipeline and cache


def test_train_crop_independent_of_worker_order(data_root):
    pipeline = ImagePipeline((40, 40), 32, "random_crop", True)
    paths = [e.path for e in parse_dataset("cub", data_root).split_entries("train")]
    dataset = ImageDataset(data_root / "CUB_200_2011", paths, np.zeros(len(paths)), pipeline, True, seed=7)
    dataset.set_epoch(2)
    first = dataset[3][0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batched = next(iter(loader))[0]
    assert torch.equal(batched[3], first)
    dataset.set_epoch(3)
    assert not torch.equal(dataset[3][0], first)
    assert sample_seed(7, 2, 3) != sample_seed(7, 3, 2)


def test_cache_gives_identical_pixels(tmp_path):
    root = fresh(tmp_path, "cub")
    location = DataLocation(root, tmp_path / "cache")
    plain = load_splits(DataConfig(dataset="cub", **SMALL), seed=1, location=location)
    cached = load_splits(DataConfig(dataset="cub", cache=True, **SMALL), seed=1, location=location)
    assert cached.train.cache_file is not None
    for index in (0, 5, 11):
        assert torch.equal(plain.train[index][0], cached.train[index][0])
        assert torch.equal(plain.test[index][0], cached.test[index][0])
    assert cached.warnings == plain.warnings


def test_cache_reused_then_invalidated(tmp_path):
    root = fresh(tmp_path, "cub")
    folder = root / "CUB_200_2011"
    paths = sorted(e.path for e in parse_dataset("cub", root).entries)
    pipeline = ImagePipeline((40, 40), 32, "random_crop", True)
    first = build_cache(folder, paths, pipeline, tmp_path / "cache", "cub", 0)
    stamp = first.stat().st_mtime_ns
    assert build_cache(folder, paths, pipeline, tmp_path / "cache", "cub", 0) == first
    assert first.stat().st_mtime_ns == stamp
    image = folder / paths[0]
    image.write_bytes(image.read_bytes() + b"\0")
    assert build_cache(folder, paths, pipeline, tmp_path / "cache", "cub", 0) != first
    other_size = ImagePipeline((48, 48), 32, "random_crop", True)
    assert build_cache(folder, paths, other_size, tmp_path / "cache", "cub", 0).name.startswith("cub-48x48-")
    assert json.loads(first.with_suffix(".json").read_text())["images"] == len(paths)


def test_cache_hash_only_when_deviation():
    protocol = load_protocol(None, "cub")

    def config_hash(*items):
        return resolve_config(protocol, "cub", "sgsl", parse_overrides(list(items))).config_hash

    assert config_hash("data.cache=true") == config_hash("data.cache=false")
    assert config_hash("data.num_workers=0") == config_hash("data.num_workers=3")
    rrc = "data.train_crop='random_resized_crop'"
    assert config_hash(rrc, "data.cache=true") != config_hash(rrc, "data.cache=false")


def test_deviation_warning_stored(tmp_path):
    root = fresh(tmp_path, "cub")
    config = DataConfig(dataset="cub", train_crop="random_resized_crop", resize=(40,), cache=True, image_size=32, num_workers=0)
    splits = load_splits(config, location=DataLocation(root, tmp_path / "cache"))
    assert any("deviation" in warning for warning in splits.warnings)
    assert splits.train[0][0].shape == (3, 32, 32)


def test_class_balanced_batches(data_root):
    from harness.training import build_train_loader

    config = resolve_config(load_protocol(None, "cub"), "cub", "sgsl", {("data", "batch_size"): 6, ("data", "images_per_class"): 2})
    splits = load_splits(DataConfig(dataset="cub", **SMALL), location=DataLocation(data_root))
    loader = build_train_loader(splits.train, splits.train_labels, config, seed=0)
    assert len(loader) == 2
    for _, labels in loader:
        assert sorted(np.bincount(labels.numpy()).tolist()) == [2, 2, 2]


# ---------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("dataset", ["cub", "cars", "sop", "inshop"])
def test_run_on_fixture(runner, data_root, tmp_path, dataset):
    results = tmp_path / "results"
    args = ["run", "--loss", "sgsl", "--dataset", dataset, "--data-root", str(data_root), "--results-dir", str(results)]
    args += ["--quiet", "--set", "model.backbone=resnet10t", "--set", "data.resize=[40,40]", "--set", "data.image_size=32"]
    args += ["--set", "train.epochs=2", "--set", "data.batch_size=6", "--set", "data.images_per_class=2"]
    args += ["--set", "data.num_workers=0", "--set", "train.lr=0.01"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = next((results / "runs").iterdir())
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "finished"
    assert status["warnings"]
    assert status["dataset_manifest"]["files"] > 0
    import pandas as pd

    metrics = pd.read_parquet(folder / "metrics.parquet")
    expected_k = {"cub": [1, 2, 4, 8], "cars": [1, 2, 4, 8], "sop": [1, 10, 100, 1000], "inshop": [1, 10, 20, 30, 40, 50]}
    last = metrics[metrics["selection"] == "last"]
    recalls = sorted(int(m.split("@")[1]) for m in last["metric"] if m.startswith("recall@"))
    assert recalls == expected_k[dataset]
    assert set(metrics["selection"]) == {"last", "best-test"}
    assert metrics.loc[metrics["selection"] == "best-test", "optimistic"].all()
    assert any("random initialization" in warning for warning in status["warnings"])
    stored = np.load(folder / "embeddings" / "test.npz")
    assert stored[stored.files[0]].dtype == np.float16
    if dataset == "inshop":
        assert sorted(stored.files) == ["gallery_embeddings", "gallery_labels", "query_embeddings", "query_labels"]
    else:
        assert sorted(stored.files) == ["embeddings", "labels"]
    recheck = runner.invoke(app, ["evaluate", folder.name, "--results-dir", str(results)])
    assert recheck.exit_code == 0, recheck.output
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert "⚠" in (tmp_path / "report" / "report.md").read_text()


def test_cub_images_list_faults(tmp_path):
    root = fresh(tmp_path, "cub")
    images = root / "CUB_200_2011" / "images.txt"
    lines = images.read_text().splitlines()
    images.write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(HarnessError, match=r"images.txt line 25: image id 3 is listed again \(first at line 3\)"):
        parse_dataset("cub", root)
    images.write_text("\n".join(lines + ["99 ../../etc/passwd"]) + "\n")
    with pytest.raises(HarnessError, match="gives no class, first id 99 at line 25"):
        parse_dataset("cub", root)


def test_run_names_undecodable_file(runner, tmp_path):
    root = fresh(tmp_path, "cub")
    image = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    image.write_bytes(image.read_bytes()[:300])
    args = ["run", "--loss", "sgsl", "--dataset", "cub", "--data-root", str(root), "--results-dir", str(tmp_path / "r")]
    args += ["--quiet", "--set", "model.backbone=resnet10t", "--set", "data.resize=[36,36]", "--set", "data.image_size=32"]
    args += ["--set", "train.epochs=2", "--set", "data.batch_size=4", "--set", "data.images_per_class=2", "--set", "data.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert image.name in result.output


def test_validation_classes_by_class_id():
    from harness.data import validation_classes

    assert validation_classes({"1", "2", "10", "3"}, 0.5) == {"3", "10"}
    assert validation_classes({"1", "2"}, 0.0) == set()
    with pytest.raises(HarnessError, match="at least one must stay for training"):
        validation_classes({"1", "2"}, 0.9)
