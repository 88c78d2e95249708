"""Angular-margin classification baselines: ArcFace and CosFace, via pytorch-metric-learning."""

import math

from pytorch_metric_learning import losses as library

from losses.library import LibraryLoss


class ArcFaceLoss(LibraryLoss):
    """ArcFace (Deng et al., CVPR 2019): cos(theta + m) for the true class, scale s = 64, m = 0.5 rad.

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        margin: additive angular margin in radians (paper: 0.5; the library
            takes degrees, so it receives 28.65).
        scale: s (paper: 64).
    """

    hyperparameter_bounds = {"margin": (">=", 0.0), "scale": (">", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 64.0) -> None:
        super().__init__(library.ArcFaceLoss(num_classes, embedding_dim, margin=math.degrees(margin), scale=scale))


class CosFaceLoss(LibraryLoss):
    """CosFace (Wang et al., CVPR 2018): cos(theta) - m for the true class, scale s = 64, m = 0.35.

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        margin: additive cosine margin (paper: 0.35).
        scale: s (paper: 64).
    """

    hyperparameter_bounds = {"margin": (">=", 0.0), "scale": (">", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 64.0) -> None:
        super().__init__(library.CosFaceLoss(num_classes, embedding_dim, margin=margin, scale=scale))
