"""Proxy-based baselines: Proxy-Anchor, ProxyNCA++ and SoftTriple, via pytorch-metric-learning.

Hyperparameters carry their papers' names and values; the library's own
defaults are not relied on.
"""

from pytorch_metric_learning import losses as library
from pytorch_metric_learning.regularizers import SparseCentersRegularizer

from losses.library import LibraryLoss


class ProxyAnchorLoss(LibraryLoss):
    """Proxy-Anchor (Kim et al., CVPR 2020): one proxy per class, alpha 32, margin delta 0.1.

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        alpha: scaling of the softplus terms (paper: 32).
        delta: margin (paper: 0.1).
    """

    paper_lr_multiplier = 100.0

    hyperparameter_bounds = {"alpha": (">", 0.0), "delta": (">=", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, alpha: float = 32.0, delta: float = 0.1) -> None:
        super().__init__(library.ProxyAnchorLoss(num_classes, embedding_dim, margin=delta, alpha=alpha))


class ProxyNCALoss(LibraryLoss):
    """ProxyNCA with the ProxyNCA++ settings (Teh et al., ECCV 2020): softmax over squared distances to proxies, scale 9.

    Proxies and features are L2-normalized and multiplied by 3 before squared
    distances are taken, which is one factor: a scale of 9 (temperature 1/9)
    on squared distances of unit vectors.

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        scale: factor on the squared distances (ProxyNCA++: 9; the library default is 1).
    """

    # ProxyNCA++ trains proxies at 4e2 against a base rate of 4e-3.
    paper_lr_multiplier = 1e5

    hyperparameter_bounds = {"scale": (">", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 9.0) -> None:
        super().__init__(library.ProxyNCALoss(num_classes, embedding_dim, softmax_scale=scale))


class SoftTripleLoss(LibraryLoss):
    """SoftTriple (Qian et al., ICCV 2019): K = 10 centres per class, lambda 20, gamma 0.1, delta 0.01, tau 0.2.

    Args:
        num_classes: number of training classes.
        embedding_dim: embedding size.
        centers_per_class: K (paper: 10).
        la: lambda, the scale of the class similarities (paper: 20).
        gamma: temperature of the soft assignment to centres (paper: 0.1).
        delta: margin (paper: 0.01).
        tau: weight of the regularizer that merges similar centres (paper: 0.2).
    """

    # The paper trains the centres at 1e-2 against a base rate of 1e-4.
    paper_lr_multiplier = 100.0

    hyperparameter_bounds = {
        "centers_per_class": (">=", 1),
        "la": (">", 0.0),
        "gamma": (">", 0.0),
        "delta": (">=", 0.0),
        "tau": (">=", 0.0),
    }

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        delta: float = 0.01,
        tau: float = 0.2,
    ) -> None:
        super().__init__(
            library.SoftTripleLoss(
                num_classes,
                embedding_dim,
                centers_per_class=centers_per_class,
                la=la,
                gamma=gamma,
                margin=delta,
                weight_regularizer=SparseCentersRegularizer(num_classes, centers_per_class),
                weight_reg_weight=tau,
            )
        )
