"""Retrieval metrics of metric learning: Recall@K, MAP@R, R-precision and NMI.

Embeddings are L2-normalized and compared by inner product (cosine). In
leave-one-out mode every item is a query against all other items, and the
query is excluded by its index, never by dropping "the first neighbour". In
query/gallery mode the queries are retrieved against a separate gallery.

Neighbours are found with faiss. Ties are broken by reference index, so the
ranking, and every metric, is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from harness.errors import EvaluationError

EXACT_CHUNK_ROWS = 1024


@dataclass
class RetrievalResult:
    """Metric values (fractions in [0, 1]) and what the evaluation had to leave out."""

    values: dict[str, float]
    excluded_queries: int
    num_queries: int
    clipped_k: tuple[int, ...] = field(default_factory=tuple)


def _check_pair(embeddings: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise EvaluationError(f"{name}: expected a non-empty 2-D array of embeddings, got shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise EvaluationError(f"{name}: expected floating-point embeddings, got dtype {embeddings.dtype}.")
    if labels.ndim != 1 or len(labels) != len(embeddings):
        raise EvaluationError(
            f"{name}: expected one label per embedding ({len(embeddings)}), got labels of shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(f"{name}: expected integer labels, got dtype {labels.dtype}.")
    if not np.isfinite(embeddings).all():
        raise EvaluationError(f"{name}: embeddings contain NaN or infinite values.")
    return embeddings, labels.astype(np.int64)


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm; an all-zero row stays zero."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return np.ascontiguousarray(embeddings / np.maximum(norms, 1e-12), dtype=np.float32)


def _order_by_score_then_index(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _exact_ranked(query: np.ndarray, reference: np.ndarray, k: int, self_index: np.ndarray | None) -> np.ndarray:
    """Rank every reference item for each query with a full score row, ties by index."""
    ranked = np.empty((len(query), k), dtype=np.int64)
    reference_ids = np.arange(len(reference))
    for start in range(0, len(query), EXACT_CHUNK_ROWS):
        stop = min(start + EXACT_CHUNK_ROWS, len(query))
        scores = query[start:stop] @ reference.T
        if self_index is not None:
            scores[np.arange(stop - start), self_index[start:stop]] = -np.inf
        ids = np.broadcast_to(reference_ids, scores.shape)
        _, ordered_ids = _order_by_score_then_index(scores, ids)
        ranked[start:stop] = ordered_ids[:, :k]
    return ranked


def ranked_neighbours(
    query: np.ndarray, reference: np.ndarray, k: int, self_index: np.ndarray | None = None
) -> np.ndarray:
    """Return the indices of each query's k highest-scoring reference items, best first.

    Args:
        query: (n_q, d) float32 L2-normalized rows.
        reference: (n_r, d) float32 L2-normalized rows.
        k: neighbours per query; at most the number of candidates (n_r, or
            n_r - 1 when a query's own index is excluded).
        self_index: for each query, the reference index to exclude (its own
            row in leave-one-out mode), or None.

    Ties are broken by the lower reference index. faiss returns tied items in
    no defined order and may cut a tie at the k-th place. So one more
    neighbour than needed is requested, and a row whose tie reaches the end
    of the returned list is ranked again from its full score row.
    """
    num_candidates = len(reference) - (1 if self_index is not None else 0)
    if not 1 <= k <= num_candidates:
        raise ValueError(f"k must be between 1 and {num_candidates}, got {k}")
    extra = 1 if self_index is not None else 0
    search_k = min(k + extra + 1, len(reference))

    scores, ids = faiss.knn(query, reference, search_k, metric=faiss.METRIC_INNER_PRODUCT)
    if self_index is not None:
        scores = np.where(ids == self_index[:, None], -np.inf, scores)
    scores, ids = _order_by_score_then_index(scores, ids)
    ranked = ids[:, :k].copy()

    if search_k < len(reference):
        last_kept = scores[:, k - 1]
        lowest_returned = np.where(np.isneginf(scores), np.inf, scores).min(axis=1)
        uncertain = np.flatnonzero(lowest_returned >= last_kept)
        if len(uncertain):
            rows_self = self_index[uncertain] if self_index is not None else None
            ranked[uncertain] = _exact_ranked(query[uncertain], reference, k, rows_self)
    return ranked


def kmeans_nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int, restarts: int = 1) -> float:
    """Cluster with seeded k-means (k = number of classes) and return the NMI against the labels.

    faiss's k-means starts from randomly chosen points, runs ``restarts``
    times and keeps the lowest objective; one random start can merge two
    clusters. scikit-learn's normalized_mutual_info_score (arithmetic mean)
    scores the assignment.
    """
    num_classes = len(np.unique(labels))
    if num_classes < 2 or len(embeddings) <= num_classes:
        return float("nan")
    kmeans = faiss.Kmeans(
        embeddings.shape[1],
        num_classes,
        niter=25,
        seed=seed,
        nredo=restarts,
        min_points_per_centroid=1,
        max_points_per_centroid=len(embeddings),
        verbose=False,
    )
    kmeans.train(embeddings)
    _, assignment = kmeans.index.search(embeddings, 1)
    return float(normalized_mutual_info_score(labels, assignment[:, 0]))


def _chunk_scores(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Return the (n_q, n_r) inner products of a query chunk with every reference row (BLAS sgemm)."""
    return query @ reference.T


def chunk_rows(num_reference: int, memory_mb: float) -> int:
    """Return how many query rows fit in the memory budget: about 12 bytes per score (scores and masks)."""
    return max(1, int(memory_mb * 2**20 / (12 * max(num_reference, 1))))


def evaluate_retrieval(
    embeddings: np.ndarray,
    labels: np.ndarray,
    k_values: tuple[int, ...] | list[int],
    gallery_embeddings: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    compute_nmi: bool = True,
    seed: int = 0,
    kmeans_restarts: int = 1,
    memory_mb: float = 1024.0,
) -> RetrievalResult:
    """Compute Recall@K for each K, MAP@R, R-precision and optionally NMI in one exact, chunked pass.

    Without a gallery, each item is a query against all other items
    (leave-one-out); with one, ``embeddings`` are queries against the gallery.
    R of a query is the number of other items of its class in the reference
    set. Queries with R = 0 cannot be scored: they are excluded from every
    metric and counted. A K larger than the number of candidates is clipped
    to it (Recall@K is then 1 wherever a positive exists) and reported in
    ``clipped_k``.

    Queries are processed in chunks whose score block stays within about
    ``memory_mb``. Recall@K at every K comes from the rank of each query's
    first positive: the number of items scoring above its best positive, plus
    tied items of lower index. MAP@R and R-precision need only the top R.
    Ties are ordered by reference index throughout, so results do not depend
    on the search order.

    Raises:
        EvaluationError: the inputs are malformed, or no query has anything
            to retrieve.
    """
    query, query_labels = _check_pair(embeddings, labels, "embeddings")
    leave_one_out = gallery_embeddings is None
    if leave_one_out:
        reference, reference_labels = query, query_labels
    else:
        if gallery_labels is None:
            raise EvaluationError("gallery_labels: missing; a gallery needs one label per embedding.")
        reference, reference_labels = _check_pair(gallery_embeddings, gallery_labels, "gallery_embeddings")
        if reference.shape[1] != query.shape[1]:
            raise EvaluationError(
                f"gallery_embeddings: dimension {reference.shape[1]} differs from the queries' {query.shape[1]}."
            )
    k_values = tuple(int(k) for k in k_values)
    if not k_values or min(k_values) < 1:
        raise EvaluationError(f"k: expected positive integers, got {k_values}.")

    query = l2_normalize(query)
    reference = query if leave_one_out else l2_normalize(reference)
    num_candidates = len(reference) - (1 if leave_one_out else 0)

    # Reference items grouped by class, so that each query's positives are one slice.
    order = np.argsort(reference_labels, kind="stable")
    sorted_labels = reference_labels[order]
    classes, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    position = np.searchsorted(classes, query_labels)
    position = np.clip(position, 0, len(classes) - 1)
    present = classes[position] == query_labels
    relevant = np.where(present, counts[position], 0) - (1 if leave_one_out else 0)
    scorable = relevant > 0
    excluded = int((~scorable).sum())
    if not scorable.any():
        raise EvaluationError(
            f"no query has another item of its class in the reference set ({len(query)} queries); "
            "nothing can be retrieved, so no metric is defined."
        )

    query_rows = np.flatnonzero(scorable)
    relevant = relevant[query_rows]
    ranks = np.empty(len(query_rows), dtype=np.int64)
    average_precision = np.empty(len(query_rows))
    r_precision = np.empty(len(query_rows))
    rows_per_chunk = chunk_rows(len(reference), memory_mb)
    reference_index = np.arange(len(reference))

    for start in range(0, len(query_rows), rows_per_chunk):
        rows = query_rows[start : start + rows_per_chunk]
        chunk = slice(start, start + len(rows))
        scores = _chunk_scores(query[rows], reference)
        local = np.arange(len(rows))
        if leave_one_out:
            scores[local, rows] = -np.inf

        # Best positive per query, then the first positive index among ties with it.
        width = int(counts.max())
        offsets = starts[position[rows]][:, None] + np.arange(width)[None, :]
        valid = np.arange(width)[None, :] < counts[position[rows]][:, None]
        positive_index = order[np.minimum(offsets, len(order) - 1)]
        positive_scores = np.where(valid, scores[local[:, None], positive_index], -np.inf)
        if leave_one_out:
            positive_scores[positive_index == rows[:, None]] = -np.inf
        best = positive_scores.max(axis=1)
        tied_positive = np.where(positive_scores == best[:, None], positive_index, len(reference))
        first_positive = tied_positive.min(axis=1)

        above = np.count_nonzero(scores > best[:, None], axis=1)
        ties = np.count_nonzero(scores == best[:, None], axis=1)
        for row in np.flatnonzero(ties > 1):
            equal = np.flatnonzero(scores[row] == best[row])
            above[row] += int(np.count_nonzero(equal < first_positive[row]))
        ranks[chunk] = above

        # Top R per query, ties by index, for MAP@R and R-precision.
        depth = int(relevant[chunk].max())
        ranked = _top_by_score_then_index(scores, depth, reference_index)
        hits = reference_labels[ranked] == query_labels[rows][:, None]
        positions = np.arange(depth)
        within = positions[None, :] < relevant[chunk][:, None]
        hits_within = hits & within
        precision_at_i = np.cumsum(hits, axis=1) / (positions + 1)
        average_precision[chunk] = (hits_within * precision_at_i).sum(axis=1) / relevant[chunk]
        r_precision[chunk] = hits_within.sum(axis=1) / relevant[chunk]

    values: dict[str, float] = {}
    clipped = []
    for k in k_values:
        if k > num_candidates:
            clipped.append(k)
        values[f"recall@{k}"] = float((ranks < min(k, num_candidates)).mean())
    values["map@r"] = float(average_precision.mean())
    values["r_precision"] = float(r_precision.mean())
    if compute_nmi:
        values["nmi"] = kmeans_nmi(query, query_labels, seed, kmeans_restarts)
    return RetrievalResult(values=values, excluded_queries=excluded, num_queries=len(query), clipped_k=tuple(clipped))


def _top_by_score_then_index(scores: np.ndarray, depth: int, reference_index: np.ndarray) -> np.ndarray:
    """Return the indices of each row's ``depth`` highest scores, ties ordered by index.

    A partial selection finds the depth-th largest score. Every item above it
    is taken, and items equal to it fill the remaining places in index order.
    """
    depth = min(depth, scores.shape[1])
    cut = np.partition(scores, scores.shape[1] - depth, axis=1)[:, scores.shape[1] - depth]
    ranked = np.empty((len(scores), depth), dtype=np.int64)
    for row in range(len(scores)):
        above = np.flatnonzero(scores[row] > cut[row])
        equal = np.flatnonzero(scores[row] == cut[row])[: depth - len(above)]
        chosen = np.concatenate([above, equal])
        order = np.lexsort((chosen, -scores[row, chosen]))
        ranked[row] = chosen[order]
    return ranked


LEAVE_ONE_OUT_ARRAYS = ("embeddings", "labels")
QUERY_GALLERY_ARRAYS = ("query_embeddings", "query_labels", "gallery_embeddings", "gallery_labels")


def load_embeddings_file(path) -> dict[str, np.ndarray]:
    """Read and check an embeddings file.

    ``embeddings`` and ``labels`` mean leave-one-out retrieval; the four
    ``query_*`` and ``gallery_*`` arrays mean queries against a gallery.

    Raises:
        EvaluationError: the file cannot be read, an array is missing, or an
            array has the wrong dtype, shape or non-finite values. The
            message names the array.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise EvaluationError(f"{path}: cannot be read as a .npz file of arrays ({error}).") from None
    if all(name in arrays for name in QUERY_GALLERY_ARRAYS):
        pairs = (("query_embeddings", "query_labels"), ("gallery_embeddings", "gallery_labels"))
    elif all(name in arrays for name in LEAVE_ONE_OUT_ARRAYS):
        pairs = (("embeddings", "labels"),)
    else:
        raise EvaluationError(
            f"{path}: missing arrays; found {sorted(arrays)}, expected 'embeddings' and 'labels' "
            "(leave-one-out) or 'query_embeddings', 'query_labels', 'gallery_embeddings', 'gallery_labels'."
        )
    for embeddings_name, labels_name in pairs:
        embeddings, labels = arrays[embeddings_name], arrays[labels_name]
        if not np.issubdtype(embeddings.dtype, np.floating):
            raise EvaluationError(f"{path}: array '{embeddings_name}' has dtype {embeddings.dtype}; expected floats.")
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise EvaluationError(f"{path}: array '{embeddings_name}' has shape {embeddings.shape}; expected (N, D) with N > 0.")
        if not np.isfinite(embeddings).all():
            raise EvaluationError(f"{path}: array '{embeddings_name}' contains NaN or infinite values.")
        if not np.issubdtype(labels.dtype, np.integer):
            raise EvaluationError(f"{path}: array '{labels_name}' has dtype {labels.dtype}; expected integers.")
        if labels.shape != (len(embeddings),):
            raise EvaluationError(
                f"{path}: array '{labels_name}' has shape {labels.shape}; expected ({len(embeddings)},) "
                f"to match '{embeddings_name}'."
            )
    if len(pairs) == 2 and arrays["query_embeddings"].shape[1] != arrays["gallery_embeddings"].shape[1]:
        raise EvaluationError(
            f"{path}: 'query_embeddings' has dimension {arrays['query_embeddings'].shape[1]} but "
            f"'gallery_embeddings' has {arrays['gallery_embeddings'].shape[1]}."
        )
    return arrays
