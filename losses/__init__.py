"""Metric-learning loss functions, by the names the harness uses for them.

Every loss is an ``nn.Module`` built as ``cls(num_classes, embedding_dim,
**hyperparameters)`` and called as ``loss(embeddings, labels)``. Its
hyperparameters are the keyword arguments of its constructor, under their
paper names and with their paper defaults.
"""

from torch import nn

from losses.normsoftmax import L2SoftmaxLoss, NormSoftmaxLoss
from losses.sgsl import SGSLLoss
from losses.softmax import SoftmaxLoss

LOSSES: dict[str, type[nn.Module]] = {
    "sgsl": SGSLLoss,
    "softmax": SoftmaxLoss,
    "l2softmax": L2SoftmaxLoss,
    "normsoftmax": NormSoftmaxLoss,
}

__all__ = ["LOSSES", "L2SoftmaxLoss", "NormSoftmaxLoss", "SGSLLoss", "SoftmaxLoss"]
