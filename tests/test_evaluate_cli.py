"""harness evaluate: re-checking a run from its stored embeddings, and scoring outside files."""

import json

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

    # Rechecked on another backend, the output says that rounding may differ.
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
    expected = evaluate_retrieval(embeddings, labels, [1, 2, 4])
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
        ({"embeddings": np.ones((3, 2), np.float32)}, "missing arrays"),
        ({"embeddings": np.ones((3, 2), np.float32), "labels": np.zeros(2, int)}, "array 'labels' has shape"),
        ({"embeddings": np.full((3, 2), np.nan, np.float32), "labels": np.zeros(3, int)}, "array 'embeddings' contains NaN"),
        ({"embeddings": np.ones((3, 2), np.int32), "labels": np.zeros(3, int)}, "array 'embeddings' has dtype int32"),
        ({"embeddings": np.ones((3, 2), np.float32), "labels": np.zeros(3)}, "array 'labels' has dtype float64"),
        (
            {"embeddings": np.array([[1, 0], [0, 0], [0, 0]], np.float32), "labels": np.zeros(3, int)},
            "array 'embeddings' has 2 all-zero rows (first at index 1)",
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
    assert "eval.search: 'gpu' needs a faiss build with GPU support" in " ".join(gpu.output.split())
    assert "Traceback" not in gpu.output
