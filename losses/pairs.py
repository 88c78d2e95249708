"""Pair- and triplet-based baselines via pytorch-metric-learning: Multi-Similarity, triplet, contrastive, Circle.

These losses own no parameters; the number of classes is accepted for a
common constructor and ignored.
"""

from pytorch_metric_learning import distances, losses as library, miners

from losses.library import LibraryLoss


class MultiSimilarityLoss(LibraryLoss):
    """Multi-Similarity (Wang et al., CVPR 2019) with its pair miner: alpha 2, beta 50, lambda 1, epsilon 0.1.

    Args:
        num_classes: ignored.
        embedding_dim: ignored.
        alpha: weight of positive pairs.
        beta: weight of negative pairs.
        base: the similarity threshold lambda.
        epsilon: margin of the pair miner.
    """

    # NOTE: alpha, beta, lambda and epsilon follow the paper's text as usually
    # cited. The official code's configuration uses other values (lambda 0.5),
    # and neither source was checked here.
    hyperparameter_bounds = {"alpha": (">", 0.0), "beta": (">", 0.0), "epsilon": (">=", 0.0)}

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 1.0,
        epsilon: float = 0.1,
    ) -> None:
        super().__init__(
            library.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base), miners.MultiSimilarityMiner(epsilon=epsilon)
        )


class TripletLoss(LibraryLoss):
    """Triplet loss with semi-hard mining (Schroff et al., FaceNet, CVPR 2015): margin 0.2 on squared distances.

    FaceNet compares squared Euclidean distances of unit vectors; the
    library's default distance is not squared, so it is set explicitly.

    Args:
        num_classes: ignored.
        embedding_dim: ignored.
        margin: alpha, on squared distances of L2-normalized embeddings (paper: 0.2).
    """

    hyperparameter_bounds = {"margin": (">=", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.2) -> None:
        distance = distances.LpDistance(normalize_embeddings=True, p=2, power=2)
        super().__init__(
            library.TripletMarginLoss(margin=margin, distance=distance),
            miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance),
        )


class ContrastiveLoss(LibraryLoss):
    """Contrastive loss (Hadsell et al., CVPR 2006): pull positives together, push negatives beyond a margin.

    Args:
        num_classes: ignored.
        embedding_dim: ignored.
        pos_margin: distance below which positive pairs cost nothing (paper: 0).
        neg_margin: m, the distance beyond which negatives cost nothing, on
            L2-normalized embeddings.
    """

    # NOTE: the paper's margin depends on its data; 0.5 on unit vectors is an
    # assumption, not a published value.
    hyperparameter_bounds = {"pos_margin": (">=", 0.0), "neg_margin": (">=", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, pos_margin: float = 0.0, neg_margin: float = 0.5) -> None:
        super().__init__(library.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin))


class CircleLoss(LibraryLoss):
    """Circle loss (Sun et al., CVPR 2020) with the paper's fine-grained retrieval settings: m 0.4, gamma 80.

    Args:
        num_classes: ignored.
        embedding_dim: ignored.
        m: relaxation margin.
        gamma: scale.
    """

    hyperparameter_bounds = {"m": (">=", 0.0), "gamma": (">", 0.0)}

    def __init__(self, num_classes: int, embedding_dim: int, m: float = 0.4, gamma: float = 80.0) -> None:
        super().__init__(library.CircleLoss(m=m, gamma=gamma))
