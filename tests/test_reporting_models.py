"""The report across models: per-model verdicts side by side, the paragraph written from them, depth figures."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO
from model_fixture import make_tiny_roberta
from telly.config import Params, load_params
from telly.reporting.models import LOWER_CASE_REASON, write_models_report

LEX = "Lexical properties peak in lower layers than syntactic ones"
SPREAD = "Semantic information is spread over all layers"
TOP = "The top two layers change most in fine-tuning"


def _claim(text: str, verdict: str, firm: bool | None, paper: str = "reproduced") -> dict:
    return {
        "claim": text,
        "rq": "RQ1",
        "this_run": verdict,
        "firm": firm,
        "evidence": f"evidence of {verdict}",
        "paper": paper,
        "paper_evidence": "paper's evidence",
    }


def _study(base: Params, root: Path, name_or_path: Path, tasks: list[str]) -> Params:
    """A model's Params with every output under ``root`` (as the lead's studies/<tag>/ relocation does)."""
    return base.model_copy(
        update={
            "model": base.model.model_copy(update={"name_or_path": str(name_or_path)}),
            "report": base.report.model_copy(update={"out_dir": root / "reports"}),
            "probe": base.probe.model_copy(update={"out_dir": root / "results/probe"}),
            "similarity": base.similarity.model_copy(update={"out_dir": root / "results/similarity"}),
            "finetune": base.finetune.model_copy(
                update={
                    "results_dir": root / "results/finetune",
                    "baselines_dir": root / "results/baselines",
                    "task_names": tasks,
                }
            ),
        }
    )


def _outputs(root: Path, claims: dict, states: int, sim_tasks: list[str]) -> None:
    (root / "reports").mkdir(parents=True)
    (root / "reports/claims.json").write_text(json.dumps(claims))
    for prop in ("lexical", "syntactic"):
        folder = root / "results/probe/pretrained" / prop
        folder.mkdir(parents=True)
        lines = ["layer,score,score_std"] + [f"{h},{50 + h},0.1" for h in range(states)]
        (folder / "curve.csv").write_text("\n".join(lines) + "\n")
    rows = [
        {"kind": "finetuned", "task": t, "hidden_state": h, "rsa_spearman": 1 - 0.05 * h}
        for t in sim_tasks
        for h in range(states)
    ] + [{"kind": "random", "task": "random", "hidden_state": 0, "rsa_spearman": 0.1}]
    (root / "results/similarity").mkdir(parents=True)
    (root / "results/similarity/table.json").write_text(json.dumps(rows))


def _lower_casing_model(folder: Path) -> Path:
    from transformers import BertConfig, BertTokenizerFast

    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ab", "a", "##b"]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True).save_pretrained(folder)
    BertConfig(vocab_size=8, hidden_size=16, num_hidden_layers=3, num_attention_heads=2).save_pretrained(folder)
    return folder


def _two_models(tmp_path: Path) -> list[tuple[str, Params]]:
    base = load_params(REPO / "params.yaml")
    a, b = tmp_path / "root", tmp_path / "studies/minilm"
    _outputs(
        a,
        {
            "lexical_below_syntactic": _claim(LEX, "reproduced", True),
            "semantic_spread": _claim(SPREAD, "reproduced", False),
            "top_two_change_most": _claim(TOP, "inconclusive", None),
        },
        states=3,
        sim_tasks=["code_search"],
    )
    _outputs(
        b,
        {
            "lexical_below_syntactic": _claim(LEX, "reproduced", True),
            "semantic_spread": _claim(SPREAD, "not reproduced", True),
        },
        states=5,
        sim_tasks=["code_search", "clone_detection"],
    )
    (a / "results/finetune/tables").mkdir(parents=True)
    (a / "results/finetune/tables/code_search.md").write_text(
        "#### code_search\n\n| Variant | mrr |\n|---|---|\n| Base | 0.5 |\n"
    )
    (a / "reports/report.md").write_text("# the embedded model's report\n")
    every = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]
    return [
        ("embedded", _study(base, a, make_tiny_roberta(tmp_path / "tiny"), every)),
        ("minilm", _study(base, b, _lower_casing_model(tmp_path / "lower"), ["code_search", "clone_detection"])),
    ]


def _row(report: str, start: str) -> list[str]:
    line = next(ln for ln in report.splitlines() if ln.startswith(f"| {start}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_claims_table_has_a_column_per_model_with_its_verdicts(tmp_path):
    out = tmp_path / "reports/models"
    path = write_models_report(_two_models(tmp_path), out)
    report = path.read_text()
    assert path == out / "report.md"
    assert _row(report, "claim ") == ["claim", "paper", "embedded", "minilm"]
    assert _row(report, LEX) == [LEX, "✓ reproduced", "✓ reproduced (firm)", "✓ reproduced (firm)"]
    assert _row(report, SPREAD) == [SPREAD, "✓ reproduced", "✓ reproduced (not firm)", "✗ not reproduced (firm)"]
    assert _row(report, TOP) == [TOP, "✓ reproduced", "? inconclusive", "not run"]
    assert "  - minilm: evidence of not reproduced\n" in report and "  - minilm: not run\n" in report


def test_paragraph_names_what_holds_and_what_moves_with_the_model(tmp_path):
    report = write_models_report(_two_models(tmp_path), tmp_path / "out").read_text()
    paragraph = next(ln for ln in report.splitlines() if ln.startswith("**Across models.**"))
    assert paragraph.startswith("**Across models.** Of 3 claims over 2 models (embedded, minilm), ")
    held, moved = paragraph.split("holds the same on every model")[1].split("moves with the model")
    assert f"{LEX} (reproduced on every model, as in the paper)" in held and SPREAD not in held
    assert f"{SPREAD} (embedded: reproduced, minilm: not reproduced)" in moved
    assert f"1 has no verdict on some model: {TOP} (embedded: inconclusive, minilm: not run)" in paragraph
    assert "Inconclusive verdicts, counted apart: 1 (embedded 1, minilm 0)" in paragraph


def test_models_header_figures_rq3_and_claims_json(tmp_path):
    out = tmp_path / "out"
    report = write_models_report(_two_models(tmp_path), out).read_text()
    assert _row(report, "**embedded**")[2:4] == ["2 x 32", "no"]
    assert _row(report, "**minilm**")[2:] == ["3 x 16", "yes", "code_search, clone_detection"]
    assert f"- **minilm**: {LOWER_CASE_REASON}." in report and "- **embedded**: its tokenizer" not in report
    for name in ("rq1-probe-depth.png", "rq2-depth.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"](figures/{name})" in report
    assert "### embedded: code_search\n\n| Variant | mrr |\n|---|---|\n| Base | 0.5 |\n" in report
    assert "#### code_search" not in report and "### minilm:" not in report
    assert "[../root/reports/report.md](../root/reports/report.md)" in report
    claims = json.loads((out / "claims.json").read_text())
    assert list(claims) == ["lexical_below_syntactic", "semantic_spread", "top_two_change_most"]
    assert claims["semantic_spread"] == {
        "claim": SPREAD,
        "paper": "reproduced",
        "models": {
            "embedded": {"this_run": "reproduced", "firm": False},
            "minilm": {"this_run": "not reproduced", "firm": True},
        },
    }
    assert claims["top_two_change_most"]["models"]["minilm"] == {"this_run": "not run", "firm": None}


def test_a_model_with_no_outputs_reads_not_run(tmp_path):
    base = load_params(REPO / "params.yaml")
    models = _two_models(tmp_path)
    models.append(("bare", _study(base, tmp_path / "nothing", tmp_path / "no-model", ["code_search"])))
    report = write_models_report(models, tmp_path / "out").read_text()
    assert _row(report, "**bare**")[2:4] == ["unknown", "unknown"]
    assert _row(report, LEX)[-1] == "not run"
    assert (
        "1 moves with the model" in report and "2 have no verdict on some model" in report and "### bare:" not in report
    )


def test_base_against_both_baselines_per_model_from_each_claims_file():
    from telly.reporting.models import learning_section

    def per_task(low: float, high: float, verdict: str) -> dict:
        interval = {"estimate": (low + high) / 2, "low": low, "high": high}
        return {"verdict": verdict, "learns": {"interval": interval}, "pretrained": {"interval": interval}}

    claims = {
        "embedded": {
            "telly_within_base": {
                "per_task": {
                    "code_search": per_task(-0.36, -0.31, "not checked"),
                    "code_generation": per_task(-0.2, 0.1, "not checked"),
                    "line_completion": per_task(1.0, 3.0, "inconclusive"),
                }
            }
        },
        "minilm": {"telly_within_base": {"per_task": {"code_search": per_task(0.02, 0.06, "reproduced")}}},
        "empty": {},
    }
    text = learning_section(claims)
    assert "| code_search | embedded | -0.335 [-0.36, -0.31] ✗ |" in text
    assert "| code_search | minilm | +0.04 [+0.02, +0.06] ✓ | +0.04 [+0.02, +0.06] ✓ | reproduced |" in text
    # an undecided interval (generation) does not count; a task counts once, with every model it holds on
    assert (
        "**Tasks where Base beats its no-training baseline on at least one model: 2 of 3** "
        "(code_search (minilm); line_completion (embedded)). On none: code_generation" in text
    )
    assert "| empty |" not in text  # a model without the claim has no row
    assert learning_section({"embedded": {}}) == ""
