"""Normalized softmax losses (NormFace, NormSoftmax, L2-softmax).

    L = CE(f_hat W_hat^T / temperature, y)

Features f and class weights W are L2-normalized, so the logits are cosines
divided by a temperature. pytorch-metric-learning's NormalizedSoftmaxLoss
computes the formula; this module fixes the hyperparameters by name and
guards against that class casting its weights to the embeddings' dtype.
"""

import torch
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
from torch import nn


class NormSoftmaxLoss(nn.Module):
    """NormSoftmax (Zhai and Wu, BMVC 2019): normalized features and weights, temperature 0.05.

    Args:
        num_classes: number of training classes C.
        embedding_dim: embedding size d.
        temperature: logits are cosines divided by this (default 0.05, a
            scale of 20, from the NormSoftmax paper).
    """

    hyperparameter_bounds = {"temperature": (">", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature
        self.library_loss = NormalizedSoftmaxLoss(
            num_classes=num_classes, embedding_size=embedding_dim, temperature=temperature
        )

    @property
    def weight(self) -> torch.Tensor:
        """Class weights as a C x d view (the library stores them d x C)."""
        return self.library_loss.W.t()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The library casts its weights to the dtype of the embeddings it gets,
        # so it must only ever see float32 outside autocast.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.library_loss(embeddings.float(), labels)


class L2SoftmaxLoss(NormSoftmaxLoss):
    """L2-normalized softmax without a scale: logits are plain cosines in [-1, 1].

    This is the loss that the SGSL paper reports as failing to converge. For
    C classes its loss cannot fall below log(1 + (C - 1) exp(-C / (C - 1))).

    Args:
        num_classes: number of training classes C.
        embedding_dim: embedding size d.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim, temperature=1.0)
