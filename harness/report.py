"""Reports built from the result store alone: tables, curves and bars over seeds.

The report reads finished runs (state ``finished`` in ``status.json``), groups
them by dataset and configuration (config hash), and gives every metric as
mean, standard deviation and 95% Student-t confidence interval over seeds,
in percent. The same results folder always gives the same report.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from harness.store import FINISHED, ResultStore, read_json  # noqa: E402

CONVERGENCE_LOSSES = ("softmax", "l2softmax", "normsoftmax", "sgsl")
# Keys that identify a row already or never differ in a meaningful way.
LABEL_SKIPPED_KEYS = {"data.dataset", "loss.name", "train.device", "eval.batch_size"}


@dataclass
class RunRecord:
    """One run folder as read from disk."""

    run_id: str
    state: str
    reason: str
    seed: int
    config_hash: str
    config: dict
    flat_config: dict
    status: dict
    env: dict
    assumed: dict


@dataclass
class StoreContents:
    """Finished runs' metrics and histories, plus every run record."""

    records: list[RunRecord]
    metrics: pd.DataFrame
    history: pd.DataFrame


def _flatten(config: dict) -> dict:
    flat = {}
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if section == "loss" and key == "hyperparameters":
                for name, hyper in value.items():
                    flat[f"loss.{name}"] = hyper
            else:
                flat[f"{section}.{key}"] = value
    return flat


def load_store(results_dir: Path) -> StoreContents:
    """Read every run folder; only finished runs contribute metrics."""
    store = ResultStore(results_dir)
    records, metrics, histories = [], [], []
    for run_id in store.run_ids():
        run_dir = store.run_dir(run_id)
        status = store.status(run_id)
        config_path = run_dir / "config.json"
        if status is None or not config_path.exists():
            continue
        config_file = read_json(config_path)
        env_path = run_dir / "env.json"
        record = RunRecord(
            run_id=run_id,
            state=status.get("state", "unknown"),
            reason=status.get("reason", ""),
            seed=int(config_file["seed"]),
            config_hash=config_file["config_hash"],
            config=config_file["config"],
            flat_config=_flatten(config_file["config"]),
            status=status,
            env=read_json(env_path) if env_path.exists() else {},
            assumed=config_file.get("assumed", {}),
        )
        if record.state == FINISHED and store.is_finished(run_id):
            metrics.append(pd.read_parquet(run_dir / "metrics.parquet"))
            history_path = run_dir / "history.parquet"
            if history_path.exists():
                history = pd.read_parquet(history_path)
                history["run_id"] = run_id
                histories.append(history)
        elif record.state == FINISHED:
            record.state = "incomplete"
        records.append(record)
    return StoreContents(
        records=records,
        metrics=pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(),
        history=pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(),
    )


