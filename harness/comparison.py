"""Comparisons behind the SGSL report: published numbers, claims, paired tests and sensitivity.

Everything here works on finished runs' primary model selection. Values are
in percent.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from harness.config import HARNESS_SETTINGS

REFERENCE_DIR = Path(__file__).parent / "reference"
MIN_SEEDS_FOR_VERDICT = 3

# Published method names of the losses that have published rows.
PUBLISHED_METHODS = {
    "sgsl": ("SGSL",),
    "normsoftmax": ("NormSoftmax", "NormSoftmax (official code)"),
    "proxy_anchor": ("Proxy-Anchor (official code)",),
    "proxy_nca": ("ProxyNCA++",),
}
# Recall@K columns that the SGSL paper and the compared papers report per dataset.
PAPER_K = {"cub": (1, 2, 4, 8), "cars": (1, 2, 4, 8), "sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40, 50)}
BACKBONE_NAMES = {"resnet50": "ResNet-50"}
BACKBONE_FEATURES = {"resnet50": 2048}


def summarize(values) -> dict:
    """Return n, mean, sample standard deviation and the 95% Student-t interval of the mean."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(values.std(ddof=1))
    half_width = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half_width, "ci_high": mean + half_width}


def primary_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """Keep each run's primary model selection (the last epoch for runs stored without one)."""
    if metrics.empty:
        return metrics
    if "primary" not in metrics.columns:
        return metrics[metrics["selection"] == "last"]
    return metrics[metrics["primary"].astype(bool)]


def published_results() -> pd.DataFrame:
    """Return the shipped published numbers, each row with its source."""
    return pd.read_csv(REFERENCE_DIR / "reported_results.csv", dtype={"embedding_dim": str})


def load_claims() -> list[dict]:
    """Return the SGSL paper's claims as dictionaries (see reference/claims.toml)."""
    with open(REFERENCE_DIR / "claims.toml", "rb") as handle:
        return tomllib.load(handle)["claim"]


@dataclass
class Configuration:
    """One configuration's finished runs on one dataset: its settings and per-seed metric values."""

    config_hash: str
    label: str
    loss: str
    protocol: str
    dataset: str
    flat: dict
    assumed: dict
    values: dict[str, dict[int, float]]
    warnings: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.values.get("recall@1", {}))

    def summary(self, metric: str) -> dict:
        return summarize([100 * v for _, v in sorted(self.values.get(metric, {}).items())])

    @property
    def backbone(self) -> str:
        name = self.flat.get("model.backbone", "")
        return BACKBONE_NAMES.get(name, name)

    @property
    def embedding_dim(self) -> str:
        dim = int(self.flat.get("model.embedding_dim", 0))
        if dim == 0:
            dim = BACKBONE_FEATURES.get(self.flat.get("model.backbone", ""), 0)
        return str(dim) if dim else "unknown"

    def comparability_overrides(self) -> dict:
        """Return the protocol settings that --set changed, leaving out settings that cannot change a number."""
        return {key: value for key, value in self.overrides.items() if key not in HARNESS_SETTINGS}

    def comparability_problems(self) -> list[str]:
        """Return the reasons why this configuration's numbers are not like for like with published ones."""
        problems = list(self.warnings)
        changed = self.comparability_overrides()
        if changed:
            shown = ", ".join(f"{key}={value}" for key, value in sorted(changed.items()))
            problems.append(f"protocol settings changed with --set ({shown})")
        if len(self.seeds) < MIN_SEEDS_FOR_VERDICT:
            problems.append(f"only {len(self.seeds)} seed(s), fewer than {MIN_SEEDS_FOR_VERDICT}")
        return problems


