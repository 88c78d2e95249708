"""Losses: exact values, SGSL's gradient properties, and library references."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

from losses import LOSSES, L2SoftmaxLoss, NormSoftmaxLoss, SGSLLoss, SoftmaxLoss


def random_batch(seed=0, n=12, dim=6, classes=4):
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, generator=generator, dtype=torch.float64).float().requires_grad_()
    labels = torch.randint(0, classes, (n,), generator=generator)
    return embeddings, labels


def test_sgsl_exact_two_class_value():
    loss = SGSLLoss(2, 2, gamma_1=1.0, gamma_2=2.0, sgsl_weight=0.5)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    embedding = torch.tensor([[3.0, 4.0]])
    value = loss(embedding, torch.tensor([0]))
    # softmax logits (6, 4); SGSL logits 2 * (0.6, 0.8) . rows of W = (2.4, 1.6)
    softmax_term = -6 + math.log(math.exp(6) + math.exp(4))
    sgsl_term = -2.4 + math.log(math.exp(2.4) + math.exp(1.6))
    assert value.item() == pytest.approx(softmax_term + 0.5 * sgsl_term, rel=1e-6)


def test_sgsl_term_gives_weights_no_gradient():
    embeddings, labels = random_batch()
    loss = SGSLLoss(4, 6, gamma_1=0.0, gamma_2=16.0, sgsl_weight=1.0)
    loss(embeddings, labels).backward()
    assert loss.weight.grad is not None
    assert torch.count_nonzero(loss.weight.grad) == 0
    assert embeddings.grad.abs().sum() > 0


def test_softmax_term_gives_weights_gradient():
    embeddings, labels = random_batch()
    loss = SGSLLoss(4, 6, gamma_1=1.0, gamma_2=16.0, sgsl_weight=0.0)
    loss(embeddings, labels).backward()
    assert loss.weight.grad.abs().sum() > 0


def test_sgsl_gradient_orthogonal_to_feature():
    embeddings, labels = random_batch(seed=1)
    loss = SGSLLoss(4, 6, gamma_1=0.0, gamma_2=16.0)
    loss(embeddings, labels).backward()
    radial = (embeddings.grad * embeddings.detach()).sum(dim=1)
    assert torch.allclose(radial, torch.zeros_like(radial), atol=1e-6)
    assert embeddings.grad.norm() > 1e-3


@pytest.mark.parametrize("gamma_2", [8.0, 16.0, 32.0])
def test_sgsl_without_stop_gradient_equals_normsoftmax(gamma_2):
    embeddings, labels = random_batch(seed=2)
    ours = SGSLLoss(4, 6, gamma_1=0.0, gamma_2=gamma_2, normalize_stopped_weights=True, stop_gradient=False)
    reference = NormalizedSoftmaxLoss(num_classes=4, embedding_size=6, temperature=1.0 / gamma_2)
    with torch.no_grad():
        reference.W.copy_(ours.weight.t())

    # With gamma_1 = 0 the softmax term is the constant log(C).
    ours_value = ours(embeddings, labels)
    reference_value = reference(embeddings, labels)
    assert ours_value.item() - math.log(4) == pytest.approx(reference_value.item(), rel=1e-5)

    ours_value.backward()
    reference_value.backward()
    assert torch.allclose(ours.weight.grad, reference.W.grad.t(), atol=1e-5)


def test_softmax_is_plain_cross_entropy():
    embeddings, labels = random_batch(seed=3)
    loss = SoftmaxLoss(4, 6)
    expected = F.cross_entropy(embeddings @ loss.weight.t(), labels)
    assert loss(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_normsoftmax_formula():
    embeddings, labels = random_batch(seed=4)
    loss = NormSoftmaxLoss(4, 6)
    logits = F.normalize(embeddings, dim=1) @ F.normalize(loss.weight, dim=1).t() / 0.05
    assert loss(embeddings, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_l2softmax_floor_reached_at_simplex():
    # Three unit class weights 120 degrees apart and features on them reach
    # the floor log(1 + (C - 1) exp(-C / (C - 1))) of the unscaled loss.
    loss = L2SoftmaxLoss(3, 2)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    simplex = torch.stack([angles.cos(), angles.sin()], dim=1)
    with torch.no_grad():
        loss.library_loss.W.copy_(simplex.t())
    floor = math.log(1 + 2 * math.exp(-1.5))
    assert loss(simplex, torch.arange(3)).item() == pytest.approx(floor, rel=1e-5)


def test_l2softmax_never_below_floor():
    loss = L2SoftmaxLoss(5, 8)
    floor = math.log(1 + 4 * math.exp(-5 / 4))
    for seed in range(5):
        embeddings, labels = random_batch(seed=seed, dim=8, classes=5)
        assert loss(embeddings, labels).item() >= floor - 1e-6


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_finite_and_float32_under_autocast(name):
    loss = LOSSES[name](4, 6)
    embeddings, labels = random_batch(seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(embeddings.bfloat16() * 10, labels)
    assert torch.isfinite(value)
    assert all(p.dtype == torch.float32 for p in loss.parameters())


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_parameters_receive_gradients(name):
    loss = LOSSES[name](4, 6)
    embeddings, labels = random_batch(seed=6)
    loss(embeddings, labels).backward()
    for parameter in loss.parameters():
        assert parameter.grad is not None
        assert parameter.grad.abs().sum() > 0
