"""Training options: schedules, warm-up, BatchNorm freezing, clipping, precision, and resuming."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cli import app
from harness.config import ModelConfig, TrainConfig, load_protocol, parse_overrides, resolve_config
from harness.model import build_model
from harness.training import parameter_groups, prepare_backbone, schedule_factor, train_step
from losses import LOSSES


def test_schedule_factors():
    step = TrainConfig(epochs=10, schedule="step", step_size=3, lr_decay=0.5)
    assert [schedule_factor(step, e) for e in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    multistep = TrainConfig(epochs=31, schedule="multistep", milestones=(16,), lr_decay=0.1)
    assert schedule_factor(multistep, 15) == 1
    assert schedule_factor(multistep, 16) == pytest.approx(0.1)
    cosine = TrainConfig(epochs=4, schedule="cosine")
    assert schedule_factor(cosine, 0) == 1
    assert schedule_factor(cosine, 2) == pytest.approx(0.5)
    assert schedule_factor(TrainConfig(), 50) == 1


def small_setup(freeze_bn="none"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=8))
    loss = LOSSES["sgsl"](3, 8)
    config = resolve_config(load_protocol(None, "digits"), "digits", "sgsl", {})
    optimizer = torch.optim.SGD(parameter_groups(model, loss, config), lr=0.1)
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return model, loss, optimizer, images, labels


def test_warm_up_trains_only_new_parameters():
    model, loss, optimizer, images, labels = small_setup()
    backbone_before = [p.detach().clone() for p in model.backbone.parameters()]
    stats_before = model.backbone.bn1.running_mean.clone() if hasattr(model.backbone, "bn1") else None
    head_before = model.embedding.weight.detach().clone()
    class_weights_before = loss.weight.detach().clone()

    prepare_backbone(model, warm_up=True, freeze_bn="none")
    train_step(model, loss, optimizer, images, labels)

    for before, after in zip(backbone_before, model.backbone.parameters()):
        assert torch.equal(before, after)
    if stats_before is not None:
        assert torch.equal(stats_before, model.backbone.bn1.running_mean)
    assert not torch.equal(head_before, model.embedding.weight)
    assert not torch.equal(class_weights_before, loss.weight)

    prepare_backbone(model, warm_up=False, freeze_bn="none")
    train_step(model, loss, optimizer, images, labels)
    assert not all(torch.equal(b, a) for b, a in zip(backbone_before, model.backbone.parameters()))


@pytest.mark.parametrize("mode", ["stats", "stats_affine"])
def test_batchnorm_freezing(mode):
    model, loss, optimizer, images, labels = small_setup()
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    means = [m.running_mean.clone() for m in norms]
    weights = [m.weight.detach().clone() for m in norms]
    prepare_backbone(model, warm_up=False, freeze_bn=mode)
    train_step(model, loss, optimizer, images, labels)
    assert all(torch.equal(before, m.running_mean) for before, m in zip(means, norms))
    unchanged = all(torch.equal(before, m.weight) for before, m in zip(weights, norms))
    assert unchanged == (mode == "stats_affine")


def test_gradient_clipping_by_value_and_norm():
    for kwargs in ({"grad_clip_value": 1e-4}, {"grad_clip_norm": 1e-4}):
        model, loss, optimizer, images, labels = small_setup()
        optimizer = torch.optim.SGD(parameter_groups(model, loss, resolve_config(load_protocol(None, "digits"), "digits", "sgsl", {})), lr=1.0)
        before = loss.weight.detach().clone()
        prepare_backbone(model, False, "none")
        train_step(model, loss, optimizer, images, labels, **kwargs)
        change = (loss.weight - before).abs()
        if "grad_clip_value" in kwargs:
            assert change.max() <= 1e-4 + 1e-7
        else:
            all_grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            assert torch.norm(torch.stack([g.norm() for g in all_grads])) <= 1e-4 * 1.001


@pytest.mark.parametrize("name", list(LOSSES))
def test_bf16_autocast_step_stays_finite(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=8))
    loss = LOSSES[name](3, 8)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(loss.parameters()), lr=0.01)
    images = torch.randn(6, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    value = train_step(model, loss, optimizer, images, labels, amp_dtype=torch.bfloat16)
    assert np.isfinite(value)
    assert all(p.dtype == torch.float32 for p in loss.parameters())


def test_channels_last_model_runs():
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=8, channels_last=True))
    images = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert model(images).shape == (2, 8)


def test_layer_norm_head_has_no_affine():
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=8, layer_norm=True))
    assert isinstance(model.norm, torch.nn.LayerNorm)
    assert model.norm.weight is None


# ---------------------------------------------------------------------------
# Resume after a kill


RESUME_ARGS = ["--loss", "normsoftmax", "--dataset", "digits", "--seed", "2", "--quiet"]
RESUME_SETS = ["--set", "train.epochs=5", "--set", "train.schedule='step'", "--set", "train.step_size=2"]


def harness_command(results: Path) -> list[str]:
    executable = Path(sys.executable).with_name("harness")
    return [str(executable), "run", *RESUME_ARGS, *RESUME_SETS, "--results-dir", str(results)]


def test_killed_run_resumes_to_identical_metrics(tmp_path):
    reference = tmp_path / "reference"
    assert subprocess.run(harness_command(reference), capture_output=True).returncode == 0

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(harness_command(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    checkpoint = None
    while time.time() < deadline:
        found = list((interrupted / "runs").glob("*/checkpoint.pt")) if (interrupted / "runs").exists() else []
        if found:
            checkpoint = found[0]
            history = torch.load(checkpoint, weights_only=True)["history"]
            if len(history) >= 2:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint is not None
    run_id = checkpoint.parent.name
    status = json.loads((checkpoint.parent / "status.json").read_text())
    assert status["state"] == "running"
    epochs_done = len(torch.load(checkpoint, weights_only=True)["history"])
    assert 2 <= epochs_done < 5

    executable = Path(sys.executable).with_name("harness")
    resumed = subprocess.run(
        [str(executable), "run", "--resume", run_id, "--results-dir", str(interrupted), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    first = pd.read_parquet(reference / "runs" / run_id / "metrics.parquet")
    second = pd.read_parquet(interrupted / "runs" / run_id / "metrics.parquet")
    pd.testing.assert_frame_equal(first, second)
    first_history = pd.read_parquet(reference / "runs" / run_id / "history.parquet").drop(columns="seconds")
    second_history = pd.read_parquet(interrupted / "runs" / run_id / "history.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(first_history, second_history)
    assert not (interrupted / "runs" / run_id / "checkpoint.pt").exists()


def test_resume_errors(runner, tmp_path):
    result = runner.invoke(app, ["run", "--resume", "nope", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no run 'nope'" in result.output
    result = runner.invoke(app, ["run", "--resume", "nope", "--loss", "sgsl", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "pass only --resume RUN_ID" in " ".join(result.output.split())


# ---------------------------------------------------------------------------
# The sgsl-paper protocol on a fixture


def test_protocol_show_lists_every_assumption(runner):
    result = runner.invoke(app, ["protocol", "show", "sgsl-paper", "--dataset", "cub"], terminal_width=250)
    assert result.exit_code == 0, result.output
    protocol = load_protocol("sgsl-paper", "cub")
    assert len(protocol.assumed) >= 20
    for key in protocol.assumed:
        assert key in result.output
    assert result.output.count("assumed:") == len(protocol.assumed)
    listing = runner.invoke(app, ["protocol", "list"], terminal_width=200)
    for name in ("default", "sgsl-paper", "normsoftmax", "proxy-anchor", "proxynca-pp"):
        assert name in listing.output


def test_protocol_show_marks_unused_and_default_settings(runner, monkeypatch):
    from harness import cli

    # Wide enough that no cell wraps, so each row is one line.
    monkeypatch.setattr(cli.output, "width", 1000)
    result = runner.invoke(app, ["protocol", "show", "sgsl-paper", "--dataset", "cub"])
    rows = {line.split("│")[1].strip(): line.split("│")[3].strip() for line in result.output.splitlines() if "│" in line}
    assert rows["train.adam_eps"] == "not used: train.optimizer is sgd"
    assert rows["train.step_size"] == "not used: train.schedule is multistep"
    assert rows["loss.stop_gradient"] == "the loss's default; the protocol file does not set it"
    assert rows["train.lr"] == "from the source" or rows["train.lr"].startswith("assumed:")
    assert rows["eval.kmeans_restarts"] == "harness setting (set by the protocol file), not part of the recipe"
    assert rows["eval.search"] == "harness setting (default), not part of the recipe"


@pytest.mark.parametrize("protocol", ["normsoftmax", "proxy-anchor", "proxynca-pp"])
def test_recipes_resolve_for_every_dataset(protocol):
    for dataset in ("cub", "cars", "sop", "inshop"):
        config = resolve_config(load_protocol(protocol, dataset), dataset, "normsoftmax", {})
        assert config.protocol == protocol
    assert load_protocol("proxy-anchor", "cub").sections["train"]["freeze_bn"] == "stats_affine"
    assert load_protocol("proxy-anchor", "sop").sections["train"]["freeze_bn"] == "none"


def test_paper_protocol_on_cub_fixture(runner, tmp_path):
    from harness.fixtures import write_cub

    import timm

    write_cub(tmp_path / "data", classes=4, images_per_class=4, size=(64, 48))
    weights = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), weights)
    results = tmp_path / "results"
    args = ["run", "--loss", "sgsl", "--dataset", "cub", "--protocol", "sgsl-paper", "--data-root", str(tmp_path / "data")]
    args += ["--results-dir", str(results), "--pretrained", str(weights), "--quiet"]
    args += ["--set", "model.backbone=resnet10t", "--set", "data.resize=[40,40]", "--set", "data.image_size=32"]
    args += ["--set", "train.epochs=4", "--set", "train.milestones=[3]", "--set", "data.batch_size=4"]
    args += ["--set", "data.images_per_class=2", "--set", "data.val_fraction=0.25", "--set", "data.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output

    folder = next((results / "runs").iterdir())
    config = json.loads((folder / "config.json").read_text())
    assert config["config"]["model"]["rbr"] is True
    assert config["config"]["train"]["warmup_epochs"] == 1
    assert "loss.gamma_2" in config["assumed"]
    env = json.loads((folder / "env.json").read_text())
    assert env["pretrained"]["path"] == str(weights)
    assert len(env["pretrained"]["sha256"]) == 64

    history = pd.read_parquet(folder / "history.parquet")
    assert history["lr_backbone"].tolist() == pytest.approx([0.001, 0.001, 0.001, 0.0001])
    assert "val_recall@1" in history.columns
    assert "test_recall@1" in history.columns

    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert set(metrics["selection"]) == {"last", "best-val", "best-test"}
    assert metrics.loc[metrics["selection"] == "last", "primary"].all()
    assert (folder / "embeddings" / "test.npz").exists()
    assert (folder / "embeddings" / "val.npz").exists()
    status = json.loads((folder / "status.json").read_text())
    assert not any("random initialization" in warning for warning in status["warnings"])

    report = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "best-test (optimistic" in markdown
    assert "Assumed settings behind these numbers" in markdown


def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=8))
    model.eval()
    compiled = torch.compile(model)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(images), model(images), atol=1e-4)


def test_best_val_without_validation_rejected(runner, tmp_path):
    result = runner.invoke(
        app, ["run", "--loss", "sgsl", "--dataset", "digits", "--results-dir", str(tmp_path), "--set", "eval.selection='best-val'"]
    )
    assert result.exit_code == 2
    assert "needs a validation split" in " ".join(result.output.split())


def test_hash_follows_weights_contents(tmp_path):
    import timm

    first = tmp_path / "a.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), first)
    copy = tmp_path / "b.pth"
    copy.write_bytes(first.read_bytes())
    protocol = load_protocol(None, "digits")
    hash_of = lambda path: resolve_config(protocol, "digits", "sgsl", parse_overrides([f"model.pretrained='{path}'"])).config_hash  # noqa: E731
    assert hash_of(first) == hash_of(copy)
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), copy)
    assert hash_of(first) != hash_of(copy)
