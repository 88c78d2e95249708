"""Shared call of pytorch-metric-learning losses: float32 embeddings, outside autocast."""

import torch
from torch import nn


class LibraryLoss(nn.Module):
    """A pytorch-metric-learning loss, with an optional miner, called safely.

    Several library losses cast their own parameters to the dtype of the
    embeddings they receive (pytorch-metric-learning 2.9's ProxyAnchorLoss,
    NormalizedSoftmaxLoss and ArcFaceLoss among them), so the loss is only
    ever called on float32 embeddings with autocast disabled.
    """

    # Learning rate of the loss's own parameters relative to the base rate, as
    # its paper trained them; a protocol's loss.lr_multiplier = -1 selects it.
    paper_lr_multiplier = 1.0

    def __init__(self, library_loss: nn.Module, miner: nn.Module | None = None) -> None:
        super().__init__()
        self.library_loss = library_loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            embeddings = embeddings.float()
            if self.miner is None:
                return self.library_loss(embeddings, labels)
            return self.library_loss(embeddings, labels, self.miner(embeddings, labels))
