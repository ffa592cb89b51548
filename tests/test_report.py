"""The report stage on small synthetic results: every section, the claims both ways, missing inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from report_fixture import TASKS, L, write_all, write_finetune, write_similarity
from telly.config import parse_params
from telly.errors import TellyError
from telly.reporting.stage import run


@pytest.fixture
def params(raw_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw_params["report"]["track"] = False
    # the fixture writes deep and paper-regime runs for every task: the matrix lists them all
    raw_params["finetune"]["deep_task_names"] = list(raw_params["finetune"]["task_names"])
    raw_params["report"]["paper_regime"]["tasks"] = list(raw_params["finetune"]["task_names"])
    return parse_params(raw_params)


def _claims(out: Path) -> dict[str, str]:
    return {k: v["this_run"] for k, v in json.loads((out / "claims.json").read_text()).items()}


def test_full_report_where_every_claim_holds(params, tmp_path):
    write_all(tmp_path, holding=True)
    md_path = run(params)
    out = md_path.parent
    md = md_path.read_text()
    assert set(_claims(out).values()) == {"reproduced"}
    # the paper's numbers pass the same rules
    assert {v["paper"] for v in json.loads((out / "claims.json").read_text()).values()} == {"reproduced"}
    for heading in ("## Answers to the three research questions", "## RQ1", "## RQ2", "## RQ3", "## Tuning"):
        assert heading in md
    assert "Not available yet" not in md
    # RQ3: both regimes per task, the paper's table beside, ratios computed against Base
    for task in TASKS:
        assert f"### {task}" in md
    assert md.count("**This run, with frozen-prefix caching**") == len(TASKS)
    assert md.count("**This run, without caching") == len(TASKS)
    # Telly-1: paper params 600 vs Base 1000 -> 40.0% fewer; epoch 6 s vs 10 s -> 40.0% shorter (cached)
    assert "| Telly-1 | 0.0006 | 40.0 | 6.0s | 40.0 |" in md
    assert "| Telly-11 | 7.09 | 94.4 | 06m21s | 63.2 | 3 | 0h19m03s | 87.7 | 0.69 |" in md  # paper, code search
    # RQ3 answer: deepest non-inferior K is Telly-1 (Telly-3 drops 20%); baseline and intervals shown
    assert "non-inferior up to Telly-1 (0.0006 M trainable, -40% parameters and -40% epoch time vs Base" in md
    assert md.count("*No-training baseline*") == len(TASKS) and "Base beats it." in md
    assert "(on the whole inputs, beyond the model's truncation: 0.35" in md
    cut = (
        "*Inputs the model cuts* (share of test rows longer than the model reads, 64 / 24 tokens): source 25.0%, target"
    )
    assert md.count(cut + " 50.0%.") == len(TASKS)
    assert md.count("*Pre-trained model without fine-tuning*") == len(TASKS)  # encoder and decoder modes
    assert "mrr 0.4000; Base − it +0.095 [+0.0932, +0.09687] (95% two-level percentile, 1000 rows, seeds 2 vs 1)" in md
    assert md.count("Power at K = 1: detects") == len(TASKS) and "| two-level interval | rows only |" in md
    assert "| Base | 0.0010 | 0.0 | 10.0s | 0.0 | 2 | 20.0s | 0.0 | 2 | 0.5 ± 0 |" in md  # two seeds, mean ± std
    assert "| Telly-3 | -20.00 | [-20.00, -20.00] |" in md and "**Which answers are firm.**" in md
    # tuning beside the similarity's suggestion
    row = "| code_search | telly-1 | 3.00e-04 | 0.6100 | 0.5200 ± 0.0200 (n = 3, range 0.0400) | complete 3, pruned 1 |"
    assert row + " Telly-2 | Telly-1 |" in md
    assert "equals the similarity's suggestion on 0 of 5 tasks and RQ3's deepest non-inferior K on 5 of 5" in md
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert figures == {"rq1-probe-curves.png", "rq1-layer-weights.png", "rq2-similarity.png", "rq3-quality-vs-cost.png"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="figures/' not in html
    assert "<table>" in html
    # verdict marks need no emoji font: text symbols in the Markdown, CSS badges in the HTML
    assert not any(emoji in md + html for emoji in "✅❌⏳")
    assert "✓ reproduced" in md and '<span class="verdict yes">reproduced</span>' in html and "✓" not in html
    plots = (out / "plots" / "rq3-code_search.csv").read_text().splitlines()
    assert plots[0].split(",")[:2] == ["k", "params_reduction_pct"]
    assert {"metric_vs_base_pct_cached", "epoch_reduction_pct_uncached"} <= set(plots[0].split(","))
    assert [line.split(",")[0] for line in plots[1:]] == ["-1", "0", "1", "3"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["claims"].values()) == {1} and metrics["deepest_k_within_base"]["code_search"] == 1


def test_each_claim_fails_where_the_results_contradict_it(params, tmp_path):
    write_all(tmp_path, holding=False)
    run(params)
    verdicts = _claims(tmp_path / "reports")
    assert verdicts == {
        "lexical_below_syntactic": "not reproduced",  # lexical h3, syntactic h2
        "syntactic_below_structural": "not reproduced",  # syntactic h2, structural h1
        "semantic_spread": "not reproduced",  # lexical weights are the even ones
        "lower_layers_preserved": "not reproduced",  # h1 = 0.6
        "top_two_change_most": "not reproduced",  # h1 changes most
        "telly_within_base": "not reproduced",  # Telly-0 is 5% below Base
    }
    evidence = json.loads((tmp_path / "reports/claims.json").read_text())
    assert "lexical peaks at h3, syntactic at h2" in evidence["lexical_below_syntactic"]["evidence"]
    assert "code_search: K=0: -5.0% [-5.0, -5.0] not reproduced" in evidence["telly_within_base"]["evidence"]
    # the top-two-layers claim is vacuous on code search: the caveat stands beside it
    assert evidence["top_two_change_most"]["caveat"].startswith("vacuous on 1 of 5 tasks (code_search)")
    assert (
        "The top two layers change most in fine-tuning (**caveat**: vacuous on 1 of 5"
        in (tmp_path / "reports" / "report.md").read_text()
    )


def test_missing_inputs_are_named_with_the_stage_to_run(params, tmp_path):
    md = run(params).read_text()
    for command in (
        "dvc repro probe",
        "dvc repro similarity",
        "dvc repro finetune",
        "dvc repro finetune-paper-regime",
        "dvc repro tune",
    ):
        assert command in md
    assert set(_claims(tmp_path / "reports").values()) == {"not checked"}
    assert "### Paper: rho" in md and "**Paper: Code search" in md  # the paper's numbers are always there
    html = (tmp_path / "reports/report.html").read_text()
    assert "Not available yet" in html


def test_partial_results_fill_only_their_sections(params, tmp_path):
    write_similarity(tmp_path, holding=True)
    write_finetune(tmp_path, holding=True, paper_regime=False)
    md = run(params).read_text()
    verdicts = _claims(tmp_path / "reports")
    assert verdicts["top_two_change_most"] == "reproduced" and verdicts["lexical_below_syntactic"] == "not checked"
    assert "dvc repro probe" in md and "dvc repro finetune-paper-regime" in md
    assert "**This run, with frozen-prefix caching**" in md and "**This run, without caching" not in md
    assert not (tmp_path / "reports/figures/rq1-probe-curves.png").exists()


def test_a_stale_figure_is_removed_when_its_inputs_are_gone(params, tmp_path):
    write_all(tmp_path, holding=True)
    run(params)
    assert (tmp_path / "reports/figures/rq1-probe-curves.png").exists()
    import shutil

    shutil.rmtree(tmp_path / "results/probe")
    run(params)
    assert not (tmp_path / "reports/figures/rq1-probe-curves.png").exists()


def test_a_corrupt_result_file_is_a_clear_error(params, tmp_path):
    write_all(tmp_path, holding=True)
    bad = tmp_path / "results/probe/pretrained/lexical/details.json"
    bad.write_text("{not json")
    with pytest.raises(TellyError, match="results/probe/pretrained/lexical/details.json: not valid JSON"):
        run(params)


def test_report_is_logged_to_mlflow(raw_params, tmp_path, monkeypatch, tracking_env):
    import mlflow

    monkeypatch.chdir(tmp_path)
    write_all(tmp_path, holding=True)
    run(parse_params(raw_params))
    mlflow.set_tracking_uri(tracking_env)
    runs = mlflow.search_runs(experiment_names=["telly-report"])
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.claim.top_two_change_most"] == 1.0
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.iloc[0]["run_id"], "report")}
    assert "report/report.html" in arts


def test_cli_report(raw_params, tmp_path, monkeypatch):
    import yaml
    from typer.testing import CliRunner

    from telly.cli import app

    monkeypatch.chdir(tmp_path)
    raw_params["report"]["track"] = False
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw_params))
    write_similarity(tmp_path, holding=True)
    result = CliRunner().invoke(app, ["report", "--params", "p.yaml"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports/report.html").exists()
    assert L == 4


def test_report_names_the_pretraining_recipe_of_the_embedded_model(tmp_path, raw_params):
    import json

    from telly.config import parse_params
    from telly.reporting.document import pretraining_line

    raw_params["pretrain"]["metrics"] = str(tmp_path / "metrics.json")
    raw_params["model"]["name_or_path"] = raw_params["pretrain"]["out_dir"]
    params = parse_params(raw_params)
    assert "recipe unknown" in pretraining_line(params)
    metrics = {"objective_weights": {"mlm": 0.5, "ulm": 0.2, "denoise": 0.2, "contrastive": 0.1}, "ast_share": 0.5}
    metrics |= {"steps": 5000, "masked_token_accuracy": 0.361, "next_token_accuracy": 0.2, "retrieval_mrr": 0.31}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    line = pretraining_line(params)
    assert "mlm 0.5, ulm 0.2, denoise 0.2, contrastive 0.1" in line and "50% of their" in line
    assert "masked-token accuracy 36.1%" in line and "5000 steps" in line and "alone" not in line
    (tmp_path / "metrics.json").write_text(json.dumps(metrics | {"mlm_first_steps": 2500}))
    assert "masked-LM on plain code alone for the first 2500 steps, then objectives mlm 0.5" in pretraining_line(params)
    raw_params["model"]["name_or_path"] = "microsoft/unixcoder-base"  # not trained here: nothing to name
    assert pretraining_line(parse_params(raw_params)) == ""