def build_configurations(records, metrics: pd.DataFrame, labels: dict[str, str], dataset: str) -> list[Configuration]:
    """Group a dataset's finished runs by config hash."""
    metrics = primary_rows(metrics)
    metrics = metrics[metrics["dataset"] == dataset] if not metrics.empty else metrics
    configurations: dict[str, Configuration] = {}
    for record in records:
        if record.state != "finished" or record.flat_config.get("data.dataset") != dataset:
            continue
        configuration = configurations.get(record.config_hash)
        if configuration is None:
            configuration = Configuration(
                config_hash=record.config_hash,
                label=labels.get(record.config_hash, record.config_hash[:12]),
                loss=record.flat_config["loss.name"],
                protocol=record.config.get("protocol", ""),
                dataset=dataset,
                flat=record.flat_config,
                assumed=record.assumed,
                values={},
                overrides=dict(getattr(record, "overrides", {}) or {}),
            )
            configurations[record.config_hash] = configuration
        for warning in record.status.get("warnings", []):
            if warning not in configuration.warnings:
                configuration.warnings.append(warning)
        rows = metrics[metrics["run_id"] == record.run_id]
        for metric, value in zip(rows["metric"], rows["value"]):
            configuration.values.setdefault(metric, {})[record.seed] = float(value)
    return sorted(configurations.values(), key=lambda c: c.label)


def reference_configuration(configurations: list[Configuration], loss: str) -> Configuration | None:
    """Pick the configuration of a loss that a claim is checked on.

    A configuration that runs its protocol unchanged comes first, then the
    one with the most seeds, then the first label. A pick with protocol
    settings changed by --set makes the claim 'not comparable'.
    """
    candidates = [c for c in configurations if c.loss == loss and c.seeds]
    if not candidates:
        return None
    return sorted(candidates, key=lambda c: (bool(c.comparability_overrides()), -len(c.seeds), c.label))[0]


# ---------------------------------------------------------------------------
# Published beside reproduced


def published_table(configurations: list[Configuration], dataset: str) -> tuple[list[str], list[list[str]]]:
    """Return the paper-layout table: published rows, then reproduced rows with their difference to published."""
    k_values = PAPER_K.get(dataset, (1, 2, 4, 8))
    published = published_results()
    published = published[published["dataset"] == dataset]
    header = ["", "method / loss", "backbone", "dim", "source / protocol", "n"]
    header += [f"R@{k}" for k in k_values] + ["R@1 95% CI", "R@1 vs published"]
    rows = []
    for (method, backbone, dim, source), group in published.groupby(
        ["method", "backbone", "embedding_dim", "source"], sort=False
    ):
        by_metric = dict(zip(group["metric"], group["value_percent"]))
        cells = ["published", method, backbone, dim, source, ""]
        cells += [f"{by_metric[f'recall@{k}']:.1f}" if f"recall@{k}" in by_metric else "" for k in k_values]
        rows.append(cells + ["", ""])

    for configuration in configurations:
        r1 = configuration.summary("recall@1")
        if r1["n"] == 0:
            continue
        cells = ["reproduced", configuration.label, configuration.backbone, configuration.embedding_dim]
        cells += [configuration.protocol, str(r1["n"])]
        for k in k_values:
            s = configuration.summary(f"recall@{k}")
            if s["n"] == 0:
                cells.append("")
            elif math.isnan(s["std"]):
                cells.append(f"{s['mean']:.1f}")
            else:
                cells.append(f"{s['mean']:.1f} ± {s['std']:.1f}")
        cells.append("" if math.isnan(r1["ci_low"]) else f"[{r1['ci_low']:.1f}, {r1['ci_high']:.1f}]")
        cells.append(_difference_to_published(configuration, published, r1["mean"]))
        rows.append(cells)
    return header, rows


def _difference_to_published(configuration: Configuration, published: pd.DataFrame, mean: float) -> str:
    methods = PUBLISHED_METHODS.get(configuration.loss, ())
    same = published[
        published["method"].isin(methods)
        & (published["backbone"] == configuration.backbone)
        & (published["embedding_dim"] == configuration.embedding_dim)
        & (published["metric"] == "recall@1")
    ]
    if same.empty:
        return "none (no published row of this method, backbone and size)"
    row = same.iloc[0]
    return f"{mean - row['value_percent']:+.1f} vs {row['value_percent']:.1f} ({row['source']})"


# ---------------------------------------------------------------------------
# Claims


@dataclass
class ClaimVerdict:
    """A claim with its reproduced evidence and verdict."""

    claim: dict
    verdict: str
    evidence: str


