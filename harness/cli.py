"""Command-line interface: a thin layer over the pipeline functions."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import HarnessError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Reproducibility harness for deep metric learning: train, store and report under a fixed protocol.",
)
console = Console(stderr=True)
output = Console()


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    loss: Optional[str] = typer.Option(None, "--loss", help="Loss name, or several separated by commas (run one after another)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Dataset name; `harness datasets` lists them."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Run seeds 0..N-1, each as its own run."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Run this one seed. Default without --seeds: seed 0."),
    protocol: Optional[str] = typer.Option(
        None,
        "--protocol",
        help="Shipped protocol name, a protocol TOML file, or a folder with <dataset>.toml. "
        "Default: 'default' for digits, 'sgsl-paper' for the photo datasets.",
    ),
    set_items: list[str] = typer.Option(
        [], "--set", help="Override a protocol value, SECTION.KEY=VALUE parsed as TOML (e.g. train.epochs=3). Repeatable."
    ),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Folder of the result store."),
    data_root: Optional[Path] = typer.Option(
        None, "--data-root", help="Folder that contains the photo datasets. Default: $HARNESS_DATA_ROOT."
    ),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Folder for decoded-image caches (data.cache). Default: $HARNESS_CACHE_DIR or ~/.cache/dml-harness."
    ),
    pretrained: Optional[Path] = typer.Option(
        None, "--pretrained", help="Local backbone weights file (sets model.pretrained); read as tensors only."
    ),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue the interrupted run RUN_ID from its last epoch checkpoint."
    ),
    force: bool = typer.Option(False, "--force", help="Rerun runs that already finished."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or tables; one line per run."),
) -> None:
    """Train and evaluate losses on a dataset over seeds, storing one folder per run."""
    from harness.data import DataLocation
    from harness.runner import execute_run, parse_loss_names, plan_runs, resume_run, seed_list
    from harness.progress import NullProgress, RichProgress
    from harness.store import FINISHED, ResultStore

    try:
        location = DataLocation(data_root, cache_dir)
        store = ResultStore(results_dir)
        if resume:
            if loss or dataset or seeds is not None or seed is not None or protocol or set_items or pretrained:
                raise HarnessError(
                    "--resume continues a run with its stored config; pass only --resume RUN_ID "
                    "(with --results-dir, --data-root or --cache-dir where needed)."
                )
            planned = [resume_run(resume, store, location)]
        else:
            if not loss or not dataset:
                raise HarnessError("--loss and --dataset are required (or --resume RUN_ID). See harness run --help.")
            loss_names = parse_loss_names(loss)
            seed_values = seed_list(seeds, seed)
            if pretrained is not None:
                set_items = [*set_items, f"model.pretrained={json.dumps(str(pretrained))}"]
            planned = plan_runs(loss_names, dataset, seed_values, protocol, set_items, location)
        store.ensure_writable()
    except HarnessError as error:
        _fail(error)

    progress = NullProgress() if quiet else RichProgress(console)
    # A termination request (timeout, kill) is recorded on the run like Ctrl-C, not left as 'running'.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    summaries = []
    for index, item in enumerate(planned, start=1):
        prefix = f"[{index}/{len(planned)}] {item.run_id}"
        if not force and not resume and store.is_finished(item.run_id):
            console.print(f"{escape(prefix)}: already finished, skipped (--force reruns it)", highlight=False, soft_wrap=True)
            continue
        try:
            summary = execute_run(item, store, progress, resume=bool(resume))
        except HarnessError as error:
            _fail(error)
        except KeyboardInterrupt:
            console.print(f"{prefix}: interrupted; recorded as failed.", highlight=False, soft_wrap=True)
            raise typer.Exit(code=130)
        summaries.append(summary)
        for warning in summary.warnings:
            console.print(f"{escape(prefix)}: [yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        if summary.state == FINISHED:
            recall = summary.metrics.get("recall@1", float("nan"))
            console.print(
                f"{prefix}: finished in {summary.seconds:.1f} s, Recall@1 {100 * recall:.2f}%",
                highlight=False,
                soft_wrap=True,
            )
            if not quiet:
                _print_run_table(summary)
        else:
            console.print(
                f"{escape(prefix)}: [red]failed[/] after {summary.seconds:.1f} s: {escape(summary.reason)}",
                highlight=False,
                soft_wrap=True,
            )

    failed = [s for s in summaries if s.state != FINISHED]
    console.print(
        f"{len(summaries) - len(failed)} run(s) finished, {len(failed)} failed, "
        f"{len(planned) - len(summaries)} skipped. Results in {store.runs_dir}.",
        highlight=False,
        soft_wrap=True,
    )
    if failed:
        raise typer.Exit(code=1)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _print_run_table(summary) -> None:
    table = Table(title=f"{summary.run_id} (test split, last epoch)")
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    for metric, value in summary.metrics.items():
        table.add_row(metric, f"{100 * value:.2f}")
    console.print(table)


@app.command()
def report(
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Folder of the result store."),
    out: Path = typer.Option(Path("reports/latest"), "--out", help="Folder to write report.md, report.html and plots to."),
    tolerance: float = typer.Option(1.0, "--tolerance", help="Points of Recall@1 a claim may miss by and still count as reproduced."),
    dataset: list[str] = typer.Option([], "--dataset", help="Report only this dataset (repeatable)."),
    loss: list[str] = typer.Option([], "--loss", help="Report only this loss (repeatable)."),
    protocol: list[str] = typer.Option([], "--protocol", help="Report only runs under this protocol (repeatable)."),
) -> None:
    """Summarize finished runs: tables, claims, paired tests and figures (Markdown, HTML, CSV, LaTeX)."""
    from harness.report import build_report

    try:
        if tolerance < 0:
            raise HarnessError(f"--tolerance: invalid value {tolerance}; it must be at least 0 points.")
        written = build_report(results_dir, out, tolerance, dataset or None, loss or None, protocol or None)
    except HarnessError as error:
        _fail(error)
    for path in written:
        output.print(str(path), highlight=False, soft_wrap=True)


@app.command()
def losses() -> None:
    """List the available losses."""
    from losses import LOSSES

    table = Table(title="losses")
    table.add_column("name")
    table.add_column("description")
    for name, cls in LOSSES.items():
        table.add_row(name, (cls.__doc__ or "").strip().splitlines()[0])
    output.print(table)


@app.command()
def datasets() -> None:
    """List the available datasets."""
    from harness.data import DATASETS

    table = Table(title="datasets")
    table.add_column("name")
    table.add_column("Recall@K")
    table.add_column("description")
    for name, info in DATASETS.items():
        table.add_row(name, ", ".join(map(str, info.recall_k)), info.description)
    output.print(table)


@app.command()
def evaluate(
    run_id: Optional[str] = typer.Argument(None, help="Run whose stored embeddings to re-evaluate."),
    results_dir: Path = typer.Option(Path("results"), "--results-dir", help="Folder of the result store."),
    embeddings: Optional[Path] = typer.Option(
        None, "--embeddings", help="A .npz file of embeddings and labels produced anywhere, instead of a run."
    ),
    k: Optional[str] = typer.Option(
        None, "--k", help="Comma-separated K values of Recall@K (with --embeddings; default 1,2,4,8)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object (with --embeddings)."),
    search: Optional[str] = typer.Option(
        None,
        "--search",
        help="Where the score blocks are computed: auto, cpu or gpu (default: the run's eval.search; auto for a file).",
    ),
    nmi: Optional[bool] = typer.Option(
        None, "--nmi/--no-nmi", help="Compute NMI (with --embeddings; default on). k-means takes minutes at SOP size."
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the k-means for NMI (with --embeddings; default 0)."),
    kmeans_restarts: Optional[int] = typer.Option(
        None,
        "--kmeans-restarts",
        help="k-means runs for NMI, the lowest objective kept (with --embeddings; default: eval.kmeans_restarts, 3).",
    ),
) -> None:
    """Recompute metrics from stored embeddings: a run's (and check them against its stored metrics) or any .npz file."""
    from harness.config import EvalConfig
    from harness.evaluation import evaluate_embedding_arrays, load_embeddings_file
    from harness.runner import check_seed

    try:
        if (run_id is None) == (embeddings is None):
            raise HarnessError("pass either RUN_ID or --embeddings FILE.npz, not both or neither.")
        file_only = {
            "--k": k,
            "--json": as_json or None,
            "--nmi/--no-nmi": nmi,
            "--seed": seed,
            "--kmeans-restarts": kmeans_restarts,
        }
        passed = [name for name, value in file_only.items() if value is not None]
        if run_id is not None and passed:
            names = passed[0] + " applies" if len(passed) == 1 else ", ".join(passed) + " apply"
            stored_file = results_dir / "runs" / run_id / "embeddings" / "test.npz"
            raise HarnessError(
                f"{names} only with --embeddings; a run is rechecked with its own eval settings and seed. "
                f"Drop them, or score the run's file as an outside one: --embeddings {stored_file}."
            )
        if embeddings is not None:
            k_values = _parse_k("1,2,4,8" if k is None else k)
            defaults = EvalConfig()
            nmi_seed = 0 if seed is None else check_seed(seed)
            if kmeans_restarts is not None and kmeans_restarts < 1:
                raise HarnessError(f"--kmeans-restarts: invalid value {kmeans_restarts}; expected 1 or more.")
            result = evaluate_embedding_arrays(
                load_embeddings_file(embeddings),
                k_values,
                compute_nmi=defaults.nmi if nmi is None else nmi,
                seed=nmi_seed,
                kmeans_restarts=defaults.kmeans_restarts if kmeans_restarts is None else kmeans_restarts,
                memory_mb=defaults.memory_mb,
                search=search or "auto",
            )
            if as_json:
                payload = {**result.values, "excluded_queries": result.excluded_queries, "clipped_k": list(result.clipped_k)}
                print(json.dumps(payload, sort_keys=True))
                return
            _print_metrics(f"{embeddings}", result.values, result.excluded_queries, clipped=result.clipped_k)
            return
        mismatches = recheck_run(run_id, results_dir, search)
    except HarnessError as error:
        _fail(error)
    if mismatches:
        for line in mismatches:
            console.print(f"[red]mismatch:[/] {escape(line)}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def recheck_run(run_id: str, results_dir: Path, search: Optional[str] = None) -> list[str]:
    """Recompute a run's primary-selection test metrics from its embeddings and list the differences.

    ``search`` replaces the run's eval.search when given. Backends differ by
    float rounding, so a run evaluated on a GPU is rechecked exactly only on
    one.
    """
    import dataclasses

    import pandas as pd

    from harness.config import RunConfig
    from harness.evaluation import load_embeddings_file
    from harness.store import ResultStore, read_json
    from harness.training import evaluate_arrays

    store = ResultStore(results_dir)
    run_dir = store.run_dir(run_id)
    if not run_dir.is_dir():
        known = ", ".join(store.run_ids()[:5]) or "none"
        raise HarnessError(
            f"no run '{run_id}' in {store.runs_dir} (runs there: {known}). Choose the results folder with "
            "--results-dir."
        )
    if not store.is_finished(run_id):
        status = store.status(run_id) or {}
        state = status.get("state", "unknown")
        advice = (
            f"It failed: {status.get('reason', 'see its status.json')}."
            if state == "failed"
            else f"If it was interrupted, finish it with harness run --resume {run_id}."
        )
        raise HarnessError(
            f"run '{run_id}' in {store.runs_dir} has not finished (state: {state}), so it has no metrics to "
            f"recheck. {advice}"
        )
    path = run_dir / "embeddings" / "test.npz"
    if not path.exists():
        raise HarnessError(
            f"run '{run_id}' has no stored embeddings: {path} is missing. It was deleted, or the run was made "
            "before runs stored their embeddings; rerun it with --force to store them."
        )
    stored_config = read_json(run_dir / "config.json")
    config = RunConfig.from_dict(stored_config["config"])
    if search is not None:
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, search=search))
    result = evaluate_arrays(load_embeddings_file(path), config, int(stored_config["seed"]), config.eval.nmi)
    metrics = pd.read_parquet(run_dir / "metrics.parquet")
    primary = metrics[metrics["primary"]] if "primary" in metrics.columns else metrics[metrics["selection"] == "last"]
    stored = dict(zip(primary["metric"], primary["value"]))
    if "search" in primary.columns and set(primary["search"]) != {result.search}:
        output.print(
            f"note: the run's metrics were computed with {primary['search'].iloc[0]} score blocks and these with "
            f"{result.search}; the two can differ by float rounding.",
            highlight=False,
        )
    _print_metrics(
        f"{run_id} (recomputed from {path.name})", result.values, result.excluded_queries, stored, result.clipped_k
    )
    mismatches = []
    for metric, value in result.values.items():
        if metric not in stored:
            mismatches.append(f"{metric}: not stored")
        elif value != stored[metric]:
            mismatches.append(f"{metric}: recomputed {value!r}, stored {stored[metric]!r}")
    return mismatches


