"""harness evaluate: re-checking a run from its stored embeddings, and scoring outside files."""

import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from test_metrics import FakeGpuFaiss

from harness.cli import app
from harness.evaluation import evaluate_retrieval


def test_run_recomputes_exactly_then_detects_tampering(runner, tmp_path, monkeypatch):
    results = tmp_path / "results"
    run = runner.invoke(app, ["run", "--loss", "sgsl", "--dataset", "digits", "--results-dir", str(results), "--quiet", *TINY])
    assert run.exit_code == 0, run.output
    folder = next((results / "runs").iterdir())
    result = runner.invoke(app, ["evaluate", folder.name, "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    assert "NO" not in result.output
    assert "note:" not in result.output
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert set(metrics["search"]) == {"cpu"}

    # Rechecked on another backend, the output notes that rounding may differ.
    FakeGpuFaiss().install(monkeypatch)
    on_gpu = runner.invoke(app, ["evaluate", folder.name, "--results-dir", str(results), "--search", "gpu"])
    assert "computed with cpu score blocks and these with gpu" in " ".join(on_gpu.output.split())
    monkeypatch.undo()

    path = folder / "embeddings" / "test.npz"
    arrays = dict(np.load(path))
    arrays["embeddings"] = arrays["embeddings"][::-1].copy()
    np.savez(path, **arrays)
    tampered = runner.invoke(app, ["evaluate", folder.name, "--results-dir", str(results)])
    assert tampered.exit_code == 1
    assert "mismatch" in tampered.output


def test_outside_file_matches_direct_evaluation(runner, tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    labels = rng.integers(0, 6, 120)
    embeddings = (centres[labels] + rng.normal(size=(120, 8))).astype(np.float32)
    path = tmp_path / "outside.npz"
    np.savez(path, embeddings=embeddings, labels=labels)
    result = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1,2,4", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    # A file is scored with the harness's eval defaults: k-means seed 0, three restarts.
    expected = evaluate_retrieval(embeddings, labels, [1, 2, 4], seed=0, kmeans_restarts=3)
    for metric, value in expected.values.items():
        assert printed[metric] == pytest.approx(value, abs=1e-12)
    assert printed["excluded_queries"] == 0

    # The library reference of the cross-check gives the same values.
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count"
    )
    normalized = torch.nn.functional.normalize(torch.from_numpy(embeddings), dim=1)
    reference = calculator.get_accuracy(normalized, torch.from_numpy(labels))
    assert printed["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert printed["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert printed["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)


def test_query_gallery_file(runner, tmp_path):
    path = tmp_path / "inshop.npz"
    query = np.eye(3, dtype=np.float32)
    np.savez(path, query_embeddings=query, query_labels=np.arange(3), gallery_embeddings=query.copy(), gallery_labels=np.arange(3))
    result = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recall@1"] == 1.0


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"embeddings": np.ones((3, 2), np.float32)}, "missing 'labels'; found ['embeddings']"),
        (
            {"query_embeddings": np.eye(2, dtype=np.float32), "query_labels": np.zeros(2, int)},
            "missing 'gallery_embeddings', 'gallery_labels'",
        ),
        ({"embeddings": np.ones((3, 0), np.float32), "labels": np.zeros(3, int)}, "has shape (3, 0); expected (N, D)"),
        ({"embeddings": np.eye(3, dtype=np.float32), "labels": np.array([0, 0.5, 1])}, "'labels' contains non-integer"),
        (
            {
                "query_embeddings": np.eye(2, dtype=np.float32),
                "query_labels": np.zeros(2, int),
                "gallery_embeddings": np.eye(3, dtype=np.float32),
                "gallery_labels": np.zeros(3, int),
            },
            "'gallery_embeddings' has 3. Compute both with the same model",
        ),
        (
            {"embeddings": np.array([[1, 0], [np.inf, 0], [1, 1]], np.float32), "labels": np.zeros(3, int)},
            "infinite values in 1 row (first at index 1)",
        ),
        ({"embeddings": np.ones((3, 2), np.float32), "labels": np.zeros(2, int)}, "array 'labels' has shape"),
        ({"embeddings": np.full((3, 2), np.nan, np.float32), "labels": np.zeros(3, int)}, "array 'embeddings' contains NaN"),
        ({"embeddings": np.ones((3, 2), np.int32), "labels": np.zeros(3, int)}, "array 'embeddings' has dtype int32"),
        ({"embeddings": np.ones((3, 2), np.float32), "labels": np.zeros(3)}, "array 'labels' has dtype float64"),
        (
            {"embeddings": np.array([[1, 0], [0, 0], [0, 0]], np.float32), "labels": np.zeros(3, int)},
            "array 'embeddings' has 2 all-zero rows (first at index 1)",
        ),
        (
            {"embeddings": np.array([[1, 0], [0, 0], [1, 1]], np.float32), "labels": np.zeros(3, int)},
            "array 'embeddings' has 1 all-zero row (first at index 1)",
        ),
        (
            {
                "embeddings": np.eye(2, dtype=np.float32),
                "labels": np.zeros(2, int),
                "query_embeddings": np.eye(2, dtype=np.float32),
            },
            "contains arrays of both layouts",
        ),
    ],
)
def test_malformed_files_name_the_array(runner, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = runner.invoke(app, ["evaluate", "--embeddings", str(path)])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_evaluate_needs_one_source(runner):
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2
    assert "either RUN_ID or --embeddings" in result.output


def test_search_option(runner, tmp_path):
    path = tmp_path / "outside.npz"
    np.savez(path, embeddings=np.eye(4, dtype=np.float32) + 0.1, labels=np.array([0, 0, 1, 1]))
    cpu = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1", "--json", "--search", "cpu"])
    assert cpu.exit_code == 0, cpu.output
    gpu = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--search", "gpu"])
    assert gpu.exit_code == 2
    assert "eval.search (--search): 'gpu' needs a faiss build with GPU support" in " ".join(gpu.output.split())
    assert "Traceback" not in gpu.output
    unknown = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--search", "tpu"])
    assert unknown.exit_code == 2
    assert "eval.search (--search): expected one of auto, cpu, gpu, got 'tpu'" in " ".join(unknown.output.split())


def write_unreadable(path, kind):
    """Write a file that np.load cannot read as an archive of plain arrays."""
    rng = np.random.default_rng(0)
    if kind == "npy":
        with open(path, "wb") as handle:
            np.save(handle, rng.normal(size=(4, 2)))
    elif kind == "truncated":
        np.savez(path, embeddings=rng.normal(size=(200, 8)), labels=np.arange(200) % 5)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("embeddings,labels\n")
    elif kind == "objects":
        np.savez(path, embeddings=np.array([{"a": 1}, None], dtype=object), labels=np.zeros(2, int))
    elif kind == "npy-objects":
        np.save(path.with_suffix(".npy"), np.array([{"a": 1}, None], dtype=object))
        path.with_suffix(".npy").rename(path)
    elif kind == "raw-entry":
        # A zip archive whose .npy entries lack NumPy's header: np.load returns bytes for them.
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("embeddings.npy", b"garbage")
            archive.writestr("labels.npy", b"garbage")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("npy", "contains a single array (a .npy file)"),
        ("truncated", "may be empty or truncated"),
        ("empty", "may be empty or truncated"),
        ("text", "it is not a NumPy file"),
        ("objects", "contains Python objects, which are not read for safety"),
        ("npy-objects", "contains Python objects, which are not read for safety"),
        ("raw-entry", "array 'embeddings' cannot be read (its entry is not in NumPy's .npy format)"),
    ],
)
def test_unreadable_files_rejected_with_the_fix(runner, tmp_path, kind, message):
    path = tmp_path / "bad.npz"
    write_unreadable(path, kind)
    result = runner.invoke(app, ["evaluate", "--embeddings", str(path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert message in output
    assert "np.savez(path, embeddings=..., labels=...)" in output
    assert "allow_pickle" not in output
    assert "Traceback" not in result.output


def test_missing_file_named(runner, tmp_path):
    result = runner.invoke(app, ["evaluate", "--embeddings", str(tmp_path / "nowhere.npz")])
    assert result.exit_code == 2
    assert "nowhere.npz: file not found" in " ".join(result.output.split())
    folder = runner.invoke(app, ["evaluate", "--embeddings", str(tmp_path)])
    assert folder.exit_code == 2
    assert "is a folder, not a file" in " ".join(folder.output.split())


@pytest.mark.parametrize("factor, dtype", [(1e30, np.float32), (1e-30, np.float32), (1e-50, np.float64), (1e40, np.float64)])
def test_extreme_magnitudes_give_the_unscaled_metrics(runner, tmp_path, factor, dtype):
    # Cosine similarity ignores scale, so the metrics must not change.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 300)
    embeddings = rng.normal(size=(8, 16))[labels] + 1.5 * rng.normal(size=(300, 16))
    plain, scaled = tmp_path / "plain.npz", tmp_path / "scaled.npz"
    np.savez(plain, embeddings=embeddings.astype(np.float32), labels=labels)
    np.savez(scaled, embeddings=(embeddings.astype(dtype) * dtype(factor)), labels=labels)
    results = []
    for path in (plain, scaled):
        result = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--json"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output))
    for metric in ("recall@1", "recall@8", "map@r", "r_precision"):
        assert results[1][metric] == pytest.approx(results[0][metric], abs=1e-6), metric


def test_k_option_checked_and_clipping_shown(runner, tmp_path):
    path = tmp_path / "small.npz"
    np.savez(path, embeddings=np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32), labels=np.arange(10) % 3)
    clipped = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1,50"])
    assert clipped.exit_code == 0, clipped.output
    assert "clipped to it: 50" in " ".join(clipped.output.split())
    as_json = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1,50", "--json"])
    assert json.loads(as_json.output)["clipped_k"] == [50]
    ordered = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "4,1,4", "--json"])
    assert [key for key in json.loads(ordered.output) if key.startswith("recall@")] == ["recall@1", "recall@4"]
    for bad in ("1,,2", "0", "a", ""):
        result = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", bad])
        assert result.exit_code == 2, bad
        assert "--k: invalid value" in result.output


