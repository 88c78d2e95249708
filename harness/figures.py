"""Report figures (matplotlib, Agg): curves over epochs and K with seeds aggregated, sensitivity plots."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)


def _finish(figure, axis, path: Path, xlabel: str, ylabel: str, title: str, legend_location: str = "best") -> None:
    """Label a one-axis line plot, add its legend and grid, and save it."""
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(fontsize=7, loc=legend_location)
    axis.grid(alpha=0.3)
    _save(figure, path)


def _history_of(contents, table) -> pd.DataFrame:
    history = contents.history
    if history.empty:
        return history
    run_hash = {r.run_id: r.config_hash for r in contents.records}
    run_dataset = {r.run_id: r.flat_config["data.dataset"] for r in contents.records}
    history = history[history["run_id"].map(run_dataset) == table.dataset].copy()
    history["config_hash"] = history["run_id"].map(run_hash)
    return history


def plot_training_loss(contents, table, path: Path) -> bool:
    """Plot mean training loss per epoch with a min-max band over seeds, one line per configuration."""
    history = _history_of(contents, table)
    if history.empty:
        return False
    run_loss = {r.run_id: r.flat_config["loss.name"] for r in contents.records}

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for config_hash in sorted(history["config_hash"].unique(), key=lambda h: table.labels.get(h, h)):
        per_epoch = history[history["config_hash"] == config_hash].groupby("epoch")["train_loss"]
        epochs = np.array(sorted(per_epoch.groups))
        mean = per_epoch.mean().loc[epochs].to_numpy()
        axis.plot(epochs, mean, marker="o", markersize=3, label=table.labels.get(config_hash, config_hash[:12]))
        axis.fill_between(epochs, per_epoch.min().loc[epochs], per_epoch.max().loc[epochs], alpha=0.2)

    train_classes = _train_classes(contents, table.dataset)
    if train_classes and "l2softmax" in set(history["run_id"].map(run_loss)):
        c = train_classes
        floor = math.log(1 + (c - 1) * math.exp(-c / (c - 1)))
        axis.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"l2softmax floor, C={c} ({floor:.3f})")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    title = f"{table.dataset}: training loss (mean over seeds, band = min-max)"
    _finish(figure, axis, path, "epoch", "mean training loss", title)
    return True


def _train_classes(contents, dataset: str) -> int | None:
    for record in contents.records:
        if record.flat_config.get("data.dataset") == dataset and "data" in record.status:
            return int(record.status["data"]["train_classes"])
    return None


def plot_epoch_recall(contents, table, path: Path) -> bool:
    """Plot validation (solid) and test (dashed) Recall@1 per epoch: mean line and min-max band over seeds."""
    history = _history_of(contents, table)
    columns = [c for c in ("val_recall@1", "test_recall@1") if c in history.columns]
    if history.empty or not columns:
        return False
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for config_hash in sorted(history["config_hash"].unique(), key=lambda h: table.labels.get(h, h)):
        part = history[history["config_hash"] == config_hash]
        label = table.labels.get(config_hash, config_hash[:12])
        for column in columns:
            per_epoch = part.dropna(subset=[column]).groupby("epoch")[column]
            if not len(per_epoch):
                continue
            epochs = np.array(sorted(per_epoch.groups))
            style = "-" if column.startswith("val") else "--"
            name = f"{label}, {'validation' if column.startswith('val') else 'test'}"
            axis.plot(epochs, 100 * per_epoch.mean().loc[epochs], style, marker="o", markersize=3, label=name)
            axis.fill_between(epochs, 100 * per_epoch.min().loc[epochs], 100 * per_epoch.max().loc[epochs], alpha=0.15)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylim(top=min(100.5, axis.get_ylim()[1]))
    title = f"{table.dataset}: Recall@1 per epoch (mean over seeds, band = min-max)"
    _finish(figure, axis, path, "epoch", "Recall@1 (%)", title)
    return True


def plot_recall_curves(table, path: Path) -> bool:
    """Plot Recall@K against K per configuration: mean line and 95% confidence band over seeds."""
    recall_metrics = [m for m in table.metrics if m.startswith("recall@")]
    if not recall_metrics:
        return False
    summary = table.summary
    k_values = np.array([int(m.split("@")[1]) for m in recall_metrics])
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for config_hash in sorted(summary["config_hash"].unique(), key=lambda h: table.labels.get(h, h)):
        part = summary[summary["config_hash"] == config_hash].set_index("metric")
        if not set(recall_metrics) <= set(part.index):
            continue
        means = part.loc[recall_metrics, "mean"].to_numpy(dtype=float)
        axis.plot(k_values, means, marker="o", markersize=3, label=table.labels.get(config_hash, config_hash[:12]))
        low = part.loc[recall_metrics, "ci_low"].to_numpy(dtype=float)
        high = part.loc[recall_metrics, "ci_high"].to_numpy(dtype=float)
        if not np.isnan(low).all():
            axis.fill_between(k_values, np.maximum(low, 0), np.minimum(high, 100), alpha=0.2)
    axis.set_xscale("log", base=2 if k_values.max() <= 64 else 10)
    axis.set_xticks(k_values, [str(k) for k in k_values])
    axis.set_ylim(top=min(100.5, axis.get_ylim()[1]))
    title = f"{table.dataset}: Recall@K (mean over seeds, band = 95% CI)"
    _finish(figure, axis, path, "K", "Recall@K (%)", title, legend_location="lower right")
    return True


def plot_sensitivity(dataset: str, variants: dict, path: Path) -> bool:
    """Plot SGSL's Recall@1 under each value of each varied assumed setting, with 95% intervals."""
    if not variants:
        return False
    figure, axes = plt.subplots(1, len(variants), figsize=(3.6 * len(variants), 3.6), dpi=110, squeeze=False)
    for axis, (key, entries) in zip(axes[0], sorted(variants.items())):
        names = [name for name, _ in entries]
        means = np.array([summary["mean"] for _, summary in entries])
        errors = np.array([0 if math.isnan(s["ci_low"]) else s["mean"] - s["ci_low"] for _, s in entries])
        axis.errorbar(range(len(entries)), means, yerr=errors, fmt="o", capsize=4)
        axis.set_xticks(range(len(entries)), names, rotation=30, fontsize=7)
        axis.set_title(key, fontsize=9)
        axis.set_ylabel("Recall@1 (%)")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{dataset}: SGSL R@1 per assumed value (95% CI)", fontsize=9)
    _save(figure, path)
    return True


def plot_heatmap(dataset: str, grid, first: str, second: str, path: Path) -> bool:
    """Plot mean Recall@1 over a two-setting grid."""
    if grid is None:
        return False
    rows, columns, matrix = grid
    figure, axis = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 1.0 * len(rows) + 1.8), dpi=110)
    image = axis.imshow(matrix, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(columns)), [str(c) for c in columns])
    axis.set_yticks(range(len(rows)), [str(r) for r in rows])
    axis.set_xlabel(second)
    axis.set_ylabel(first)
    for i in range(len(rows)):
        for j in range(len(columns)):
            if not math.isnan(matrix[i, j]):
                axis.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image, ax=axis, label="mean Recall@1 (%)")
    axis.set_title(f"{dataset}: SGSL Recall@1, {first} x {second}", fontsize=9)
    _save(figure, path)
    return True