def _parse_k(text: str) -> list[int]:
    """Return the sorted, distinct K values of a comma-separated --k option."""
    message = f"--k: invalid value '{text}'; expected comma-separated positive integers such as 1,2,4,8."
    try:
        values = [int(item) for item in text.split(",")]
    except ValueError:
        raise HarnessError(message) from None
    if min(values) < 1:
        raise HarnessError(message)
    return sorted(set(values))


def _print_metrics(
    title: str, values: dict, excluded: int, stored: dict | None = None, clipped: tuple[int, ...] = ()
) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value (%)", justify="right")
    if stored is not None:
        table.add_column("stored (%)", justify="right")
        table.add_column("match")
    for metric, value in values.items():
        row = [metric, f"{100 * value:.4f}"]
        if stored is not None:
            row += [f"{100 * stored.get(metric, float('nan')):.4f}", "yes" if stored.get(metric) == value else "NO"]
        table.add_row(*row)
    output.print(table)
    output.print(f"excluded queries (nothing to retrieve): {excluded}", highlight=False)
    if clipped:
        output.print(
            f"K larger than the number of candidates, clipped to it: {', '.join(map(str, clipped))} "
            "(Recall@K is 1 there wherever a positive exists)",
            highlight=False,
        )


protocol_app = typer.Typer(no_args_is_help=True, help="List and inspect protocols.")
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("list")
def protocol_list() -> None:
    """List the shipped protocols with the datasets they cover."""
    from harness.config import DEFAULT_PROTOCOLS, load_protocol, shipped_protocols

    table = Table(title="protocols")
    for column in ("name", "datasets", "default for", "description"):
        table.add_column(column)
    for name, covered in shipped_protocols().items():
        description = load_protocol(name, covered[0]).description
        defaults = [dataset for dataset, default in DEFAULT_PROTOCOLS.items() if default == name]
        table.add_row(name, ", ".join(covered), ", ".join(defaults), description)
    output.print(table)