def summarize(values: np.ndarray) -> dict:
    """Return n, mean, sample standard deviation and the 95% Student-t interval of the mean."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(values.std(ddof=1))
    half_width = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half_width, "ci_high": mean + half_width}


def _metric_order(metric: str) -> tuple:
    if metric.startswith("recall@"):
        return (0, int(metric.split("@")[1]))
    return (1, ["map@r", "r_precision", "nmi"].index(metric) if metric in ("map@r", "r_precision", "nmi") else 9)


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def configuration_labels(records: list[RunRecord]) -> dict[str, str]:
    """Name each configuration by its loss plus every setting that differs between configurations.

    Loss hyperparameters are compared only among configurations of the same
    loss, since other losses do not have them.
    """
    by_hash = {}
    for record in records:
        by_hash.setdefault(record.config_hash, record.flat_config)

    def varies(key: str, flats: list[dict]) -> bool:
        return len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1

    shared_keys = sorted({k for flat in by_hash.values() for k in flat if not k.startswith("loss.")} - LABEL_SKIPPED_KEYS)
    varying_shared = [key for key in shared_keys if varies(key, list(by_hash.values()))]
    labels = {}
    for config_hash, flat in by_hash.items():
        same_loss = [other for other in by_hash.values() if other["loss.name"] == flat["loss.name"]]
        loss_keys = sorted(k for k in flat if k.startswith("loss.") and k not in LABEL_SKIPPED_KEYS)
        settings = [f"{key}={_format_value(flat.get(key))}" for key in varying_shared]
        settings += [f"{key[5:]}={_format_value(flat[key])}" for key in loss_keys if varies(key, same_loss)]
        labels[config_hash] = flat["loss.name"] + (f" ({', '.join(settings)})" if settings else "")
    return labels


@dataclass
class DatasetTable:
    """The summary of one dataset: rows of configurations by metrics."""

    dataset: str
    summary: pd.DataFrame
    metrics: list[str]
    labels: dict[str, str]
    failed: dict[str, int]
    warnings: dict[str, list[str]]


def build_tables(contents: StoreContents) -> list[DatasetTable]:
    """Aggregate finished runs over seeds, one table per dataset."""
    tables = []
    metrics = primary_rows(contents.metrics)
    for dataset in sorted(metrics["dataset"].unique()):
        subset = metrics[metrics["dataset"] == dataset]
        records = [r for r in contents.records if r.flat_config.get("data.dataset") == dataset]
        labels = configuration_labels(records)
        failed: dict[str, int] = {}
        warnings: dict[str, list[str]] = {}
        for record in records:
            if record.state != FINISHED:
                failed[record.config_hash] = failed.get(record.config_hash, 0) + 1
                continue
            for warning in record.status.get("warnings", []):
                if warning not in warnings.setdefault(record.config_hash, []):
                    warnings[record.config_hash].append(warning)
        rows = []
        for (config_hash, metric), group in subset.groupby(["config_hash", "metric"], sort=True):
            group = group.sort_values("seed")
            row = {
                "dataset": dataset,
                "configuration": labels.get(config_hash, config_hash[:12]),
                "loss": group["loss"].iloc[0],
                "protocol": group["protocol"].iloc[0],
                "config_hash": config_hash,
                "metric": metric,
                "seeds": ",".join(str(s) for s in group["seed"]),
                "k_clipped": bool(group["k_clipped"].any()),
                "excluded_queries": int(group["excluded_queries"].max()),
                "failed_runs": failed.get(config_hash, 0),
            }
            row.update(summarize(group["value"].to_numpy() * 100.0))
            rows.append(row)
        for config_hash, count in failed.items():
            if config_hash not in set(subset["config_hash"]):
                rows.append(
                    {
                        "dataset": dataset,
                        "configuration": labels.get(config_hash, config_hash[:12]),
                        "loss": next(r.flat_config["loss.name"] for r in records if r.config_hash == config_hash),
                        "protocol": next(r.config.get("protocol", "") for r in records if r.config_hash == config_hash),
                        "config_hash": config_hash,
                        "metric": "",
                        "seeds": "",
                        "k_clipped": False,
                        "excluded_queries": 0,
                        "failed_runs": count,
                        "n": 0,
                        "mean": math.nan,
                        "std": math.nan,
                        "ci_low": math.nan,
                        "ci_high": math.nan,
                    }
                )
        summary = pd.DataFrame(rows)
        metric_names = sorted((m for m in summary["metric"].unique() if m), key=_metric_order)
        tables.append(DatasetTable(dataset, summary, metric_names, labels, failed, warnings))
    return tables


def primary_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's primary model selection (the last epoch for runs stored without one)."""
    if "primary" not in metrics.columns:
        return metrics[metrics["selection"] == "last"]
    return metrics[metrics["primary"].astype(bool)]


