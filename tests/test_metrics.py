"""Retrieval metrics: exact small cases, then naive and library references on random inputs."""

import math

import numpy as np
import pytest

from harness import evaluation
from harness.errors import EvaluationError
from harness.evaluation import evaluate_retrieval, kmeans_nmi, l2_normalize


def unit_vectors(angles):
    angles = np.asarray(angles, dtype=np.float64)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------
# Exact cases


def test_self_match_with_tied_twin_scores_zero():
    embeddings = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    labels = np.array([1, 0, 1, 0])
    result = evaluate_retrieval(embeddings, labels, [1], compute_nmi=False)
    assert result.values["recall@1"] == 0.0


def test_self_match_tie_order_by_index():
    # Query 0's candidates are 1 (score 1), then 2 and 3 tied at score 0:
    # index order puts 2 (a hit for query 0) before 3. Query 2's are 3, then
    # 0 and 1 tied: 0 (its hit) comes first. Queries 1 and 3 find their hit
    # only third.
    embeddings = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=np.float32)
    labels = np.array([1, 0, 1, 0])
    result = evaluate_retrieval(embeddings, labels, [2], compute_nmi=False)
    assert result.values["recall@2"] == 0.5


def test_map_at_r_divides_by_r():
    # Ranked gallery: relevant, irrelevant, relevant, irrelevant, relevant (R = 3).
    query = unit_vectors([0.0])
    gallery = unit_vectors([0.1, 0.2, 0.3, 0.4, 0.5])
    gallery_labels = np.array([7, 8, 7, 8, 7])
    result = evaluate_retrieval(query, np.array([7]), [1], gallery, gallery_labels, compute_nmi=False)
    assert result.values["map@r"] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert result.values["r_precision"] == pytest.approx(2 / 3)


def test_recall_at_k_means_any_hit():
    # Three relevant items; the top two are relevant, irrelevant.
    query = unit_vectors([0.0])
    gallery = unit_vectors([0.1, 0.2, 0.3, 0.4])
    gallery_labels = np.array([1, 2, 1, 1])
    result = evaluate_retrieval(query, np.array([1]), [1, 2], gallery, gallery_labels, compute_nmi=False)
    assert result.values["recall@2"] == 1.0
    assert result.values["recall@1"] == 1.0


def test_queries_without_match_are_excluded():
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(4, 3)).astype(np.float32)
    gallery = rng.normal(size=(5, 3)).astype(np.float32)
    result = evaluate_retrieval(
        queries, np.array([0, 0, 1, 1]), [1, 4], gallery, np.array([1, 1, 1, 2, 2]), compute_nmi=False
    )
    assert result.excluded_queries == 2
    assert result.num_queries == 4
    # Both label-1 queries have three label-1 items among five: four neighbours always hold one.
    assert result.values["recall@4"] == 1.0


def test_all_queries_without_match_raise():
    queries = np.eye(2, dtype=np.float32)
    gallery = np.eye(2, dtype=np.float32)
    with pytest.raises(EvaluationError, match="no query"):
        evaluate_retrieval(queries, np.array([0, 0]), [1], gallery, np.array([1, 2]), compute_nmi=False)


def test_leave_one_out_singleton_class_excluded():
    embeddings = unit_vectors([0.0, 0.1, 0.2, 1.5])
    result = evaluate_retrieval(embeddings, np.array([0, 0, 0, 1]), [1], compute_nmi=False)
    assert result.excluded_queries == 1
    assert result.values["recall@1"] == 1.0


def test_k_larger_than_reference_is_clipped():
    # Gallery of 3: K = 50 is clipped to 3, so Recall@50 = 1 wherever a
    # positive exists, and no padded index (-1) reads the last label.
    query = unit_vectors([0.0, 1.0])
    gallery = unit_vectors([0.1, 1.1, 2.0])
    result = evaluate_retrieval(query, np.array([3, 9]), [1, 50], gallery, np.array([3, 4, 9]), compute_nmi=False)
    assert result.clipped_k == (50,)
    assert result.values["recall@50"] == 1.0
    assert result.values["recall@1"] == 0.5


def test_k_clipped_in_leave_one_out():
    embeddings = unit_vectors(np.linspace(0, 1, 6))
    labels = np.array([0, 1, 0, 1, 0, 1])
    result = evaluate_retrieval(embeddings, labels, [1, 5, 1000], compute_nmi=False)
    assert result.clipped_k == (1000,)
    assert result.values["recall@5"] == 1.0
    assert result.values["recall@1000"] == 1.0


