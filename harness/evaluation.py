"""Retrieval metrics of metric learning: Recall@K, MAP@R, R-precision and NMI.

Embeddings are L2-normalized and compared by inner product (cosine). In
leave-one-out mode every item is a query against all other items, and the
query is excluded by its index, never by dropping "the first neighbour". In
query/gallery mode the queries are retrieved against a separate gallery.

Scores are computed in blocks of query rows against all reference items, on
a faiss GPU when one is available and on the CPU otherwise. Ties are broken
by reference index, so the ranking, and every metric, is deterministic.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from harness.errors import EvaluationError

SEARCH_BACKENDS = ("auto", "cpu", "gpu")


@dataclass
class RetrievalResult:
    """Metric values (fractions in [0, 1]) and what the evaluation had to leave out."""

    values: dict[str, float]
    excluded_queries: int
    num_queries: int
    clipped_k: tuple[int, ...] = field(default_factory=tuple)
    search: str = "cpu"


def check_pair(
    embeddings: np.ndarray, labels: np.ndarray, embeddings_name: str, labels_name: str, where: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Check one array of embeddings and its labels, and return them with the labels as int64.

    ``where`` prefixes each message (an embeddings file's path and a colon).

    Raises:
        EvaluationError: a wrong dtype or shape, non-finite embeddings or
            non-integer labels. The message names the array and the fix.
    """
    embeddings = np.asarray(embeddings)
    labels = np.asarray(labels)
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise EvaluationError(
            f"{where}array '{embeddings_name}' has dtype {embeddings.dtype}; expected floats (a floating-point "
            "dtype). Convert it with .astype(np.float32)."
        )
    if embeddings.ndim != 2 or 0 in embeddings.shape:
        raise EvaluationError(
            f"{where}array '{embeddings_name}' has shape {embeddings.shape}; expected (N, D) with N > 0 and "
            "D > 0: a 2-D array, one row per image."
        )
    if not np.isfinite(embeddings).all():
        bad_rows = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        raise EvaluationError(
            f"{where}array '{embeddings_name}' contains NaN or infinite values in "
            f"{_count(len(bad_rows), 'row', 'rows')} (first at index {bad_rows[0]}). Recompute those "
            "embeddings, or drop the rows and their labels."
        )
    if np.issubdtype(labels.dtype, np.floating) and not np.array_equal(labels, np.round(labels)):
        raise EvaluationError(
            f"{where}array '{labels_name}' contains non-integer values; expected integer class ids. Map each "
            "class to an id first, for example with np.unique(labels, return_inverse=True)[1]."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise EvaluationError(
            f"{where}array '{labels_name}' has dtype {labels.dtype}; expected integer labels (class ids). "
            "Convert it with .astype(np.int64)."
        )
    if labels.shape != (len(embeddings),):
        raise EvaluationError(
            f"{where}array '{labels_name}' has shape {labels.shape}; expected ({len(embeddings)},), one label "
            f"per embedding (row of '{embeddings_name}')."
        )
    return embeddings, labels.astype(np.int64)


def check_same_dimension(query: np.ndarray, gallery: np.ndarray, where: str = "") -> None:
    """Check that queries and gallery embeddings have the same number of columns.

    Raises:
        EvaluationError: the dimensions differ.
    """
    if query.shape[1] != gallery.shape[1]:
        raise EvaluationError(
            f"{where}'query_embeddings' has dimension {query.shape[1]} but 'gallery_embeddings' has "
            f"{gallery.shape[1]}. Compute both with the same model and embedding head."
        )


def _count(number: int, singular: str, plural: str) -> str:
    return f"{number} {singular if number == 1 else plural}"


def l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    """Return float32 rows scaled to unit L2 norm. An all-zero row stays zero.

    A row whose largest absolute value lies outside [1e-15, 1e15] is first
    divided by that value, in float64 for float64 input, so that neither the
    squares of the norm nor the cast to float32 overflow or underflow. Other
    rows are divided by 1, which is exact, so their result equals a plain
    division by the float32 norm.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.dtype != np.float64:
        embeddings = embeddings.astype(np.float32, copy=False)
    largest = np.maximum(embeddings.max(axis=1, keepdims=True), -embeddings.min(axis=1, keepdims=True))
    ordinary = ((largest >= 1e-15) & (largest <= 1e15)) | (largest == 0)
    scaled = (embeddings / np.where(ordinary, 1, largest)).astype(np.float32, copy=False)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    scaled /= np.where(norms > 0, norms, 1)
    return np.ascontiguousarray(scaled)


def kmeans_nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int, restarts: int = 1, gpu: bool = False) -> float:
    """Cluster with seeded k-means (k = number of classes) and return the NMI against the labels.

    faiss's k-means starts from randomly chosen points, runs ``restarts``
    times and keeps the lowest objective. One random start can merge two
    clusters. scikit-learn's normalized_mutual_info_score (arithmetic mean)
    scores the assignment. With ``gpu``, faiss runs the k-means on every GPU
    it detects, which can change the NMI by float rounding.
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
        gpu=gpu,
    )
    kmeans.train(embeddings)
    _, assignment = kmeans.index.search(embeddings, 1)
    return float(normalized_mutual_info_score(labels, assignment[:, 0]))