def selection_gaps(contents: StoreContents, table: DatasetTable, metric: str = "recall@1") -> tuple[list[str], list[list[str]]]:
    """Compare model selections per configuration: mean metric over seeds and the gap to the last epoch."""
    metrics = contents.metrics
    subset = metrics[(metrics["dataset"] == table.dataset) & (metrics["metric"] == metric)]
    header = ["configuration", "selection", "n", f"{metric} (%)", "gap to last (points)", "mean epoch"]
    rows = []
    for config_hash in sorted(subset["config_hash"].unique(), key=lambda h: table.labels.get(h, h)):
        part = subset[subset["config_hash"] == config_hash]
        last = part[part["selection"] == "last"]["value"].mean() * 100
        for selection in ("last", "best-val", "best-test"):
            rows_of = part[part["selection"] == selection]
            if rows_of.empty:
                continue
            mean = rows_of["value"].mean() * 100
            name = selection + (" (optimistic: selected on the test split)" if selection == "best-test" else "")
            epoch = f"{rows_of['epoch'].mean():.1f}" if "epoch" in rows_of.columns else ""
            rows.append(
                [table.labels.get(config_hash, config_hash[:12]), name, str(len(rows_of)), f"{mean:.2f}", f"{mean - last:+.2f}", epoch]
            )
    return header, rows


def assumption_lines(contents: StoreContents, dataset: str) -> list[str]:
    """Return 'protocol: setting = value (reason)' for every assumed setting behind a dataset's runs."""
    lines = set()
    for record in contents.records:
        if record.state != FINISHED or record.flat_config.get("data.dataset") != dataset:
            continue
        protocol = record.config.get("protocol", "")
        for key, reason in record.assumed.items():
            value = json.dumps(record.flat_config.get(key))
            lines.add(f"{protocol}: {key} = {value}. {reason}")
    return sorted(lines)


def _cell(row: pd.Series) -> str:
    if math.isnan(row["mean"]):
        return "no finished run"
    text = f"{row['mean']:.2f}"
    if not math.isnan(row["std"]):
        text += f" ± {row['std']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    if row["k_clipped"]:
        text += " †"
    return text


def table_rows(table: DatasetTable) -> tuple[list[str], list[list[str]]]:
    """Return the header and the cells of a dataset's table, one row per configuration."""
    header = ["configuration", "protocol", "n", "failed", "warnings"] + table.metrics
    rows = []
    summary = table.summary
    for config_hash in sorted(summary["config_hash"].unique(), key=lambda h: table.labels.get(h, h)):
        part = summary[summary["config_hash"] == config_hash].set_index("metric")
        first = part.iloc[0]
        if first["n"] == 0:
            row = [str(first["configuration"]), str(first["protocol"]), "0", str(int(first["failed_runs"])), ""]
            rows.append(row + ["no finished run"] * len(table.metrics))
            continue
        cells = [
            str(first["configuration"]),
            str(first["protocol"]),
            str(int(first["n"])),
            str(int(first["failed_runs"])),
            f"⚠ {len(table.warnings[config_hash])}" if table.warnings.get(config_hash) else "",
        ]
        cells += [_cell(part.loc[metric]) if metric in part.index else "" for metric in table.metrics]
        rows.append(cells)
    return header, rows


# ---------------------------------------------------------------------------
# Figures


