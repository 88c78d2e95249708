"""Training loop, per-epoch model selection, checkpoints and the final evaluation of one run."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader

from harness.config import RunConfig, TrainConfig
from harness.data import DataLocation, Splits, check_batching, load_splits
from harness.errors import ConfigError, HarnessError, TrainingFailed
from harness.evaluation import RetrievalResult, evaluate_embedding_arrays
from harness.model import EmbeddingModel, build_model
from harness.progress import NullProgress
from losses import LOSSES

SELECTIONS = ("last", "best-val", "best-test")


@dataclass
class SelectedModel:
    """The evaluation of one selected epoch: test metrics and the embeddings behind them."""

    epoch: int
    score: float
    test: RetrievalResult
    arrays: dict[str, dict[str, np.ndarray]]


@dataclass
class TrainingOutcome:
    """Per-epoch history and the evaluation of each model selection of one run."""

    history: list[dict]
    selections: dict[str, SelectedModel]
    device: str
    data_summary: dict
    warnings: list[str]
    manifest: dict

    @property
    def test(self) -> RetrievalResult:
        """Return the test evaluation of the last epoch."""
        return self.selections["last"].test


@dataclass
class TrainingState:
    """Epoch count, history and best selections that a checkpoint restores besides module states."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict[str, SelectedModel] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Setup


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``, ``cpu`` or ``cuda`` into a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was requested but no CUDA device is available. Use auto or cpu.")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype of the forward pass, or None for float32."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def check_train_config(config: TrainConfig) -> None:
    """Reject training settings whose combination is invalid."""
    if config.warmup_epochs >= config.epochs:
        raise ConfigError(
            f"train.warmup_epochs: {config.warmup_epochs} must be below train.epochs ({config.epochs}), "
            "since warm-up epochs are counted in train.epochs."
        )
    if config.grad_clip_norm > 0 and config.grad_clip_value > 0:
        raise ConfigError("train.grad_clip_norm and train.grad_clip_value are both set; choose one clipping rule.")


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


def parameter_groups(model: EmbeddingModel, loss: torch.nn.Module, config: RunConfig) -> list[dict]:
    """Split parameters into named optimizer groups: backbone, head and the loss's own."""
    lr = config.train.lr
    groups = [
        {"name": "backbone", "params": list(model.backbone.parameters()), "lr": lr},
        {"name": "head", "params": model.head_parameters(), "lr": lr * config.train.head_lr_multiplier},
        {"name": "loss", "params": list(loss.parameters()), "lr": lr * config.loss.lr_multiplier},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, eps=config.adam_eps)


def schedule_factor(config: TrainConfig, completed_epochs: int) -> float:
    """Return the learning-rate factor for the epoch after ``completed_epochs`` epochs."""
    if config.schedule == "step":
        return config.lr_decay ** (completed_epochs // config.step_size)
    if config.schedule == "multistep":
        return config.lr_decay ** sum(1 for milestone in config.milestones if completed_epochs >= milestone)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * completed_epochs / config.epochs))
    return 1.0


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda completed: schedule_factor(config, completed))


def build_train_loader(dataset, labels: np.ndarray, config: RunConfig, seed: int, num_workers: int = 0) -> DataLoader:
    """Return the training loader; an epoch is len(dataset) // batch_size full batches."""
    batch_size = config.data.batch_size
    check_batching(config.data, len(dataset), len(np.unique(labels)))
    if config.data.sampler == "class_balanced":
        # The sampler draws from NumPy's global generator, which checkpoints save and restore.
        sampler = MPerClassSampler(
            labels, m=config.data.images_per_class, batch_size=batch_size, length_before_new_iter=len(dataset)
        )
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True, num_workers=num_workers
    )