@protocol_app.command("show")
def protocol_show(
    name: str = typer.Argument(..., help="Shipped protocol name or path of a protocol TOML file."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset whose protocol file to show."),
    loss: str = typer.Option("sgsl", "--loss", help="Loss whose hyperparameters to resolve."),
) -> None:
    """Print a protocol resolved for a dataset and loss, with every assumed value highlighted."""
    from harness.config import HARNESS_SETTINGS, load_protocol, resolve_config, unused_settings

    try:
        loaded = load_protocol(name, dataset)
        config = resolve_config(loaded, dataset, loss, {})
    except HarnessError as error:
        _fail(error)
    table = Table(title=f"{loaded.name} v{loaded.version} for {dataset} ({loaded.path})")
    table.add_column("setting", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("source")
    unused = unused_settings(config)
    for key, value in config.flat().items():
        if key in ("data.dataset", "loss.name"):
            continue
        section, _, setting = key.partition(".")
        reason = loaded.assumed.get(key)
        style = "bold yellow" if reason else None
        if key in unused:
            source, style = f"not used: {unused[key]}", "dim"
        elif reason:
            source = f"assumed: {reason}"
        elif key in HARNESS_SETTINGS:
            where = "set by the protocol file" if setting in loaded.sections.get(section, {}) else "default"
            source = f"harness setting ({where}), not part of the recipe"
        elif setting in loaded.sections.get(section, {}):
            source = "from the source"
        else:
            owner = "the loss's" if section == "loss" else "harness"
            source = f"{owner} default; the protocol file does not set it"
        table.add_row(key, json.dumps(value), source, style=style)
    output.print(table)
    output.print(
        f"{len(loaded.assumed)} assumed setting(s); config hash {config.config_hash[:12]} for loss {loss}.",
        highlight=False,
    )


data_app = typer.Typer(no_args_is_help=True, help="Check photo datasets on disk.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    dataset: str = typer.Option(..., "--dataset", help="cub, cars, sop or inshop."),
    data_root: Optional[Path] = typer.Option(
        None, "--data-root", help="Folder that contains the dataset folders. Default: $HARNESS_DATA_ROOT."
    ),
    count_check: bool = typer.Option(
        True, "--count-check/--no-count-check", help="Compare split counts with the published ones (skip for subsets)."
    ),
) -> None:
    """Validate a download without training: lists, paths, duplicates, missing or unreadable images, counts."""
    from harness.benchmark_datasets import BENCHMARKS, check_download, resolve_data_root, split_counts
    from harness.progress import RichProgress

    if dataset not in BENCHMARKS:
        _fail(HarnessError(f"--dataset: '{dataset}' has no download to check; photo datasets: {', '.join(BENCHMARKS)}."))
    try:
        parsed, problems = check_download(dataset, resolve_data_root(data_root), count_check, RichProgress(console))
    except HarnessError as error:
        _fail(error)

    table = Table(title=f"{dataset} at {parsed.root}")
    for column in ("split", "images", "classes", "published images", "published classes"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, images, classes, published in split_counts(parsed):
        table.add_row(
            split,
            str(images),
            str(classes),
            str(published.images) if published else "",
            str(published.classes) if published else "",
        )
    output.print(table)
    if problems:
        for problem in problems[:50]:
            output.print(f"[red]{problem.kind}:[/] {escape(problem.message)}", highlight=False, soft_wrap=True)
        if len(problems) > 50:
            output.print(f"... and {len(problems) - 50} more problem(s)", highlight=False)
        output.print(f"[bold red]{len(problems)} problem(s) found.[/]", highlight=False)
        raise typer.Exit(code=1)
    output.print(f"[green]no problems found[/] in {len(parsed.entries)} listed images.", highlight=False)


def main() -> None:
    app(prog_name="harness")


if __name__ == "__main__":
    sys.exit(main())