def plot_training_loss(contents: StoreContents, table: DatasetTable, path: Path) -> bool:
    """Plot mean training loss per epoch with a min-max band over seeds, one line per configuration."""
    history = contents.history
    if history.empty:
        return False
    run_hash = {r.run_id: r.config_hash for r in contents.records}
    run_loss = {r.run_id: r.flat_config["loss.name"] for r in contents.records}
    run_dataset = {r.run_id: r.flat_config["data.dataset"] for r in contents.records}
    history = history[history["run_id"].map(run_dataset) == table.dataset].copy()
    history["config_hash"] = history["run_id"].map(run_hash)
    history = history[history["run_id"].map(run_loss).isin(CONVERGENCE_LOSSES + tuple(run_loss.values()))]
    if history.empty:
        return False

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
    axis.set_xlabel("epoch")
    axis.set_ylabel("mean training loss")
    axis.set_title(f"{table.dataset}: training loss (mean over seeds, band = min-max)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return True


def _train_classes(contents: StoreContents, dataset: str) -> int | None:
    for record in contents.records:
        if record.flat_config.get("data.dataset") == dataset and "data" in record.status:
            return int(record.status["data"]["train_classes"])
    return None


def plot_recall_bars(table: DatasetTable, path: Path) -> bool:
    """Plot Recall@K bars per configuration with 95% confidence intervals as error bars."""
    recall_metrics = [m for m in table.metrics if m.startswith("recall@")]
    if not recall_metrics:
        return False
    summary = table.summary
    hashes = sorted(summary["config_hash"].unique(), key=lambda h: table.labels.get(h, h))
    width = 0.8 / len(hashes)
    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    positions = np.arange(len(recall_metrics))
    for index, config_hash in enumerate(hashes):
        part = summary[summary["config_hash"] == config_hash].set_index("metric")
        means = np.array([part.loc[m, "mean"] if m in part.index else np.nan for m in recall_metrics])
        low = np.array([part.loc[m, "ci_low"] if m in part.index else np.nan for m in recall_metrics])
        errors = np.nan_to_num(means - low)
        axis.bar(
            positions + index * width - 0.4 + width / 2,
            means,
            width,
            yerr=errors,
            capsize=3,
            label=table.labels.get(config_hash, config_hash[:12]),
        )
    axis.set_xticks(positions, [m.replace("recall@", "R@") for m in recall_metrics])
    axis.set_ylabel("Recall@K (%)")
    axis.set_ylim(0, 100)
    axis.set_title(f"{table.dataset}: Recall@K (mean over seeds, error bar = 95% CI)")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, metadata={"Software": None})
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------
# Documents


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _provenance(contents: StoreContents) -> tuple[list[str], list[list[str]]]:
    header = ["run id", "state", "seed", "config hash", "git commit", "torch", "device", "reason"]
    rows = []
    for record in contents.records:
        git = record.env.get("git", {}) or {}
        commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        rows.append(
            [
                record.run_id,
                record.state,
                str(record.seed),
                record.config_hash[:12],
                commit,
                record.env.get("packages", {}).get("torch", "unknown"),
                str(record.status.get("device", "")),
                record.reason,
            ]
        )
    return header, rows


def _package_sets(contents: StoreContents) -> list[str]:
    sets = set()
    for record in contents.records:
        if record.state == FINISHED:
            packages = record.env.get("packages", {})
            sets.add(", ".join(f"{name} {version}" for name, version in sorted(packages.items())))
    return sorted(sets)


NOTES = (
    "Tables show each run's primary model selection (named by its protocol). Values are percent: mean ± sample standard deviation over seeds, then the 95% Student-t "
    "confidence interval of the mean in brackets (none for a single seed). n is the number of "
    "finished seeds; failed runs are counted separately and excluded. † marks a Recall@K whose K "
    "exceeds the number of retrievable items, so K was clipped to it."
)