def check_claims(configurations_by_dataset: dict[str, list[Configuration]], tolerance: float) -> list[ClaimVerdict]:
    """Judge every claim: reproduced, not reproduced, not comparable, or not tested.

    A value claim is reproduced when SGSL's mean is at least the claimed
    value minus the tolerance. A margin claim is reproduced when SGSL's mean
    minus the best reproduced baseline's mean (same protocol) is at least
    the claimed margin minus the tolerance. Runs that carry a like-for-like
    warning, or fewer than three seeds, are not comparable.
    """
    verdicts = []
    for claim in load_claims():
        configurations = configurations_by_dataset.get(claim["dataset"], [])
        sgsl = reference_configuration(configurations, "sgsl")
        if sgsl is None:
            verdicts.append(ClaimVerdict(claim, "not tested", f"no finished SGSL runs on {claim['dataset']}"))
            continue
        summary = sgsl.summary(claim["metric"])
        problems = sgsl.comparability_problems()
        evidence = (
            f"SGSL ({sgsl.label}, {sgsl.protocol}, config {sgsl.config_hash[:12]}): "
            f"{summary['mean']:.2f} over {summary['n']} seed(s)"
        )
        if claim["kind"] == "value":
            observed = summary["mean"]
            passed = observed >= claim["claimed"] - tolerance
        else:
            baselines = [
                c
                for c in configurations
                if c.loss != "sgsl" and c.protocol == sgsl.protocol and c.summary(claim["metric"])["n"]
                and not c.comparability_overrides()
            ]
            if not baselines:
                baselines = [
                    c for c in configurations if c.loss != "sgsl" and c.protocol == sgsl.protocol and c.summary(claim["metric"])["n"]
                ]
            if not baselines:
                verdicts.append(
                    ClaimVerdict(claim, "not tested", evidence + f"; no baseline runs under {sgsl.protocol} among the reported runs")
                )
                continue
            best = max(baselines, key=lambda c: c.summary(claim["metric"])["mean"])
            best_mean = best.summary(claim["metric"])["mean"]
            observed = summary["mean"] - best_mean
            evidence += f"; best baseline {best.label}: {best_mean:.2f}; margin {observed:+.2f}"
            for problem in best.comparability_problems():
                problems.append(f"baseline: {problem}")
            passed = observed >= claim["claimed"] - tolerance
        if problems:
            verdicts.append(ClaimVerdict(claim, "not comparable", evidence + "; " + "; ".join(sorted(set(problems)))))
        else:
            verdicts.append(ClaimVerdict(claim, "reproduced" if passed else "not reproduced", evidence))
    return verdicts


# ---------------------------------------------------------------------------
# Paired comparison