def prepare_backbone(model: EmbeddingModel, warm_up: bool, freeze_bn: str) -> None:
    """Set train mode, freeze the backbone during warm-up, and freeze BatchNorm as ``freeze_bn`` specifies."""
    model.train()
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(not warm_up)
    if warm_up:
        # A frozen backbone keeps its BatchNorm statistics too.
        model.backbone.eval()
        return
    if freeze_bn == "none":
        return
    for module in model.backbone.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
            if freeze_bn == "stats_affine":
                for parameter in module.parameters():
                    parameter.requires_grad_(False)


# ---------------------------------------------------------------------------
# One step


def train_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
    grad_clip_norm: float = 0.0,
    grad_clip_value: float = 0.0,
) -> float:
    """Run one optimization step and return the loss.

    The forward pass may run under autocast. The loss always gets float32
    embeddings outside autocast, so scaled logits stay finite and library
    losses cannot cast their parameters to half precision.

    Raises:
        TrainingFailed: the loss is NaN or infinite.
    """
    with torch.autocast(device_type=images.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        embeddings = model(images)
    loss = loss_fn(embeddings.float(), labels)
    if not torch.isfinite(loss):
        raise TrainingFailed(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip_norm > 0 or grad_clip_value > 0:
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip_norm)
        if grad_clip_value > 0:
            torch.nn.utils.clip_grad_value_(parameters, grad_clip_value)
    optimizer.step()
    return loss.item()


# ---------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def compute_embeddings(
    model: torch.nn.Module, dataset, batch_size: int, device: torch.device, num_workers: int = 0, amp_dtype=None
) -> tuple[np.ndarray, np.ndarray]:
    """Embed a dataset in evaluation mode and return float32 embeddings and labels."""
    model.eval()
    embeddings, labels = [], []
    for images, batch_labels in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            embeddings.append(model(images.to(device)).float().cpu())
        labels.append(batch_labels)
    return torch.cat(embeddings).numpy(), torch.cat(labels).numpy()


def embed_split(model, splits: Splits, split: str, config: RunConfig, device, amp_dtype) -> dict[str, np.ndarray]:
    """Return a split's embeddings, rounded to the stored dtype, as the arrays of an embeddings file.

    Leave-one-out splits give ``embeddings`` and ``labels``; In-Shop's test
    split gives ``query_*`` and ``gallery_*`` arrays.
    """
    dtype = np.float16 if config.eval.embedding_dtype == "float16" else np.float32

    def embed(dataset):
        embeddings, labels = compute_embeddings(
            model, dataset, config.eval.batch_size, device, splits.num_workers, amp_dtype
        )
        return embeddings.astype(dtype), labels.astype(np.int64)

    if split == "val":
        embeddings, labels = embed(splits.val)
        return {"embeddings": embeddings, "labels": labels}
    embeddings, labels = embed(splits.test)
    if splits.gallery is None:
        return {"embeddings": embeddings, "labels": labels}
    gallery_embeddings, gallery_labels = embed(splits.gallery)
    return {
        "query_embeddings": embeddings,
        "query_labels": labels,
        "gallery_embeddings": gallery_embeddings,
        "gallery_labels": gallery_labels,
    }


def evaluate_arrays(arrays: dict[str, np.ndarray], config: RunConfig, seed: int, nmi: bool) -> RetrievalResult:
    """Evaluate the arrays of an embeddings file exactly as they are stored."""
    return evaluate_embedding_arrays(
        arrays,
        config.eval.k,
        compute_nmi=nmi,
        seed=seed,
        kmeans_restarts=config.eval.kmeans_restarts,
        memory_mb=config.eval.memory_mb,
        search=config.eval.search,
    )


# ---------------------------------------------------------------------------
# Checkpoints


def _result_to_dict(result: RetrievalResult) -> dict:
    return {
        "values": dict(result.values),
        "excluded_queries": result.excluded_queries,
        "num_queries": result.num_queries,
        "clipped_k": list(result.clipped_k),
        "search": result.search,
    }