@pytest.mark.parametrize(
    "embeddings, labels, message",
    [
        (np.zeros((3,), np.float32), np.zeros(3, int), "2-D"),
        (np.zeros((3, 2), np.int64), np.zeros(3, int), "floating"),
        (np.array([[np.nan, 1.0], [1, 0]], np.float32), np.zeros(2, int), "NaN"),
        (np.ones((3, 2), np.float32), np.zeros(2, int), "one label per embedding"),
        (np.ones((3, 2), np.float32), np.zeros(3, float), "integer labels"),
        (np.ones((3, 0), np.float32), np.zeros(3, int), "expected \\(N, D\\) with N > 0 and D > 0"),
        (np.ones((3, 2), np.float32), np.array([0, 0.5, 1]), "array 'labels' contains non-integer values"),
    ],
)
def test_malformed_inputs_rejected(embeddings, labels, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate_retrieval(embeddings, labels, [1])


def test_gallery_dimension_mismatch_rejected():
    query, gallery = np.eye(2, dtype=np.float32), np.eye(3, dtype=np.float32)
    with pytest.raises(EvaluationError, match="Compute both with the same model"):
        evaluate_retrieval(query, np.zeros(2, int), [1], gallery, np.zeros(3, int), compute_nmi=False)


# ---------------------------------------------------------------------------
# References on random inputs


def naive_metrics(query, query_labels, reference, reference_labels, k_values, leave_one_out):
    """Full score matrix, stable sort by (-score, index), metrics per the textbook definitions."""
    query = l2_normalize(query).astype(np.float64)
    reference = l2_normalize(reference).astype(np.float64)
    scores = query @ reference.T
    recalls = {k: [] for k in k_values}
    average_precisions, r_precisions = [], []
    for row in range(len(query)):
        candidates = [j for j in range(len(reference)) if not (leave_one_out and j == row)]
        ordered = sorted(candidates, key=lambda j: (-scores[row, j], j))
        relevant = [reference_labels[j] == query_labels[row] for j in ordered]
        r = sum(relevant)
        if r == 0:
            continue
        for k in k_values:
            recalls[k].append(any(relevant[:k]))
        hits = 0
        precision_sum = 0.0
        for i in range(r):
            if relevant[i]:
                hits += 1
                precision_sum += hits / (i + 1)
        average_precisions.append(precision_sum / r)
        r_precisions.append(sum(relevant[:r]) / r)
    values = {f"recall@{k}": float(np.mean(recalls[k])) for k in k_values}
    values["map@r"] = float(np.mean(average_precisions))
    values["r_precision"] = float(np.mean(r_precisions))
    return values


def clustered(rng, n, classes, dim, spread):
    centres = rng.normal(size=(classes, dim))
    labels = rng.integers(0, classes, n)
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("n, classes, dim", [(40, 4, 3), (150, 12, 8), (300, 30, 16)])
def test_leave_one_out_matches_naive(n, classes, dim):
    rng = np.random.default_rng(n)
    embeddings, labels = clustered(rng, n, classes, dim, spread=1.0)
    k_values = [1, 2, 4, 8, 16]
    ours = evaluate_retrieval(embeddings, labels, k_values, compute_nmi=False).values
    naive = naive_metrics(embeddings, labels, embeddings, labels, k_values, leave_one_out=True)
    for metric, value in naive.items():
        assert ours[metric] == pytest.approx(value, abs=1e-9), metric


def test_tied_scores_match_naive():
    # Embeddings on a coarse grid produce many exact duplicates and ties.
    rng = np.random.default_rng(3)
    embeddings = rng.integers(-1, 2, size=(120, 2)).astype(np.float32)
    embeddings[np.all(embeddings == 0, axis=1)] = [1, 1]
    labels = rng.integers(0, 5, 120)
    k_values = [1, 2, 4, 8, 32]
    ours = evaluate_retrieval(embeddings, labels, k_values, compute_nmi=False).values
    naive = naive_metrics(embeddings, labels, embeddings, labels, k_values, leave_one_out=True)
    for metric, value in naive.items():
        assert ours[metric] == pytest.approx(value, abs=1e-9), metric


def test_query_gallery_matches_naive():
    rng = np.random.default_rng(11)
    queries, query_labels = clustered(rng, 80, 10, 6, spread=1.2)
    gallery, gallery_labels = clustered(np.random.default_rng(12), 120, 10, 6, spread=1.2)
    k_values = [1, 2, 4, 8]
    ours = evaluate_retrieval(queries, query_labels, k_values, gallery, gallery_labels, compute_nmi=False)
    naive = naive_metrics(queries, query_labels, gallery, gallery_labels, k_values, leave_one_out=False)
    for metric, value in naive.items():
        assert ours.values[metric] == pytest.approx(value, abs=1e-9), metric


def test_block_of_identical_vectors():
    # 60 identical vectors of two classes plus a few others: every ranking
    # is a tie, and the query's own row must be excluded by index.
    embeddings = np.vstack([np.tile([[1.0, 0.0]], (60, 1)), unit_vectors([1.0, 1.2, 2.0])]).astype(np.float32)
    labels = np.array([0, 1] * 30 + [2, 2, 3])
    k_values = [1, 2, 4]
    result = evaluate_retrieval(embeddings, labels, k_values, compute_nmi=False)
    naive = naive_metrics(embeddings, labels, embeddings, labels, k_values, leave_one_out=True)
    assert result.excluded_queries == 1
    for metric, value in naive.items():
        assert result.values[metric] == pytest.approx(value, abs=1e-9), metric


def test_large_identical_block_with_many_classes():
    # 1,000 identical vectors of 100 classes: each row has about 1,000 tied
    # candidates for a top R of 9, far more than the candidate sort takes.
    rng = np.random.default_rng(8)
    others, other_labels = clustered(rng, 200, 20, 4, spread=0.5)
    embeddings = np.vstack([np.tile(others[:1], (1000, 1)), others]).astype(np.float32)
    labels = np.concatenate([np.arange(1000) % 100, other_labels + 100])
    k_values = [1, 2, 4, 8, 1000, 5000]
    result = evaluate_retrieval(embeddings, labels, k_values, compute_nmi=False)
    naive = naive_metrics(embeddings, labels, embeddings, labels, k_values[:-1], leave_one_out=True)
    assert set(result.values) == {f"recall@{k}" for k in k_values} | {"map@r", "r_precision"}
    assert result.clipped_k == (5000,)
    for metric, value in naive.items():
        assert result.values[metric] == pytest.approx(value, abs=1e-9), metric


def test_matches_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(5)
    embeddings, labels = clustered(rng, 400, 20, 16, spread=1.5)
    ours = evaluate_retrieval(embeddings, labels, [1], compute_nmi=False).values
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count"
    )
    normalized = torch.from_numpy(l2_normalize(embeddings))
    reference = calculator.get_accuracy(normalized, torch.from_numpy(labels))
    assert ours["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)


def test_nmi_is_seeded_and_high_for_separated_clusters():
    rng = np.random.default_rng(2)
    embeddings, labels = clustered(rng, 300, 5, 8, spread=0.05)
    first = kmeans_nmi(l2_normalize(embeddings), labels, seed=0, restarts=3)
    second = kmeans_nmi(l2_normalize(embeddings), labels, seed=0, restarts=3)
    assert first == second
    assert first > 0.99
    assert math.isnan(kmeans_nmi(l2_normalize(embeddings[:1]), labels[:1], seed=0))


def test_memory_budget_does_not_change_results():
    rng = np.random.default_rng(9)
    embeddings, labels = clustered(rng, 200, 15, 8, spread=1.0)
    embeddings[50:60] = embeddings[50]
    small = evaluate_retrieval(embeddings, labels, [1, 2, 4, 8], compute_nmi=False, memory_mb=0.01)
    large = evaluate_retrieval(embeddings, labels, [1, 2, 4, 8], compute_nmi=False, memory_mb=1024)
    assert small.values == large.values


@pytest.mark.parametrize("n, classes", [(600, 12), (1500, 30)])
def test_matches_pytorch_metric_learning_at_several_sizes(n, classes):
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(n)
    # Clusters separated enough that k-means from any start finds most of them,
    # so the two NMI values differ only by their random initializations.
    embeddings, labels = clustered(rng, n, classes, 32, spread=0.4)
    ours = evaluate_retrieval(embeddings, labels, [1], compute_nmi=True, seed=0).values
    calculator = AccuracyCalculator(
        include=("precision_at_1", "mean_average_precision_at_r", "r_precision", "NMI"), k="max_bin_count"
    )
    reference = calculator.get_accuracy(torch.from_numpy(l2_normalize(embeddings)), torch.from_numpy(labels))
    assert ours["recall@1"] == pytest.approx(reference["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(reference["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(reference["r_precision"], abs=1e-6)
    assert abs(ours["nmi"] - reference["NMI"]) < 0.02


# ---------------------------------------------------------------------------
# Where the score blocks are computed


class FakeGpuFaiss:
    """Stands in for faiss-gpu: scores in float64, rounded to float32, and counts the calls."""

    def __init__(self):
        self.calls = 0
        self.kmeans_gpus = []

    def install(self, monkeypatch):
        monkeypatch.setattr(evaluation.faiss, "StandardGpuResources", lambda: "resources", raising=False)
        monkeypatch.setattr(evaluation.faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(evaluation.faiss, "pairwise_distance_gpu", self.pairwise_distance_gpu, raising=False)
        monkeypatch.setattr(evaluation.faiss, "index_cpu_to_all_gpus", self.index_cpu_to_all_gpus, raising=False)
        monkeypatch.setattr(evaluation.faiss.extra_wrappers, "get_num_gpus", lambda: 1)

    def index_cpu_to_all_gpus(self, index, ngpu):
        self.kmeans_gpus.append(ngpu)
        return index

    def pairwise_distance_gpu(self, resources, xq, xb, D, metric, device):
        assert resources == "resources"
        assert device == 0
        assert metric == evaluation.faiss.METRIC_INNER_PRODUCT
        assert D.shape == (len(xq), len(xb))
        assert D.dtype == np.float32
        self.calls += 1
        D[:] = xq.astype(np.float64) @ xb.astype(np.float64).T
        return D


def test_stand_in_matches_faiss_gpu_signature():
    import inspect

    real = inspect.signature(evaluation.faiss.pairwise_distance_gpu).parameters
    assert list(real) == ["res", "xq", "xb", "D", "metric", "device"]


def test_auto_search_prefers_faiss_gpu(monkeypatch):
    rng = np.random.default_rng(4)
    embeddings, labels = clustered(rng, 400, 20, 16, spread=0.8)
    embeddings[100:140] = embeddings[100]  # a block of exact duplicates: ties
    cpu = evaluate_retrieval(embeddings, labels, [1, 2, 4, 8, 16], search="cpu")
    fake = FakeGpuFaiss()
    fake.install(monkeypatch)
    gpu = evaluate_retrieval(embeddings, labels, [1, 2, 4, 8, 16], memory_mb=0.1)
    assert cpu.search == "cpu"
    assert gpu.search == "gpu"
    assert fake.calls > 1  # several chunks, each on the GPU
    assert fake.kmeans_gpus == [1]  # the k-means for NMI on the GPU too
    for metric, value in cpu.values.items():
        assert gpu.values[metric] == pytest.approx(value, abs=1e-6), metric


def test_auto_search_without_a_gpu_uses_the_cpu():
    embeddings = unit_vectors([0.0, 0.1, 1.5, 1.6])
    result = evaluate_retrieval(embeddings, np.array([0, 0, 1, 1]), [1], compute_nmi=False)
    assert evaluation.faiss_gpu_count() == 0
    assert result.search == "cpu"


def test_gpu_search_without_gpu_rejected():
    with pytest.raises(EvaluationError, match=r"eval.search \(--search\): 'gpu' needs a faiss build with GPU support") as error:
        evaluate_retrieval(unit_vectors([0.0, 0.1]), np.array([0, 0]), [1], compute_nmi=False, search="gpu")
    assert "faiss-gpu-cu12" in str(error.value)
    assert "cpu or auto" in str(error.value)


def test_unknown_search_backend_rejected():
    with pytest.raises(EvaluationError, match=r"eval.search \(--search\): expected one of auto, cpu, gpu, got 'cuda'"):
        evaluate_retrieval(unit_vectors([0.0, 0.1]), np.array([0, 0]), [1], compute_nmi=False, search="cuda")


def naive_ranking(row_scores):
    """All indices of a row by (score descending, index ascending)."""
    return np.lexsort((np.arange(len(row_scores)), -row_scores))


@pytest.mark.parametrize("levels", [None, 3, 300])
def test_candidate_ranking_matches_a_full_sort(levels):
    # Continuous scores take the candidate path; a few distinct score levels
    # make ties so large that they crowd the candidates (per-row paths).
    rng = np.random.default_rng(11 if levels is None else levels)
    if levels is None:
        scores = rng.normal(size=(60, 3000)).astype(np.float32)
    else:
        scores = rng.integers(0, levels, size=(60, 3000)).astype(np.float32)
    scores[3, 10] = -np.inf  # an excluded self match
    depths = rng.integers(1, 30, 60)
    first_positive = rng.integers(0, 3000, 60)
    first_positive[3] = 11
    first_positive[:5] = [naive_ranking(scores[row])[0] for row in range(5)]  # ranked first
    ranked, ranks = evaluation._rank_candidates(scores, depths, first_positive)
    assert ranked.shape == (60, depths.max())
    for row in range(60):
        order = naive_ranking(scores[row])
        assert ranked[row, : depths[row]].tolist() == order[: depths[row]].tolist()
        assert (ranked[row, depths[row] :] == -1).all()
        assert ranks[row] == int(np.flatnonzero(order == first_positive[row])[0])
