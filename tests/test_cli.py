"""CLI input errors: each names the bad value and the fix, exits 2, and prints no traceback."""

import pytest

from harness.cli import app


def invoke(runner, args):
    result = runner.invoke(app, args)
    output = result.output
    assert "Traceback" not in output
    return result, output


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--loss", "sgls", "--dataset", "digits"], "unknown loss 'sgls'; available losses: sgsl, softmax"),
        (["run", "--loss", "sgsl", "--dataset", "digit"], "unknown dataset 'digit'; available datasets: digits"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--seeds", "0"], "--seeds: invalid value 0"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--seeds", "-2"], "--seeds: invalid value -2"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--seed", "-1"], "--seed: invalid value -1"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--seed", "2147483648"], "from 0 to 2147483647"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--seeds", "2", "--seed", "1"], "cannot be used together"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--protocol", "nope"], "protocol 'nope' not found"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--set", "train.epoch=1"], "unknown key 'train.epoch'"),
        (["run", "--loss", "softmax", "--dataset", "digits", "--set", "loss.gamma_2=8"], "allowed loss keys"),
        (["run", "--loss", "sgsl", "--dataset", "digits", "--set", "model.backbone=resnet10"], "not a timm model"),
    ],
)
def test_run_input_errors(runner, args, message):
    result, output = invoke(runner, args)
    assert result.exit_code == 2
    assert message in " ".join(output.split())


def test_malformed_protocol_file(runner, tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text("[protocol]\nname = 'x'\nversion = '1'\n[train]\nepochs = [\n")
    result, output = invoke(runner, ["run", "--loss", "sgsl", "--dataset", "digits", "--protocol", str(path)])
    assert result.exit_code == 2
    flat = " ".join(output.split())
    assert "digits.toml is not valid TOML" in flat
    assert "line" in flat


def test_results_dir_not_writable(runner, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, output = invoke(
        runner, ["run", "--loss", "sgsl", "--dataset", "digits", "--results-dir", str(blocker / "results")]
    )
    assert result.exit_code == 2
    assert "is not writable" in output
    assert "--results-dir" in output


def test_report_without_runs(runner, tmp_path):
    result, output = invoke(runner, ["report", "--results-dir", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(output.split())

    (tmp_path / "empty" / "runs").mkdir(parents=True)
    result, output = invoke(runner, ["report", "--results-dir", str(tmp_path / "empty")])
    assert result.exit_code == 2
    flat = " ".join(output.split())
    assert "no finished runs" in flat
    assert "harness run --loss" in flat


def test_markup_in_values_printed_verbatim(runner, tmp_path):
    result, output = invoke(runner, ["run", "--loss", "sgsl", "--dataset", "digits", "--set", "data.sampler=[/x]"])
    assert result.exit_code == 2
    assert "[/x]" in output
    path = tmp_path / "digits.toml"
    path.write_text("[train]\nepochs = 3\n")
    result, output = invoke(runner, ["run", "--loss", "sgsl", "--dataset", "digits", "--protocol", str(path)])
    assert "[protocol]" in output


def test_class_balanced_batch_checked_before_training(runner, tmp_path):
    args = ["run", "--loss", "sgsl", "--dataset", "digits", "--results-dir", str(tmp_path / "r")]
    args += ["--set", "data.sampler='class_balanced'", "--set", "data.images_per_class=8"]
    result, output = invoke(runner, args)
    assert result.exit_code == 2
    assert "Lower data.batch_size to at most 40" in " ".join(output.split())
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())


def test_losses_and_datasets_listed(runner):
    result, output = invoke(runner, ["losses"])
    assert result.exit_code == 0
    for name in ("sgsl", "softmax", "l2softmax", "normsoftmax"):
        assert name in output
    result, output = invoke(runner, ["datasets"])
    assert result.exit_code == 0
    assert "digits" in output


def test_run_help_states_units_and_defaults(runner):
    result, output = invoke(runner, ["run", "--help"])
    assert result.exit_code == 0
    flat = " ".join(output.split())
    assert "seeds 0..N-1" in flat
    assert "SECTION.KEY=VALUE" in flat