@pytest.mark.parametrize(
    "options, named",
    [
        (["--json"], "--json applies only"),
        (["--k", "1", "--json"], "--k, --json apply only"),
        (["--no-nmi"], "--nmi/--no-nmi applies only"),
        (["--seed", "3", "--kmeans-restarts", "2"], "--seed, --kmeans-restarts apply only"),
    ],
)
def test_file_options_rejected_with_run_id(runner, tmp_path, options, named):
    result = runner.invoke(app, ["evaluate", "some-run", "--results-dir", str(tmp_path), *options])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"{named} with --embeddings" in output
    assert f"--embeddings {tmp_path / 'runs' / 'some-run' / 'embeddings' / 'test.npz'}" in output


def test_bad_run_ids_named(runner, tmp_path):
    results = tmp_path / "results"
    run = runner.invoke(app, ["run", "--loss", "sgsl", "--dataset", "digits", "--results-dir", str(results), "--quiet", *TINY])
    assert run.exit_code == 0, run.output
    folder = next((results / "runs").iterdir())

    def message(run_id):
        result = runner.invoke(app, ["evaluate", run_id, "--results-dir", str(results)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    assert f"no run 'nosuch' in {results / 'runs'} (runs there: {folder.name})" in message("nosuch")
    assert "--results-dir" in message("nosuch")
    for path_like in (str(folder), f"../runs/{folder.name}", ".."):
        assert "invalid run id" in message(path_like)

    copy = results / "runs" / "copy"
    shutil.copytree(folder, copy)
    (copy / "embeddings" / "test.npz").unlink()
    assert f"{copy / 'embeddings' / 'test.npz'} is missing. It was deleted" in message("copy")
    shutil.copy(folder / "embeddings" / "test.npz", copy / "embeddings" / "test.npz")
    (copy / "config.json").write_text("{")
    assert f"{copy / 'config.json'}: damaged, not valid JSON" in message("copy")
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(tmp_path / "report")])
    assert report.exit_code == 2
    assert f"{copy / 'config.json'}: damaged, not valid JSON" in " ".join(report.output.split())
    status = json.loads((copy / "status.json").read_text())
    (copy / "status.json").write_text(json.dumps({**status, "state": "running"}))
    assert "has not finished (state: running)" in message("copy")
    assert "harness run --resume copy" in message("copy")
    (copy / "status.json").write_text(json.dumps({**status, "state": "failed", "reason": "loss became NaN"}))
    assert "It failed: loss became NaN." in message("copy")


