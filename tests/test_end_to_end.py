"""End-to-end runs on the digits data: store layout, skipping, failures, determinism and report."""

import json

import pandas as pd

from harness.cli import app
from harness.errors import ConfigError
from harness.training import TrainingFailed

from conftest import TINY


def run_cli(runner, results, *args):
    result = runner.invoke(app, ["run", "--dataset", "digits", "--results-dir", str(results), "--quiet", *TINY, *args])
    return result


def run_folders(results):
    return sorted(p for p in (results / "runs").iterdir() if p.is_dir())


def test_run_store_skip_and_report(runner, tmp_path):
    results = tmp_path / "results"
    result = run_cli(runner, results, "--loss", "sgsl,softmax", "--seeds", "2")
    assert result.exit_code == 0, result.output

    folders = run_folders(results)
    assert len(folders) == 4
    for folder in folders:
        for name in ("config.json", "status.json", "metrics.parquet", "history.parquet", "env.json"):
            assert (folder / name).is_file(), f"{folder.name}/{name}"
        assert not list(folder.glob("*.tmp"))

    folder = folders[0]
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "finished"
    assert status["wall_seconds"] > 0
    assert status["data"]["train_classes"] == 5
    config = json.loads((folder / "config.json").read_text())
    assert folder.name == config["run_id"]
    assert config["config_hash"][:12] in folder.name

    metrics = pd.read_parquet(folder / "metrics.parquet")
    for column in ("run_id", "loss", "dataset", "protocol", "config_hash", "seed", "split", "selection", "metric", "value", "excluded_queries"):
        assert column in metrics.columns, column
    assert set(metrics["metric"]) == {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi"}
    assert set(metrics["selection"]) == {"last", "best-test"}
    assert metrics["value"].between(0, 1).all()

    history = pd.read_parquet(folder / "history.parquet")
    assert list(history["epoch"]) == [1]
    assert {"train_loss", "lr_backbone", "lr_head", "lr_loss", "seconds"} <= set(history.columns)

    env = json.loads((folder / "env.json").read_text())
    assert "torch" in env["packages"]
    assert env["python"]

    again = run_cli(runner, results, "--loss", "sgsl,softmax", "--seeds", "2")
    assert again.exit_code == 0
    assert again.output.count("already finished, skipped") == 4

    forced = run_cli(runner, results, "--loss", "sgsl", "--seed", "1", "--force")
    assert forced.exit_code == 0
    assert "1 run(s) finished" in forced.output

    out = tmp_path / "report"
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)])
    assert report.exit_code == 0, report.output
    markdown = (out / "report.md").read_text()
    assert "## digits" in markdown
    assert "| sgsl | default | 2 | 0 |  |" in markdown
    assert "| softmax | default | 2 | 0 |  |" in markdown
    html = (out / "report.html").read_text()
    assert html.count("<table>") >= 2
    assert html.count("data:image/png;base64,") == 3
    assert (out / "digits_training_loss.png").stat().st_size > 1000
    assert (out / "digits_recall_at_k.png").stat().st_size > 1000

    again_out = tmp_path / "report-again"
    assert runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(again_out)]).exit_code == 0
    for path in sorted(out.iterdir()):
        assert path.read_bytes() == (again_out / path.name).read_bytes(), f"{path.name} differs between two reports"

    # A report into a used folder first removes the files the last report
    # wrote there, such as a stale table of another dataset. A user's own file stays.
    manifest = out / "report_files.txt"
    assert "report.md" in manifest.read_text().splitlines()
    (out / "cub_summary.csv").write_text("stale")
    manifest.write_text(manifest.read_text() + "cub_summary.csv\n")
    (out / "notes.txt").write_text("mine")
    assert runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)]).exit_code == 0
    assert not (out / "cub_summary.csv").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "report.md").exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    below_file = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(blocker / "sub")])
    assert below_file.exit_code == 2
    assert "cannot be created" in " ".join(below_file.output.split())


def test_same_seed_gives_same_metrics(runner, tmp_path):
    for name in ("first", "second"):
        assert run_cli(runner, tmp_path / name, "--loss", "normsoftmax", "--seed", "3").exit_code == 0
    first = pd.read_parquet(run_folders(tmp_path / "first")[0] / "metrics.parquet")
    assert len(first) > 0
    second = pd.read_parquet(run_folders(tmp_path / "second")[0] / "metrics.parquet")
    pd.testing.assert_frame_equal(first, second)
    first_history = pd.read_parquet(run_folders(tmp_path / "first")[0] / "history.parquet")
    second_history = pd.read_parquet(run_folders(tmp_path / "second")[0] / "history.parquet")
    assert first_history["train_loss"].tolist() == second_history["train_loss"].tolist()


def test_failed_run_recorded_and_counted(runner, tmp_path, monkeypatch):
    results = tmp_path / "results"
    assert run_cli(runner, results, "--loss", "sgsl", "--seed", "0").exit_code == 0

    def diverge(config, seed, *args, **kwargs):
        raise TrainingFailed("loss is nan at epoch 1, batch 3")

    monkeypatch.setattr("harness.runner.train_and_evaluate", diverge)
    result = run_cli(runner, results, "--loss", "sgsl", "--seed", "1")
    assert result.exit_code == 1
    assert "failed" in result.output
    failed = [f for f in run_folders(results) if f.name.endswith("-s1")][0]
    status = json.loads((failed / "status.json").read_text())
    assert status["state"] == "failed"
    assert "loss is nan" in status["reason"]
    assert not (failed / "metrics.parquet").exists()
    assert "TrainingFailed" in (failed / "error.log").read_text()

    out = tmp_path / "report"
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)])
    assert report.exit_code == 0, report.output
    markdown = (out / "report.md").read_text()
    assert "1 finished run(s), 1 failed or unfinished." in markdown
    assert "| sgsl | default | 1 | 1 |  |" in markdown

    monkeypatch.undo()
    diverged = run_cli(runner, results, "--loss", "sgsl", "--seed", "0", "--set", "train.lr=1e30")
    assert diverged.exit_code == 1
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)])
    assert report.exit_code == 0, report.output
    markdown = (out / "report.md").read_text()
    assert "| sgsl (train.lr=1e+30) | default | 0 | 1 |  | no finished run |" in markdown


def test_user_error_during_run_stops_without_traceback(runner, tmp_path, monkeypatch):
    def bad_input(config, seed, *args, **kwargs):
        raise ConfigError("data root /nowhere not found")

    monkeypatch.setattr("harness.runner.train_and_evaluate", bad_input)
    result = run_cli(runner, tmp_path / "results", "--loss", "sgsl", "--seeds", "2")
    assert result.exit_code == 2
    assert "data root /nowhere not found" in result.output
    assert "Traceback" not in result.output


def test_nan_loss_fails_run(runner, tmp_path):
    result = run_cli(runner, tmp_path / "results", "--loss", "softmax", "--seed", "0", "--set", "train.lr=1e30")
    folder = run_folders(tmp_path / "results")[0]
    status = json.loads((folder / "status.json").read_text())
    assert result.exit_code == 1
    assert status["state"] == "failed"
    assert "loss is" in status["reason"]
