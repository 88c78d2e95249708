"""Training loop and final evaluation of one run."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader

from harness.config import RunConfig, TrainConfig
from harness.data import DataLocation, Splits, load_splits
from harness.errors import ConfigError, TrainingFailed
from harness.evaluation import RetrievalResult, evaluate_retrieval
from harness.model import EmbeddingModel, build_model
from harness.progress import NullProgress
from losses import LOSSES


@dataclass
class TrainingOutcome:
    """Per-epoch history and the final test evaluation of one run."""

    history: list[dict]
    test: RetrievalResult
    device: str
    data_summary: dict
    warnings: list[str]
    manifest: dict


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``, ``cpu`` or ``cuda`` into a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was requested but no CUDA device is available. Use auto or cpu.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels.

    Denormal floats are flushed to zero: losses with tiny gradients, such as
    the unscaled l2softmax, otherwise run many times slower on x86 CPUs.
    """
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def parameter_groups(model: EmbeddingModel, loss: torch.nn.Module, lr: float, lr_multiplier: float) -> list[dict]:
    """Split parameters into named optimizer groups: backbone, head and the loss's own."""
    groups = [
        {"name": "backbone", "params": list(model.backbone.parameters()), "lr": lr},
        {"name": "head", "params": model.head_parameters(), "lr": lr},
        {"name": "loss", "params": list(loss.parameters()), "lr": lr * lr_multiplier},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def build_train_loader(dataset, labels: np.ndarray, config: RunConfig, seed: int, num_workers: int = 0) -> DataLoader:
    """Return the training loader; an epoch is len(dataset) // batch_size full batches."""
    batch_size = config.data.batch_size
    if len(dataset) < batch_size:
        raise ConfigError(
            f"data.batch_size: {batch_size} is larger than the training split ({len(dataset)} images)."
        )
    if config.data.sampler == "class_balanced":
        if batch_size % config.data.images_per_class:
            raise ConfigError(
                f"data.images_per_class: {config.data.images_per_class} must divide data.batch_size ({batch_size})."
            )
        classes = len(np.unique(labels))
        if classes * config.data.images_per_class < batch_size:
            raise ConfigError(
                f"data.batch_size: {batch_size} needs at least {batch_size // config.data.images_per_class} classes "
                f"with {config.data.images_per_class} images per class, but the training split has {classes}."
            )
        sampler = MPerClassSampler(
            labels, m=config.data.images_per_class, batch_size=batch_size, length_before_new_iter=len(dataset)
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True, num_workers=num_workers
    )


@torch.no_grad()
def compute_embeddings(
    model: EmbeddingModel, dataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a dataset in evaluation mode and return float32 embeddings and labels."""
    model.eval()
    embeddings, labels = [], []
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        embeddings.append(model(images.to(device)).float().cpu())
        labels.append(batch_labels)
    return torch.cat(embeddings).numpy(), torch.cat(labels).numpy()


def evaluate_split(
    model: EmbeddingModel, splits: Splits, split: str, config: RunConfig, seed: int, device: torch.device, nmi: bool
) -> RetrievalResult:
    """Embed and evaluate the validation or test split (In-Shop's test queries against its gallery)."""
    embed = lambda dataset: compute_embeddings(model, dataset, config.eval.batch_size, device, splits.num_workers)  # noqa: E731
    embeddings, labels = embed(splits.val if split == "val" else splits.test)
    gallery_embeddings = gallery_labels = None
    if split == "test" and splits.gallery is not None:
        gallery_embeddings, gallery_labels = embed(splits.gallery)
    return evaluate_retrieval(
        embeddings,
        labels,
        config.eval.k,
        gallery_embeddings,
        gallery_labels,
        compute_nmi=nmi,
        seed=seed,
        kmeans_restarts=config.eval.kmeans_restarts,
    )


def train_and_evaluate(
    config: RunConfig, seed: int, progress=None, location: DataLocation | None = None
) -> TrainingOutcome:
    """Train one model from ``config`` and ``seed`` and evaluate the last epoch on the test split.

    Raises:
        TrainingFailed: the loss became NaN or infinite.
    """
    progress = progress or NullProgress()
    device = resolve_device(config.train.device)

    # Setup: one seed fixes the initialization, the batch order and k-means.
    seed_everything(seed)
    splits = load_splits(config.data, seed, location, progress)
    model = build_model(config.model).to(device)
    loss_fn = LOSSES[config.loss.name](splits.num_train_classes, model.embedding_dim, **config.loss.kwargs()).to(device)
    groups = parameter_groups(model, loss_fn, config.train.lr, config.loss.lr_multiplier)
    optimizer = build_optimizer(config.train, groups)
    loader = build_train_loader(splits.train, splits.train_labels, config, seed, splits.num_workers)

    # Training: the model of the last epoch is the one evaluated.
    history = []
    progress.start_run(f"{config.loss.name} seed {seed}", config.train.epochs, len(loader))
    try:
        for epoch in range(1, config.train.epochs + 1):
            model.train()
            started = time.perf_counter()
            progress.start_epoch(epoch)
            if hasattr(splits.train, "set_epoch"):
                splits.train.set_epoch(epoch)
            batch_losses = []
            for batch_index, (images, labels) in enumerate(loader):
                embeddings = model(images.to(device))
                loss = loss_fn(embeddings, labels.to(device))
                if not torch.isfinite(loss):
                    raise TrainingFailed(f"loss is {loss.item()} at epoch {epoch}, batch {batch_index + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                batch_losses.append(loss.item())
                progress.advance_batch(batch_losses[-1])

            record = {"epoch": epoch, "train_loss": float(np.mean(batch_losses)), "batches": len(batch_losses)}
            for group in optimizer.param_groups:
                record[f"lr_{group['name']}"] = group["lr"]
            if splits.val is not None:
                validation = evaluate_split(model, splits, "val", config, seed, device, nmi=False)
                record.update({f"val_{name}": value for name, value in validation.values.items()})
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            progress.end_epoch(epoch, record["train_loss"])
    finally:
        progress.end_run()

    # Evaluation of the last epoch on the class-disjoint test split.
    result = evaluate_split(model, splits, "test", config, seed, device, nmi=config.eval.nmi)
    data_summary = splits.summary()
    data_summary["epoch"] = f"{len(loader)} batches of {config.data.batch_size} images ({config.data.sampler} sampler)"
    return TrainingOutcome(
        history=history,
        test=result,
        device=str(device),
        data_summary=data_summary,
        warnings=list(splits.warnings),
        manifest=splits.manifest,
    )