def build_report(results_dir: Path, out_dir: Path) -> list[Path]:
    """Write report.md, report.html, per-dataset CSVs and PNG figures; return the paths written.

    Raises:
        HarnessError: the results folder contains no finished run.
    """
    if not (Path(results_dir) / "runs").is_dir():
        raise HarnessError(
            f"results folder {Path(results_dir) / 'runs'} does not exist. Pass --results-dir with the folder "
            "given to harness run, or make runs first: harness run --loss sgsl --dataset digits --seeds 5"
        )
    contents = load_store(Path(results_dir))
    if contents.metrics.empty:
        failed = sum(1 for r in contents.records if r.state != FINISHED)
        extra = f" ({failed} run(s) there failed or did not finish)" if failed else ""
        raise HarnessError(
            f"no finished runs in {Path(results_dir) / 'runs'}{extra}. Make some first, for example: "
            "harness run --loss sgsl,softmax,l2softmax,normsoftmax --dataset digits --seeds 5"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HarnessError(
            f"report folder {out_dir} cannot be created ({error.strerror}). Pass --out with a folder you can write to."
        ) from None
    tables = build_tables(contents)
    written: list[Path] = []

    finished = sum(1 for r in contents.records if r.state == FINISHED)
    failed = len(contents.records) - finished
    markdown = ["# Metric-learning results", "", f"{finished} finished run(s), {failed} failed or unfinished.", "", NOTES, ""]
    html_parts = [f"<h1>Metric-learning results</h1><p>{finished} finished run(s), {failed} failed or unfinished.</p>"]
    html_parts.append(f"<p>{html.escape(NOTES)}</p>")

    for table in tables:
        header, rows = table_rows(table)
        csv_path = out_dir / f"{table.dataset}_summary.csv"
        table.summary.to_csv(csv_path, index=False, float_format="%.6f")
        written.append(csv_path)
        markdown += [f"## {table.dataset}", "", _markdown_table(header, rows), ""]
        html_parts.append(f"<h2>{html.escape(table.dataset)}</h2>{_html_table(header, rows)}")
        warning_lines = [
            f"⚠ {table.labels.get(config_hash, config_hash[:12])}: {warning}"
            for config_hash in sorted(table.warnings, key=lambda h: table.labels.get(h, h))
            for warning in table.warnings[config_hash]
        ]
        if warning_lines:
            markdown += ["Warnings stored with these runs:", ""] + [f"- {line}" for line in warning_lines] + [""]
            html_parts.append(
                "<p>Warnings stored with these runs:</p><ul>"
                + "".join(f"<li>{html.escape(line)}</li>" for line in warning_lines)
                + "</ul>"
            )
        gap_header, gap_rows = selection_gaps(contents, table)
        if gap_rows:
            title = "Model selection: the primary selection above, and the epochs other rules would pick"
            markdown += [f"### {title}", "", _markdown_table(gap_header, gap_rows), ""]
            html_parts.append(f"<h3>{html.escape(title)}</h3>{_html_table(gap_header, gap_rows)}")
        assumptions = assumption_lines(contents, table.dataset)
        if assumptions:
            title = f"Assumed settings behind these numbers ({len(assumptions)})"
            markdown += [f"### {title}", ""] + [f"- {line}" for line in assumptions] + [""]
            html_parts.append(
                f"<h3>{html.escape(title)}</h3><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in assumptions) + "</ul>"
            )
        excluded = int(table.summary["excluded_queries"].max())
        if excluded:
            note = f"{excluded} queries per run had no other item of their class and were excluded from the metrics."
            markdown += [note, ""]
            html_parts.append(f"<p>{html.escape(note)}</p>")

        figures = [
            (f"{table.dataset}_training_loss.png", "Training loss per epoch", plot_training_loss, (contents, table)),
            (f"{table.dataset}_recall_at_k.png", "Recall@K", plot_recall_bars, (table,)),
        ]
        for name, title, plot, args in figures:
            path = out_dir / name
            if plot(*args, path):
                written.append(path)
                markdown += [f"![{title}]({name})", ""]
                encoded = base64.b64encode(path.read_bytes()).decode()
                html_parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}"></figure>')

    header, rows = _provenance(contents)
    markdown += ["## Runs", "", _markdown_table(header, rows), "", "## Package versions", ""]
    markdown += [f"- {line}" for line in _package_sets(contents)] + [""]
    html_parts.append(f"<h2>Runs</h2>{_html_table(header, rows)}<h2>Package versions</h2><ul>")
    html_parts += [f"<li>{html.escape(line)}</li>" for line in _package_sets(contents)]
    html_parts.append("</ul>")

    markdown_path = out_dir / "report.md"
    markdown_path.write_text("\n".join(markdown), encoding="utf-8")
    html_path = out_dir / "report.html"
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;white-space:nowrap}th{background:#eee}"
        "img{max-width:100%}"
    )
    html_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Metric-learning results</title>"
        f"<style>{style}</style></head><body>{''.join(html_parts)}</body></html>",
        encoding="utf-8",
    )
    return [markdown_path, html_path] + written
