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

import pandas as pd

from harness.comparison import (
    PAPER_K,
    build_configurations,
    check_claims,
    paired_comparisons,
    primary_rows,
    published_table,
    reproducibility_summary,
    summarize,
    two_parameter_grid,
    assumption_variants,
)
from harness.config import HARNESS_SETTINGS, flatten_config
from harness.errors import HarnessError
from harness.store import FINISHED, ResultStore, read_json

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
    overrides: dict


@dataclass
class StoreContents:
    """Finished runs' metrics and histories, plus every run record."""

    records: list[RunRecord]
    metrics: pd.DataFrame
    history: pd.DataFrame


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
            flat_config=flatten_config(config_file["config"]),
            status=status,
            env=read_json(env_path) if env_path.exists() else {},
            assumed=config_file.get("assumed", {}),
            overrides=config_file.get("overrides", {}),
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
            if key not in record.flat_config:
                continue
            if key in record.overrides:
                lines.add(f"{protocol}: {key} = {json.dumps(record.overrides[key])}, set with --set (protocol value assumed: {reason})")
                continue
            lines.add(f"{protocol}: {key} = {json.dumps(record.flat_config[key])}. {reason}")
        for key, value in record.overrides.items():
            if key not in record.assumed:
                lines.add(f"{protocol}: {key} = {json.dumps(value)}, set with --set instead of the protocol's value")
    return sorted(lines)


def _cell(row: pd.Series) -> str:
    if math.isnan(row["mean"]):
        return "no finished run"
    text = f"{row['mean']:.2f}"
    if not math.isnan(row["std"]):
        # Metrics are percentages, so the interval is shown within [0, 100].
        low, high = max(0.0, row["ci_low"]), min(100.0, row["ci_high"])
        text += f"\u00a0±\u00a0{row['std']:.2f} [{low:.2f},\u00a0{high:.2f}]"
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
    header = ["run id", "state", "seed", "config hash", "dataset manifest", "weights sha256", "git commit", "torch", "device", "reason"]
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
                str((record.status.get("dataset_manifest") or {}).get("sha256", ""))[:12],
                str((record.env.get("pretrained") or {}).get("sha256", "none"))[:12],
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
    "finished seeds; failed runs are counted separately and excluded. Intervals are cut at 0 and 100. "
    "† marks a Recall@K whose K "
    "exceeds the number of retrievable items, so K was clipped to it."
)


# Names of the files that a report wrote, so that the next report into the
# same folder removes those it does not write again.
REPORT_MANIFEST = "report_files.txt"