class _ScoreBlocks:
    """Base of the score-block backends: one output buffer, reused from block to block."""

    name = ""

    def __init__(self, reference: np.ndarray):
        self.reference = reference
        self.buffer = np.empty((0, len(reference)), dtype=np.float32)

    def output(self, rows: int) -> np.ndarray:
        """Return a (rows, n_r) float32 buffer that the next block overwrites."""
        if len(self.buffer) < rows:
            self.buffer = np.empty((rows, len(self.reference)), dtype=np.float32)
        return self.buffer[:rows]


class _CpuScores(_ScoreBlocks):
    """Inner products by NumPy's BLAS sgemm.

    faiss-cpu computes inner-product blocks the same way:
    ``faiss.pairwise_distances(..., METRIC_INNER_PRODUCT)`` is ``xq @ xb.T``
    followed by a copy, which is left out here.
    """

    name = "cpu"

    def __call__(self, query: np.ndarray) -> np.ndarray:
        return np.matmul(query, self.reference.T, out=self.output(len(query)))


class _FaissGpuScores(_ScoreBlocks):
    """Inner products by faiss on GPU 0, returned to the host for counting."""

    name = "gpu"

    def __init__(self, reference: np.ndarray):
        super().__init__(reference)
        self.resources = faiss.StandardGpuResources()

    def __call__(self, query: np.ndarray) -> np.ndarray:
        return faiss.pairwise_distance_gpu(
            self.resources,
            query,
            self.reference,
            D=self.output(len(query)),
            metric=faiss.METRIC_INNER_PRODUCT,
            device=0,
        )


def faiss_gpu_count() -> int:
    """Return the number of GPUs that this faiss build can use (0 for faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def score_blocks(reference: np.ndarray, search: str = "auto"):
    """Return a function that maps a block of query rows to its (n_q, n_r) inner products with ``reference``.

    ``search`` is auto (a faiss GPU if this faiss build detects one, else
    the CPU), cpu or gpu.

    Raises:
        EvaluationError: ``search`` is unknown, or is gpu without a faiss GPU.
    """
    if search not in SEARCH_BACKENDS:
        raise EvaluationError(f"eval.search (--search): expected one of {', '.join(SEARCH_BACKENDS)}, got {search!r}.")
    gpus = faiss_gpu_count()
    if search == "gpu" and gpus == 0:
        raise EvaluationError(
            f"eval.search (--search): 'gpu' needs a faiss build with GPU support, and faiss {faiss.__version__} "
            "here detects no GPU. Install one on a CUDA machine (the faiss-gpu-cu12 package), or choose cpu or auto."
        )
    if search == "gpu" or (search == "auto" and gpus > 0):
        return _FaissGpuScores(reference)
    return _CpuScores(reference)


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
    search: str = "auto",
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
    on the search order. ``search`` selects where the score blocks are computed
    (see score_blocks); backends differ only by float rounding.

    Raises:
        EvaluationError: the inputs are malformed, no query has anything to
            retrieve, or the ``search`` backend is not available.
    """
    leave_one_out = gallery_embeddings is None
    if leave_one_out:
        query, query_labels = check_pair(embeddings, labels, "embeddings", "labels")
        reference, reference_labels = query, query_labels
    else:
        if gallery_labels is None:
            raise EvaluationError("gallery_labels: missing; a gallery needs one label per embedding.")
        query, query_labels = check_pair(embeddings, labels, "query_embeddings", "query_labels")
        reference, reference_labels = check_pair(
            gallery_embeddings, gallery_labels, "gallery_embeddings", "gallery_labels"
        )
        check_same_dimension(query, reference)
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
            "no query has another item of its class in the reference set "
            f"({_count(len(query), 'query', 'queries')}); "
            "nothing can be retrieved, so no metric is defined."
        )

    query_rows = np.flatnonzero(scorable)
    relevant = relevant[query_rows]
    ranks = np.empty(len(query_rows), dtype=np.int64)
    average_precision = np.empty(len(query_rows))
    r_precision = np.empty(len(query_rows))
    rows_per_chunk = chunk_rows(len(reference), memory_mb)
    scores_of = score_blocks(reference, search)
    width = int(counts.max())
    slots = np.arange(width)

    for start in range(0, len(query_rows), rows_per_chunk):
        rows = query_rows[start : start + rows_per_chunk]
        chunk = slice(start, start + len(rows))
        scores = scores_of(query[rows])
        local = np.arange(len(rows))
        if leave_one_out:
            scores[local, rows] = -np.inf

        # Best positive per query, then the first positive index among ties with it.
        offsets = starts[position[rows]][:, None] + slots[None, :]
        valid = slots[None, :] < counts[position[rows]][:, None]
        positive_index = order[np.minimum(offsets, len(order) - 1)]
        positive_scores = np.where(valid, scores[local[:, None], positive_index], -np.inf)
        if leave_one_out:
            positive_scores[positive_index == rows[:, None]] = -np.inf
        best = positive_scores.max(axis=1)
        tied_positive = np.where(positive_scores == best[:, None], positive_index, len(reference))
        first_positive = tied_positive.min(axis=1)

        # Each row's candidates for its top R, ranked by (score, index). The
        # first positive's place among them is its rank when it is one.
        ranked, ranks[chunk] = _rank_candidates(scores, relevant[chunk], first_positive)
        hits = (ranked >= 0) & (reference_labels[ranked] == query_labels[rows][:, None])
        positions = np.arange(ranked.shape[1])
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
        values["nmi"] = kmeans_nmi(query, query_labels, seed, kmeans_restarts, gpu=scores_of.name == "gpu")
    return RetrievalResult(
        values=values,
        excluded_queries=excluded,
        num_queries=len(query),
        clipped_k=tuple(clipped),
        search=scores_of.name,
    )