def holm(p_values: list[float]) -> list[float]:
    """Return Holm-adjusted p-values (step-down, monotone, capped at 1)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    count = len(p_values)
    for rank, index in enumerate(order):
        value = min(1.0, (count - rank) * p_values[index])
        running = max(running, value)
        adjusted[index] = running
    return adjusted


def paired_comparisons(configurations: list[Configuration], metric: str = "recall@1") -> tuple[list[str], list[list[str]]]:
    """Compare SGSL with each baseline over their common seeds: mean difference, 95% interval, t-test p and Holm p."""
    sgsl = reference_configuration(configurations, "sgsl")
    header = ["baseline", "common seeds", "mean difference (points)", "95% CI", "p (paired t)", "p (Holm)"]
    if sgsl is None:
        return header, []
    entries = []
    for baseline in configurations:
        if baseline.loss == "sgsl" or baseline.protocol != sgsl.protocol:
            continue
        seeds = sorted(set(sgsl.values.get(metric, {})) & set(baseline.values.get(metric, {})))
        differences = [100 * (sgsl.values[metric][s] - baseline.values[metric][s]) for s in seeds]
        if len(differences) < 2:
            entries.append((baseline, seeds, differences, math.nan, (math.nan, math.nan)))
            continue
        summary = summarize(differences)
        if summary["std"] == 0:
            p_value = 0.0 if summary["mean"] != 0 else 1.0
        else:
            p_value = float(stats.ttest_rel([100 * sgsl.values[metric][s] for s in seeds], [100 * baseline.values[metric][s] for s in seeds]).pvalue)
        entries.append((baseline, seeds, differences, p_value, (summary["ci_low"], summary["ci_high"])))
    tested = [entry[3] for entry in entries if not math.isnan(entry[3])]
    adjusted = iter(holm(tested))
    rows = []
    for baseline, seeds, differences, p_value, interval in entries:
        holm_p = next(adjusted) if not math.isnan(p_value) else math.nan
        mean = f"{np.mean(differences):+.2f}" if differences else ""
        ci = "" if math.isnan(interval[0]) else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"
        rows.append(
            [
                baseline.label,
                str(len(seeds)),
                mean,
                ci,
                "" if math.isnan(p_value) else f"{p_value:.4f}",
                "" if math.isnan(holm_p) else f"{holm_p:.4f}",
            ]
        )
    return header, rows


# ---------------------------------------------------------------------------
# Sensitivity to assumptions


def assumption_variants(configurations: list[Configuration], metric: str = "recall@1") -> dict[str, list[tuple[str, dict]]]:
    """Find SGSL configurations that differ from the reference in exactly one assumed setting.

    Returns, per assumed key, (value, summary) pairs including the reference's own value first.
    """
    reference = reference_configuration(configurations, "sgsl")
    if reference is None:
        return {}
    variants: dict[str, list[tuple[str, dict]]] = {}
    for other in configurations:
        if other.loss != "sgsl" or other is reference or other.protocol != reference.protocol:
            continue
        differing = [key for key in set(reference.flat) | set(other.flat) if reference.flat.get(key) != other.flat.get(key)]
        if len(differing) == 1 and differing[0] in reference.assumed:
            key = differing[0]
            if key not in variants:
                variants[key] = [(f"{reference.flat.get(key)} (default)", reference.summary(metric))]
            variants[key].append((str(other.flat.get(key)), other.summary(metric)))
    return variants


def two_parameter_grid(configurations: list[Configuration], first: str, second: str, metric: str = "recall@1"):
    """Return (first values, second values, mean matrix) over SGSL configurations that differ only in two settings."""
    reference = reference_configuration(configurations, "sgsl")
    if reference is None:
        return None
    cells = {}
    for other in configurations:
        if other.loss != "sgsl" or other.protocol != reference.protocol:
            continue
        differing = {key for key in set(reference.flat) | set(other.flat) if reference.flat.get(key) != other.flat.get(key)}
        if differing <= {first, second}:
            cells[(other.flat.get(first), other.flat.get(second))] = other.summary(metric)["mean"]
    rows = sorted({a for a, _ in cells})
    columns = sorted({b for _, b in cells})
    if len(rows) < 2 or len(columns) < 2:
        return None
    matrix = np.array([[cells.get((a, b), math.nan) for b in columns] for a in rows])
    return rows, columns, matrix


def reproducibility_summary(configurations: list[Configuration], harness_settings: set[str]) -> list[str]:
    """Count stated and assumed settings of SGSL's protocol, and name the assumptions the stored runs show to matter."""
    reference = reference_configuration(configurations, "sgsl")
    if reference is None:
        return []
    protocol_keys = [key for key in reference.flat if key not in harness_settings and key not in ("data.dataset", "loss.name")]
    assumed = [key for key in protocol_keys if key in reference.assumed]
    lines = [
        f"Protocol {reference.protocol}: {len(protocol_keys)} settings define the experiment; the source states "
        f"{len(protocol_keys) - len(assumed)} of them (or the field's standard), and {len(assumed)} had to be assumed."
    ]
    base = reference.summary("recall@1")
    half_width = (base["ci_high"] - base["ci_low"]) / 2 if not math.isnan(base["ci_low"]) else math.nan
    variants = assumption_variants(configurations)
    if not variants:
        lines.append("No stored runs vary an assumed setting, so none is shown to matter or not.")
    for key, entries in sorted(variants.items()):
        shifts = [summary["mean"] - base["mean"] for _, summary in entries[1:]]
        largest = max(shifts, key=abs)
        if math.isnan(half_width):
            verdict = "undetermined (the default setting has fewer than 2 seeds, so no interval)"
        elif abs(largest) > half_width:
            verdict = f"matters: R@1 moves by {largest:+.2f} points, more than the default's 95% half-width {half_width:.2f}"
        else:
            verdict = f"not shown to matter: R@1 moves by at most {largest:+.2f} points, within the default's 95% half-width {half_width:.2f}"
        lines.append(f"{key}: {verdict}.")
    return lines
