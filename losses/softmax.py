"""Plain softmax loss: cross-entropy over a bias-free linear classifier.

    L = CE(f W^T, y)

f is the raw (unnormalized) embedding and W the C x d class weights.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxLoss(nn.Module):
    """Cross-entropy over a bias-free linear classifier on the raw embedding.

    Args:
        num_classes: number of training classes C.
        embedding_dim: embedding size d.
    """

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = embeddings.float() @ self.weight.float().t()
        return F.cross_entropy(logits, labels)
