"""Shared fixtures: a CLI runner and the settings of a tiny, fast run."""

import pytest
from typer.testing import CliRunner

# One epoch of resnet10t at 32 px on the digits training classes: about two
# seconds on a 2-core CPU.
TINY = ["--set", "train.epochs=1", "--set", "eval.kmeans_restarts=1"]


@pytest.fixture
def runner():
    return CliRunner()