SELECTION_GROUPS = 1024


def _rank_candidates(
    scores: np.ndarray, depths: np.ndarray, first_positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return each row's top ``depths[row]`` indices and the rank of its first positive, ties by index.

    The top array has max(depths) columns; a row's places beyond its depth
    hold -1. The rank of ``first_positive[row]`` is the number of items with a
    higher score, plus tied items of lower index.

    Columns are split into at most SELECTION_GROUPS groups, and each group's
    maximum is one item's score, so a row's depth-th largest group maximum is
    a lower bound on its depth-th largest score. Only items at or above that
    bound can be in the top: usually a few times ``depth`` items per row,
    which are then sorted by (score, index). Where the first positive is
    among them, so is every item that outranks it, and its place is its
    rank. Other rows are counted over the whole row, and rows where ties or
    clustering leave many candidates take a partial selection over the row.
    """
    num_rows, width = scores.shape
    depths = np.minimum(depths, width)
    depth = int(depths.max())
    groups = max(min(width, SELECTION_GROUPS), depth)
    per_group = width // groups
    maxima = scores[:, : per_group * groups].reshape(num_rows, per_group, groups).max(axis=1)
    if per_group * groups < width:
        maxima = np.concatenate([maxima, scores[:, per_group * groups :]], axis=1)
    largest = np.partition(maxima, maxima.shape[1] - depth, axis=1)[:, maxima.shape[1] - depth :]
    largest = -np.sort(-largest, axis=1)
    bound = np.maximum(largest[np.arange(num_rows), depths - 1], -np.finfo(np.float32).max)

    candidates = scores >= bound[:, None]
    limits = 8 * depths + 64
    crowded = np.zeros(num_rows, dtype=bool)
    if np.count_nonzero(candidates) > limits.sum():
        crowded = np.count_nonzero(candidates, axis=1) > limits
        candidates[crowded] = False
    row_of, column = np.divmod(np.flatnonzero(candidates), width)
    order = np.lexsort((column, -scores[row_of, column], row_of))
    row_of, column = row_of[order], column[order]
    row_start = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=num_rows))[:-1]])
    place = np.arange(len(row_of)) - row_start[row_of]
    keep = place < depths[row_of]
    ranked = np.full((num_rows, depth), -1, dtype=np.int64)
    ranked[row_of[keep], place[keep]] = column[keep]
    for row in np.flatnonzero(crowded):
        ranked[row, : depths[row]] = _top_of_row(scores[row], int(depths[row]))

    ranks = np.full(num_rows, -1, dtype=np.int64)
    is_first = column == first_positive[row_of]
    ranks[row_of[is_first]] = place[is_first]
    for row in np.flatnonzero(ranks < 0):
        row_scores, index = scores[row], first_positive[row]
        best = row_scores[index]
        ranks[row] = np.count_nonzero(row_scores > best) + np.count_nonzero(row_scores[:index] == best)
    return ranked, ranks


def _top_of_row(row_scores: np.ndarray, depth: int) -> np.ndarray:
    """Return the indices of one row's ``depth`` highest scores, ties by index, from a partial selection."""
    cut = np.partition(row_scores, len(row_scores) - depth)[len(row_scores) - depth]
    above = np.flatnonzero(row_scores > cut)
    equal = np.flatnonzero(row_scores == cut)[: depth - len(above)]
    chosen = np.concatenate([above, equal])
    return chosen[np.lexsort((chosen, -row_scores[chosen]))]


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
    path = Path(path)
    saving = "Save the arrays with np.savez(path, embeddings=..., labels=...)."
    objects = f"{path}: contains Python objects, which are not read for safety. Store numbers only."
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder, not a file. Pass the path of a .npz file of embeddings and labels.")
    if not path.is_file():
        raise EvaluationError(f"{path}: file not found. Pass the path of a .npz file of embeddings and labels.")
    with open(path, "rb") as handle:
        start = handle.read(6)
    if start and not start.startswith((b"PK", b"\x93NUMPY")):
        raise EvaluationError(f"{path}: cannot be read as a .npz file of arrays (it is not a NumPy file). {saving}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if "pickle" in str(error):
            raise EvaluationError(f"{objects} {saving}") from None
        raise EvaluationError(
            f"{path}: cannot be read as a .npz file of arrays ({type(error).__name__}: {error}); it may be "
            f"empty or truncated. {saving}"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise EvaluationError(f"{path}: contains a single array (a .npy file), not named arrays. {saving}")
    try:
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "pickle" not in str(error):
            raise EvaluationError(f"{path}: an array cannot be read ({error}). {saving}") from None
        raise EvaluationError(f"{objects} {saving}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise EvaluationError(
            f"{path}: an array cannot be read ({type(error).__name__}: {error}); the file may be truncated. {saving}"
        ) from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):
            raise EvaluationError(
                f"{path}: array '{name}' cannot be read (its entry is not in NumPy's .npy format). {saving}"
            )
    has_query_gallery = any(name in arrays for name in QUERY_GALLERY_ARRAYS)
    if has_query_gallery and any(name in arrays for name in LEAVE_ONE_OUT_ARRAYS):
        raise EvaluationError(
            f"{path}: contains arrays of both layouts ({sorted(arrays)}); keep 'embeddings' and 'labels' for "
            "leave-one-out retrieval or the four 'query_*' and 'gallery_*' arrays for a gallery, not both."
        )
    if all(name in arrays for name in QUERY_GALLERY_ARRAYS):
        pairs = (("query_embeddings", "query_labels"), ("gallery_embeddings", "gallery_labels"))
    elif all(name in arrays for name in LEAVE_ONE_OUT_ARRAYS):
        pairs = (("embeddings", "labels"),)
    else:
        layout = QUERY_GALLERY_ARRAYS if has_query_gallery else LEAVE_ONE_OUT_ARRAYS
        missing = ", ".join(repr(name) for name in layout if name not in arrays)
        raise EvaluationError(
            f"{path}: missing {missing}; found {sorted(arrays)}, expected 'embeddings' and 'labels' "
            "(leave-one-out) or 'query_embeddings', 'query_labels', 'gallery_embeddings', 'gallery_labels'."
        )
    for embeddings_name, labels_name in pairs:
        embeddings, _ = check_pair(
            arrays[embeddings_name], arrays[labels_name], embeddings_name, labels_name, f"{path}: "
        )
        zero_rows = np.flatnonzero(~embeddings.any(axis=1))
        if len(zero_rows):
            raise EvaluationError(
                f"{path}: array '{embeddings_name}' has {_count(len(zero_rows), 'all-zero row', 'all-zero rows')} "
                f"(first at index {zero_rows[0]}); a zero vector has no direction, so cosine retrieval is undefined "
                "for it. Recompute those embeddings, or drop the rows and their labels."
            )
    if len(pairs) == 2:
        check_same_dimension(arrays["query_embeddings"], arrays["gallery_embeddings"], f"{path}: ")
    return arrays


def evaluate_embedding_arrays(
    arrays: dict[str, np.ndarray], k_values: tuple[int, ...] | list[int], **options
) -> RetrievalResult:
    """Evaluate the arrays of an embeddings file, in either layout.

    ``options`` are passed to evaluate_retrieval (compute_nmi, seed,
    kmeans_restarts, memory_mb, search).
    """
    if "query_embeddings" in arrays:
        return evaluate_retrieval(
            arrays["query_embeddings"],
            arrays["query_labels"],
            k_values,
            arrays["gallery_embeddings"],
            arrays["gallery_labels"],
            **options,
        )
    return evaluate_retrieval(arrays["embeddings"], arrays["labels"], k_values, **options)
