"""Claims, paired tests and published tables: exact small cases and a report over fixture runs."""


import pytest

from harness.comparison import Configuration, check_claims, holm, paired_comparisons, published_table
from harness.cli import app


def configuration(loss, values, protocol="sgsl-paper", warnings=(), flat=None, label=None):
    flat = flat or {"loss.name": loss, "model.backbone": "resnet50", "model.embedding_dim": 512, "data.dataset": "cub"}
    return Configuration(
        config_hash=f"{loss}-{label or ''}",
        label=label or loss,
        loss=loss,
        protocol=protocol,
        dataset="cub",
        flat=flat,
        assumed={"loss.gamma_2": "not published"},
        values={"recall@1": {seed: value for seed, value in enumerate(values)}},
        warnings=list(warnings),
    )


def verdict_of(verdicts, claim_id):
    return next(v for v in verdicts if v.claim["id"] == claim_id)


def test_holm_exact_case():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_value_claim_within_and_beyond_tolerance():
    close = {"cub": [configuration("sgsl", [0.752, 0.750, 0.754])]}
    assert verdict_of(check_claims(close, tolerance=1.0), "cub-recall").verdict == "reproduced"
    assert verdict_of(check_claims(close, tolerance=0.5), "cub-recall").verdict == "not reproduced"


def test_margin_claim_uses_best_baseline_under_same_protocol():
    configurations = {
        "cub": [
            configuration("sgsl", [0.76, 0.76, 0.76]),
            configuration("normsoftmax", [0.74, 0.74, 0.74]),
            configuration("proxy_anchor", [0.75, 0.75, 0.75]),
            configuration("arcface", [0.80, 0.80, 0.80], protocol="other"),
        ]
    }
    verdict = verdict_of(check_claims(configurations, tolerance=0.0), "cub-margin")
    assert "proxy_anchor" in verdict.evidence
    assert "+1.00" in verdict.evidence
    assert verdict.verdict == "not reproduced"
    assert verdict_of(check_claims(configurations, tolerance=1.0), "cub-margin").verdict == "reproduced"


def test_not_comparable_and_not_tested():
    few_seeds = {"cub": [configuration("sgsl", [0.8, 0.8])]}
    assert verdict_of(check_claims(few_seeds, 1.0), "cub-recall").verdict == "not comparable"
    warned = {"cub": [configuration("sgsl", [0.8, 0.8, 0.8], warnings=["random initialization"])]}
    verdict = verdict_of(check_claims(warned, 1.0), "cub-recall")
    assert verdict.verdict == "not comparable"
    assert "random initialization" in verdict.evidence
    verdicts = check_claims(few_seeds, 1.0)
    for claim_id in ("cars-recall", "sop-recall", "cars-margin", "sop-margin"):
        assert verdict_of(verdicts, claim_id).verdict == "not tested"
    assert verdict_of(verdicts, "cub-margin").verdict == "not tested"


def test_paired_comparison_values():
    sgsl = configuration("sgsl", [0.70, 0.72, 0.74])
    baseline = configuration("normsoftmax", [0.69, 0.70, 0.71])
    header, rows = paired_comparisons([sgsl, baseline])
    assert rows[0][0] == "normsoftmax"
    assert rows[0][1] == "3"
    assert rows[0][2] == "+2.00"
    # differences 1, 2, 3 points: t = 2 / (1 / sqrt 3) = 3.464 with 2 degrees of freedom
    assert float(rows[0][4]) == pytest.approx(0.0742, abs=1e-3)
    assert float(rows[0][5]) == pytest.approx(float(rows[0][4]))


def test_published_difference_only_for_same_method_backbone_size():
    normsoftmax_2048 = configuration(
        "normsoftmax", [0.66, 0.66], flat={"loss.name": "normsoftmax", "model.backbone": "resnet50", "model.embedding_dim": 0}
    )
    sgsl = configuration("sgsl", [0.7, 0.7])
    header, rows = published_table([normsoftmax_2048, sgsl], "cub")
    reproduced = [row for row in rows if row[0] == "reproduced"]
    assert reproduced[0][-1].startswith("+0.7 vs 65.3")
    assert reproduced[1][-1].startswith("none")
    published = [row for row in rows if row[0] == "published"]
    assert any(row[1] == "SGSL" and row[6] == "75.9" for row in published)


def test_report_on_cub_fixture_runs(runner, tmp_path):
    from harness.fixtures import write_cub

    write_cub(tmp_path / "data", classes=3, images_per_class=4, size=(48, 40))
    results = tmp_path / "results"
    base = ["run", "--dataset", "cub", "--data-root", str(tmp_path / "data"), "--results-dir", str(results), "--quiet"]
    base += ["--set", "model.backbone=resnet10t", "--set", "data.resize=[36,36]", "--set", "data.image_size=32"]
    base += ["--set", "train.epochs=2", "--set", "data.batch_size=4", "--set", "data.images_per_class=2"]
    base += ["--set", "data.num_workers=0"]
    assert runner.invoke(app, base + ["--loss", "sgsl,normsoftmax", "--seeds", "2"]).exit_code == 0
    assert runner.invoke(app, base + ["--loss", "sgsl", "--seed", "0", "--set", "loss.gamma_2=32"]).exit_code == 0

    out = tmp_path / "report"
    result = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out), "--tolerance", "2"])
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert "Tolerance 2 point(s)" in markdown
    assert "| SGSL reaches Recall@1 75.9 on CUB-200-2011 | 75.9 | not comparable |" in markdown
    assert "| SGSL reaches Recall@1 94.7 on Cars196 | 94.7 | not tested |" in markdown
    assert "| published | Proxy-Anchor (official code) | ResNet-50 | 512 |" in markdown
    assert "SGSL against each baseline, paired over seeds" in markdown
    assert "Reproducibility summary" in markdown
    assert (out / "cub_published.tex").read_text().count("\\toprule") == 1
    assert (out / "cub_sensitivity.png").exists()
    assert (out / "claims.csv").exists()

    filtered = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(tmp_path / "f"), "--loss", "sgsl"])
    assert filtered.exit_code == 0, filtered.output
    assert "normsoftmax" not in (tmp_path / "f" / "cub_summary.csv").read_text()


def test_claim_prefers_unchanged_protocol_and_flags_overrides():
    unchanged = configuration("sgsl", [0.76, 0.76], label="sgsl")
    ablation = configuration("sgsl", [0.80, 0.80, 0.80], label="sgsl (stop_gradient=false)")
    ablation.overrides = {"loss.stop_gradient": False}
    verdicts = check_claims({"cub": [unchanged, ablation]}, tolerance=1.0)
    evidence = verdict_of(verdicts, "cub-recall").evidence
    assert "SGSL (sgsl, sgsl-paper" in evidence
    alone = check_claims({"cub": [ablation]}, tolerance=1.0)
    assert verdict_of(alone, "cub-recall").verdict == "not comparable"
    assert "changed with --set (loss.stop_gradient=False)" in verdict_of(alone, "cub-recall").evidence