def test_file_nmi_options(runner, tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 6))
    labels = rng.integers(0, 5, 90)
    embeddings = (centres[labels] + 1.5 * rng.normal(size=(90, 6))).astype(np.float32)
    path = tmp_path / "file.npz"
    np.savez(path, embeddings=embeddings, labels=labels)

    def scored(*options):
        result = runner.invoke(app, ["evaluate", "--embeddings", str(path), "--k", "1", "--json", *options])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert "nmi" not in scored("--no-nmi")
    chosen = scored("--seed", "7", "--kmeans-restarts", "2")["nmi"]
    expected = evaluate_retrieval(embeddings, labels, [1], seed=7, kmeans_restarts=2).values["nmi"]
    assert chosen == expected
    for options, message in (
        (["--seed", "-1"], "--seed: invalid value -1"),
        (["--seed", "2147483648"], "--seed: invalid value 2147483648"),
        (["--kmeans-restarts", "0"], "--kmeans-restarts: invalid value 0"),
    ):
        result = runner.invoke(app, ["evaluate", "--embeddings", str(path), *options])
        assert result.exit_code == 2, options
        assert message in result.output


def test_run_file_scored_as_outside_file(runner, tmp_path):
    # With the run's seed and k-means restarts, scoring its stored file as an
    # outside file gives the stored metrics, NMI included.
    results = tmp_path / "results"
    run = runner.invoke(
        app, ["run", "--loss", "softmax", "--dataset", "digits", "--seed", "2", "--results-dir", str(results), "--quiet", *TINY]
    )
    assert run.exit_code == 0, run.output
    folder = next((results / "runs").iterdir())
    metrics = pd.read_parquet(folder / "metrics.parquet")
    stored = dict(zip(metrics[metrics["primary"]]["metric"], metrics[metrics["primary"]]["value"]))
    options = ["--k", "1,2,4,8", "--json", "--seed", "2", "--kmeans-restarts", "1"]
    result = runner.invoke(app, ["evaluate", "--embeddings", str(folder / "embeddings" / "test.npz"), *options])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert {metric: printed[metric] for metric in stored} == stored
