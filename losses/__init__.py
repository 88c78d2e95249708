"""Metric-learning loss functions, by the names the harness uses for them.

Every loss is an ``nn.Module`` built as ``cls(num_classes, embedding_dim,
**hyperparameters)`` and called as ``loss(embeddings, labels)``. Its
hyperparameters are the keyword arguments of its constructor, under their
paper names and with their paper defaults.
"""

from torch import nn

from losses.margins import ArcFaceLoss, CosFaceLoss
from losses.normsoftmax import L2SoftmaxLoss, NormSoftmaxLoss
from losses.pairs import CircleLoss, ContrastiveLoss, MultiSimilarityLoss, TripletLoss
from losses.proxies import ProxyAnchorLoss, ProxyNCALoss, SoftTripleLoss
from losses.sgsl import SGSLLoss
from losses.softmax import SoftmaxLoss

LOSSES: dict[str, type[nn.Module]] = {
    "sgsl": SGSLLoss,
    "softmax": SoftmaxLoss,
    "l2softmax": L2SoftmaxLoss,
    "normsoftmax": NormSoftmaxLoss,
    "proxy_anchor": ProxyAnchorLoss,
    "proxy_nca": ProxyNCALoss,
    "arcface": ArcFaceLoss,
    "cosface": CosFaceLoss,
    "soft_triple": SoftTripleLoss,
    "multi_similarity": MultiSimilarityLoss,
    "triplet": TripletLoss,
    "contrastive": ContrastiveLoss,
    "circle": CircleLoss,
}

# Learning-rate multiplier of each loss's own parameters as its paper used
# them; a protocol's loss.lr_multiplier = -1 selects it.
PAPER_LR_MULTIPLIERS = {name: float(getattr(cls, "paper_lr_multiplier", 1.0)) for name, cls in LOSSES.items()}

__all__ = [
    "LOSSES",
    "PAPER_LR_MULTIPLIERS",
    "ArcFaceLoss",
    "CircleLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "L2SoftmaxLoss",
    "MultiSimilarityLoss",
    "NormSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SGSLLoss",
    "SoftTripleLoss",
    "SoftmaxLoss",
    "TripletLoss",
]