class ReportWriter:
    """Collects sections as Markdown and HTML, and writes every table as CSV (main tables also as LaTeX)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.markdown: list[str] = []
        self.html: list[str] = []
        self.written: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.markdown += [f"{'#' * level} {text}", ""]
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.markdown += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, lines: list[str]) -> None:
        self.markdown += [f"- {line}" for line in lines] + [""]
        self.html.append("<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>")

    def table(self, name: str, header: list[str], rows: list[list[str]], latex_caption: str | None = None) -> None:
        self.markdown += [_markdown_table(header, rows), ""]
        self.html.append(_html_table(header, rows))
        csv_path = self.out_dir / f"{name}.csv"
        pd.DataFrame(rows, columns=header).to_csv(csv_path, index=False)
        self.written.append(csv_path)
        if latex_caption:
            latex_path = self.out_dir / f"{name}.tex"
            latex_path.write_text(_latex_table(header, rows, latex_caption), encoding="utf-8")
            self.written.append(latex_path)

    def figure(self, name: str, title: str, plot, *args) -> None:
        path = self.out_dir / name
        if plot(*args, path):
            self.written.append(path)
            self.markdown += [f"![{title}]({name})", ""]
            encoded = base64.b64encode(path.read_bytes()).decode()
            self.html.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}"></figure>')


def _latex_table(header: list[str], rows: list[list[str]], caption: str) -> str:
    def escape(text: str) -> str:
        for old, new in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"), ("±", "$\\pm$"), ("†", "$^\\dagger$"), ("⚠", "warnings:"), ("\u00a0", "~")):
            text = text.replace(old, new)
        return text

    lines = [
        "% Requires \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{escape(caption)}}}",
        "\\begin{tabular}{" + "l" * len(header) + "}",
        "\\toprule",
        " & ".join(escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(escape(cell) for cell in row) + " \\\\" for row in rows]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def filter_contents(contents: StoreContents, datasets=None, losses=None, protocols=None) -> StoreContents:
    """Keep only the runs of the given datasets, losses and protocols (None keeps all)."""

    def keep(record: RunRecord) -> bool:
        return (
            (not datasets or record.flat_config.get("data.dataset") in datasets)
            and (not losses or record.flat_config.get("loss.name") in losses)
            and (not protocols or record.config.get("protocol") in protocols)
        )

    records = [record for record in contents.records if keep(record)]
    kept = {record.run_id for record in records}
    metrics = contents.metrics[contents.metrics["run_id"].isin(kept)] if not contents.metrics.empty else contents.metrics
    history = contents.history[contents.history["run_id"].isin(kept)] if not contents.history.empty else contents.history
    return StoreContents(records=records, metrics=metrics, history=history)


def build_report(
    results_dir: Path,
    out_dir: Path,
    tolerance: float = 1.0,
    datasets: list[str] | None = None,
    losses: list[str] | None = None,
    protocols: list[str] | None = None,
) -> list[Path]:
    """Write report.md, report.html, CSV and LaTeX tables and PNG figures; return the paths written.

    Raises:
        HarnessError: the results folder is missing or, after filtering, contains no finished run.
    """
    from harness.figures import plot_epoch_recall, plot_heatmap, plot_recall_curves, plot_sensitivity, plot_training_loss

    if not (Path(results_dir) / "runs").is_dir():
        raise HarnessError(
            f"results folder {Path(results_dir) / 'runs'} does not exist. Pass --results-dir with the folder "
            "given to harness run, or make runs first: harness run --loss sgsl --dataset digits --seeds 5"
        )
    contents = filter_contents(load_store(Path(results_dir)), datasets, losses, protocols)
    if contents.metrics.empty:
        failed = sum(1 for r in contents.records if r.state != FINISHED)
        extra = f" ({failed} run(s) there failed or did not finish)" if failed else ""
        selected = " matching the filters" if datasets or losses or protocols else ""
        raise HarnessError(
            f"no finished runs{selected} in {Path(results_dir) / 'runs'}{extra}. Make some first, for example: "
            "harness run --loss sgsl,softmax,l2softmax,normsoftmax --dataset digits --seeds 5"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HarnessError(
            f"report folder {out_dir} cannot be created ({error.strerror}). Pass --out with a folder you can write to."
        ) from None

    _remove_previous_report(out_dir)
    tables = build_tables(contents)
    report = ReportWriter(out_dir)
    finished = sum(1 for r in contents.records if r.state == FINISHED)
    failed = len(contents.records) - finished
    report.heading("Metric-learning results", 1)
    report.paragraph(f"{finished} finished run(s), {failed} failed or unfinished.")
    report.paragraph(NOTES)

    # Claims of the SGSL paper, judged on the reproduced runs.
    configurations = {}
    for table in tables:
        if table.dataset in PAPER_K:
            configurations[table.dataset] = build_configurations(
                contents.records, contents.metrics, table.labels, table.dataset
            )
    verdicts = check_claims(configurations, tolerance)
    report.heading("Claims of the SGSL paper")
    report.paragraph(
        f"Tolerance {tolerance:g} point(s) of Recall@1 (--tolerance). A claim is 'reproduced' when the reproduced "
        "mean is at least the claimed value minus the tolerance (for a margin: SGSL's mean minus the best baseline "
        "reproduced under the same protocol); 'not comparable' when the runs carry a like-for-like warning or have "
        "fewer than 3 seeds; 'not tested' without runs."
    )
    report.table(
        "claims",
        ["claim", "claimed", "verdict", "reproduced evidence"],
        [[v.claim["statement"], f"{v.claim['claimed']:g}", v.verdict, v.evidence] for v in verdicts],
    )

    for table in tables:
        report.heading(table.dataset)
        header, rows = table_rows(table)
        report.table(f"{table.dataset}_summary", header, rows, latex_caption=f"{table.dataset}: reproduced results (percent)")
        table.summary.to_csv(out_dir / f"{table.dataset}_summary_long.csv", index=False, float_format="%.6f")
        report.written.append(out_dir / f"{table.dataset}_summary_long.csv")
        warning_lines = [
            f"⚠ {table.labels.get(config_hash, config_hash[:12])}: {warning}"
            for config_hash in sorted(table.warnings, key=lambda h: table.labels.get(h, h))
            for warning in table.warnings[config_hash]
        ]
        if warning_lines:
            report.paragraph("Warnings stored with these runs:")
            report.bullets(warning_lines)
        excluded = int(table.summary["excluded_queries"].max())
        if excluded:
            report.paragraph(f"{excluded} queries per run had no other item of their class and were excluded from the metrics.")

        if table.dataset in PAPER_K:
            dataset_configurations = configurations[table.dataset]
            report.heading("Published and reproduced", 3)
            report.paragraph(
                "Published rows come from the cited source; reproduced rows are mean ± standard deviation over seeds "
                "with the 95% interval of R@1. The difference is given only against a published row of the same "
                "method, backbone and embedding size."
            )
            header, rows = published_table(dataset_configurations, table.dataset)
            report.table(f"{table.dataset}_published", header, rows, latex_caption=f"{table.dataset}: published and reproduced Recall@K (percent)")
            header, rows = paired_comparisons(dataset_configurations)
            if rows:
                report.heading("SGSL against each baseline, paired over seeds", 3)
                report.paragraph(
                    "Mean difference of R@1 (SGSL minus baseline) over the seeds both have, its 95% Student-t "
                    "interval, the two-sided paired t-test p-value, and that p-value Holm-corrected across the baselines."
                )
                report.table(f"{table.dataset}_paired", header, rows)
            summary_lines = reproducibility_summary(dataset_configurations, HARNESS_SETTINGS)
            if summary_lines:
                report.heading("Reproducibility summary", 3)
                report.bullets(summary_lines)
            report.figure(
                f"{table.dataset}_sensitivity.png",
                "Sensitivity to assumed settings",
                plot_sensitivity,
                table.dataset,
                assumption_variants(dataset_configurations),
            )
            report.figure(
                f"{table.dataset}_gamma_grid.png",
                "gamma_1 x gamma_2 grid",
                plot_heatmap,
                table.dataset,
                two_parameter_grid(dataset_configurations, "loss.gamma_1", "loss.gamma_2"),
                "loss.gamma_1",
                "loss.gamma_2",
            )

        header, rows = selection_gaps(contents, table)
        if rows:
            report.heading("Model selection: the primary selection above, and the epochs other rules would pick", 3)
            report.table(f"{table.dataset}_selection", header, rows)
        assumptions = assumption_lines(contents, table.dataset)
        if assumptions:
            report.heading(f"Assumed settings behind these numbers ({len(assumptions)})", 3)
            report.bullets(assumptions)

        report.figure(f"{table.dataset}_training_loss.png", "Training loss per epoch", plot_training_loss, contents, table)
        report.figure(f"{table.dataset}_recall_per_epoch.png", "Recall@1 per epoch", plot_epoch_recall, contents, table)
        report.figure(f"{table.dataset}_recall_at_k.png", "Recall@K", plot_recall_curves, table)

    header, rows = _provenance(contents)
    report.heading("Runs")
    report.table("runs", header, rows)
    report.heading("Package versions")
    report.bullets(_package_sets(contents))

    markdown_path = out_dir / "report.md"
    markdown_path.write_text("\n".join(report.markdown), encoding="utf-8")
    html_path = out_dir / "report.html"
    style = (
        "body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top;max-width:48em}"
        "th{background:#eee}"
        "img{max-width:100%}"
    )
    html_path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Metric-learning results</title>"
        f"<style>{style}</style></head><body>{''.join(report.html)}</body></html>",
        encoding="utf-8",
    )
    written = [markdown_path, html_path] + report.written
    (out_dir / REPORT_MANIFEST).write_text("".join(f"{path.name}\n" for path in written), encoding="utf-8")
    return written


def _remove_previous_report(out_dir: Path) -> None:
    """Delete the files that an earlier report listed in the folder's manifest; other files stay."""
    manifest = out_dir / REPORT_MANIFEST
    if not manifest.is_file():
        return
    for name in manifest.read_text(encoding="utf-8").splitlines():
        path = out_dir / name
        if name and Path(name).name == name and path.is_file():
            path.unlink()
    manifest.unlink()