def _result_from_dict(data: dict) -> RetrievalResult:
    return RetrievalResult(
        values=dict(data["values"]),
        excluded_queries=int(data["excluded_queries"]),
        num_queries=int(data["num_queries"]),
        clipped_k=tuple(data["clipped_k"]),
        search=data.get("search", "cpu"),
    )


def save_checkpoint(path: Path, state: TrainingState, modules: dict, loader: DataLoader) -> None:
    """Write model, optimizer, scheduler, sampler and RNG states atomically; loadable with weights_only=True."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    generator = getattr(loader, "generator", None)
    payload = {
        "epoch": state.epoch,
        "history": state.history,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "rng_torch": torch.get_rng_state(),
        "rng_numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "rng_python": [python_state[0], list(python_state[1]), python_state[2]],
        "loader_generator": generator.get_state() if generator is not None else None,
        "best": {
            name: {
                "epoch": selected.epoch,
                "score": selected.score,
                "test": _result_to_dict(selected.test),
                "arrays": {
                    split: {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in arrays.items()}
                    for split, arrays in selected.arrays.items()
                },
            }
            for name, selected in state.best.items()
        },
    }
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    temporary.replace(path)


def load_checkpoint(path: Path, modules: dict, loader: DataLoader) -> TrainingState:
    """Restore what :func:`save_checkpoint` wrote and return the training state to continue from."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for name, module in modules.items():
        module.load_state_dict(payload["modules"][name])
    torch.set_rng_state(payload["rng_torch"])
    name, keys, *rest = payload["rng_numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = payload["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    generator = getattr(loader, "generator", None)
    if generator is not None and payload["loader_generator"] is not None:
        generator.set_state(payload["loader_generator"])
    best = {}
    for selection, data in payload["best"].items():
        arrays = {
            split: {key: value.numpy() for key, value in split_arrays.items()}
            for split, split_arrays in data["arrays"].items()
        }
        best[selection] = SelectedModel(data["epoch"], data["score"], _result_from_dict(data["test"]), arrays)
    return TrainingState(epoch=payload["epoch"], history=payload["history"], best=best)


# ---------------------------------------------------------------------------
# The run


def train_and_evaluate(
    config: RunConfig,
    seed: int,
    progress=None,
    location: DataLocation | None = None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
) -> TrainingOutcome:
    """Train one model from ``config`` and ``seed``, selecting epochs on validation and test splits.

    With ``checkpoint_path`` every epoch ends with a checkpoint; with
    ``resume`` the run continues from it and ends with the metrics an
    uninterrupted run gives.

    Raises:
        TrainingFailed: the loss became NaN or infinite.
    """
    progress = progress or NullProgress()
    device = resolve_device(config.train.device)
    amp_dtype = autocast_dtype(config.train.precision, device)
    check_train_config(config.train)

    # Setup: one seed fixes the initialization, the batch order, the augmentation and k-means.
    seed_everything(seed)
    splits = load_splits(config.data, seed, location, progress)
    model = build_model(config.model).to(device)
    loss_fn = LOSSES[config.loss.name](splits.num_train_classes, model.embedding_dim, **config.loss.kwargs()).to(device)
    optimizer = build_optimizer(config.train, parameter_groups(model, loss_fn, config))
    scheduler = build_scheduler(config.train, optimizer)
    loader = build_train_loader(splits.train, splits.train_labels, config, seed, splits.num_workers)
    modules = {"model": model, "loss": loss_fn, "optimizer": optimizer, "scheduler": scheduler}

    state = TrainingState()
    if resume:
        if checkpoint_path is None or not checkpoint_path.exists():
            raise HarnessError(f"cannot resume: no checkpoint at {checkpoint_path}. Start the run again without --resume.")
        state = load_checkpoint(checkpoint_path, modules, loader)
    network = torch.compile(model) if config.model.compile else model
    channels_last = config.model.channels_last

    # Training, with evaluation for model selection every eval.every_epochs epochs.
    epochs = config.train.epochs
    progress.start_run(f"{config.loss.name} seed {seed}", epochs, len(loader))
    try:
        for _ in range(state.epoch):
            progress.end_epoch(0, float("nan"))
        for epoch in range(state.epoch + 1, epochs + 1):
            started = time.perf_counter()
            progress.start_epoch(epoch)
            prepare_backbone(model, epoch <= config.train.warmup_epochs, config.train.freeze_bn)
            if hasattr(splits.train, "set_epoch"):
                splits.train.set_epoch(epoch)
            record = {"epoch": epoch}
            for group in optimizer.param_groups:
                record[f"lr_{group['name']}"] = group["lr"]

            batch_losses = []
            for batch_index, (images, labels) in enumerate(loader):
                images = images.to(device)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                try:
                    loss = train_step(
                        network,
                        loss_fn,
                        optimizer,
                        images,
                        labels.to(device),
                        amp_dtype,
                        config.train.grad_clip_norm,
                        config.train.grad_clip_value,
                    )
                except TrainingFailed as error:
                    raise TrainingFailed(f"{error} at epoch {epoch}, batch {batch_index + 1}") from None
                batch_losses.append(loss)
                progress.advance_batch(loss)
            scheduler.step()
            record.update(train_loss=float(np.mean(batch_losses)), batches=len(batch_losses))

            every = config.eval.every_epochs
            if every and (epoch % every == 0 or epoch == epochs):
                select_epoch(network, splits, config, seed, device, amp_dtype, epoch, record, state)
            record["seconds"] = time.perf_counter() - started
            state.history.append(record)
            state.epoch = epoch
            if checkpoint_path is not None:
                save_checkpoint(checkpoint_path, state, modules, loader)
            progress.end_epoch(epoch, record["train_loss"])
    finally:
        progress.end_run()

    # Final evaluation: the last epoch, plus the selected epochs, each with NMI.
    selections = {}
    last_arrays = {"test": embed_split(network, splits, "test", config, device, amp_dtype)}
    if splits.val is not None:
        last_arrays["val"] = embed_split(network, splits, "val", config, device, amp_dtype)
    selections["last"] = SelectedModel(
        epochs, float("nan"), evaluate_arrays(last_arrays["test"], config, seed, config.eval.nmi), last_arrays
    )
    for name, selected in state.best.items():
        selected.test = evaluate_arrays(selected.arrays["test"], config, seed, config.eval.nmi)
        selections[name] = selected

    data_summary = splits.summary()
    data_summary["epoch"] = f"{len(loader)} batches of {config.data.batch_size} images ({config.data.sampler} sampler)"
    return TrainingOutcome(
        history=state.history,
        selections=selections,
        device=str(device),
        data_summary=data_summary,
        warnings=list(splits.warnings),
        manifest=splits.manifest,
    )


def select_epoch(network, splits, config, seed, device, amp_dtype, epoch, record, state: TrainingState) -> None:
    """Evaluate validation and test splits at one epoch, log them, and keep the best epochs."""
    metric = config.eval.selection_metric
    arrays = {"test": embed_split(network, splits, "test", config, device, amp_dtype)}
    test = evaluate_arrays(arrays["test"], config, seed, nmi=False)
    if metric not in test.values:
        raise ConfigError(f"eval.selection_metric: '{metric}' is not computed; choose one of {', '.join(test.values)}.")
    record.update({f"test_{name}": value for name, value in test.values.items()})
    candidates = {"best-test": test.values[metric]}
    if splits.val is not None:
        arrays["val"] = embed_split(network, splits, "val", config, device, amp_dtype)
        val = evaluate_arrays(arrays["val"], config, seed, nmi=False)
        record.update({f"val_{name}": value for name, value in val.values.items()})
        candidates["best-val"] = val.values[metric]
    for name, score in candidates.items():
        # Ties keep the earlier epoch.
        if name not in state.best or score > state.best[name].score:
            state.best[name] = SelectedModel(epoch, score, test, arrays)
