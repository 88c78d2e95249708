"""Every loss trains on the digits data: the windowed mean loss falls, nothing is NaN, and loss parameters move."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from harness.config import load_protocol, parse_overrides, resolve_config
from harness.data import load_splits
from harness.model import build_model
from harness.training import build_optimizer, parameter_groups, seed_everything, train_step
from losses import LOSSES, PAPER_LR_MULTIPLIERS

STEPS = 28
WINDOW = 6


@pytest.fixture(scope="module")
def digits():
    config = resolve_config(load_protocol(None, "digits"), "digits", "sgsl", {})
    return load_splits(config.data)


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_trains_on_digits(name, digits):
    overrides = parse_overrides(["model.embedding_dim=32"])
    config = resolve_config(load_protocol(None, "digits"), "digits", name, overrides)
    seed_everything(0)
    model = build_model(config.model)
    loss_fn = LOSSES[name](digits.num_train_classes, model.embedding_dim, **config.loss.kwargs())
    optimizer = build_optimizer(config.train, parameter_groups(model, loss_fn, config))
    before = [p.detach().clone() for p in loss_fn.parameters()]
    loader = DataLoader(digits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True)

    values = []
    model.train()
    while len(values) < STEPS:
        for images, labels in loader:
            values.append(train_step(model, loss_fn, optimizer, images, labels))
            if len(values) == STEPS:
                break

    assert all(np.isfinite(values)), values
    assert np.mean(values[-WINDOW:]) < np.mean(values[:WINDOW]), values
    for old, parameter in zip(before, loss_fn.parameters()):
        assert parameter.grad is not None
        assert not torch.equal(old, parameter.detach())


def test_paper_hyperparameters_set_explicitly():
    arcface = LOSSES["arcface"](5, 8)
    assert arcface.library_loss.margin == pytest.approx(0.5)  # stored in radians after conversion
    assert arcface.library_loss.scale == 64
    assert LOSSES["proxy_nca"](5, 8).library_loss.softmax_scale == 9
    assert LOSSES["proxy_anchor"](5, 8).library_loss.alpha == 32
    assert PAPER_LR_MULTIPLIERS["proxy_anchor"] == 100
    assert PAPER_LR_MULTIPLIERS["sgsl"] == 1


def test_paper_multiplier_resolved_from_minus_one():
    protocol = load_protocol("sgsl-paper", "cub")
    assert resolve_config(protocol, "cub", "proxy_anchor", {}).loss.lr_multiplier == 100
    assert resolve_config(protocol, "cub", "sgsl", {}).loss.lr_multiplier == 1
