"""Stop-Gradient Softmax Loss (SGSL), Yang, Wang and Zhang, AAAI 2023.

No official code was released, so this is a reconstruction. With f the
embedding, f_hat = f / ||f||, W the C x d class weights and sg() a
stop-gradient (``detach``)::

    L_softmax = CE(gamma_1 * f W^T, y)            # trains W and the network
    L_sgsl    = CE(gamma_2 * f_hat sg(W_x)^T, y)  # trains only the network
    L         = L_softmax + sgsl_weight * L_sgsl

The paper states three differences between the SGSL term and the softmax
term (its own scale, a normalized feature, no gradient into W). Everything
else is an assumption exposed as a constructor argument: gamma_1, gamma_2,
the weight of the SGSL term, and whether W_x is W raw or row-normalized.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class SGSLLoss(nn.Module):
    """Softmax loss plus a stop-gradient normalized softmax term on shared class weights.

    Args:
        num_classes: number of training classes C.
        embedding_dim: embedding size d.
        gamma_1: scale of the softmax term's logits (default 1.0, assumed).
        gamma_2: scale of the SGSL term's logits (default 16, assumed).
        sgsl_weight: weight lambda of the SGSL term (default 1.0, assumed).
        normalize_stopped_weights: use row-normalized W in the SGSL term
            instead of raw W (default False, assumed).
        stop_gradient: detach W in the SGSL term. Only an ablation turns it
            off; without it and with normalized weights the SGSL term is the
            NormFace loss with scale gamma_2.
    """

    hyperparameter_bounds = {"gamma_1": (">", 0.0), "gamma_2": (">", 0.0), "sgsl_weight": (">=", 0.0)}

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        gamma_1: float = 1.0,
        gamma_2: float = 16.0,
        sgsl_weight: float = 1.0,
        normalize_stopped_weights: bool = False,
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        self.gamma_1 = gamma_1
        self.gamma_2 = gamma_2
        self.sgsl_weight = sgsl_weight
        self.normalize_stopped_weights = normalize_stopped_weights
        self.stop_gradient = stop_gradient
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Logits are formed in float32 so that scaled cosines cannot overflow
        # under autocast; cross_entropy works through logsumexp.
        features = embeddings.float()
        weight = self.weight.float()

        softmax_logits = self.gamma_1 * features @ weight.t()
        softmax_term = F.cross_entropy(softmax_logits, labels)

        stopped_weight = weight.detach() if self.stop_gradient else weight
        if self.normalize_stopped_weights:
            stopped_weight = F.normalize(stopped_weight, dim=1)
        sgsl_logits = self.gamma_2 * F.normalize(features, dim=1) @ stopped_weight.t()
        sgsl_term = F.cross_entropy(sgsl_logits, labels)

        return softmax_term + self.sgsl_weight * sgsl_term
