"""The probe stage end to end on a tiny encoder and tiny probing sets made from stdlib functions."""

import csv
import json

import pytest

from model_fixture import make_tiny_roberta
from python_functions import stdlib_functions
from telly.config import parse_params
from telly.data.analysis import ast_only, complexity_class, cyclomatic_complexity, lexical_tokens
from telly.errors import TellyError
from telly.jsonl import write_jsonl
from telly.probing.stage import run_one
from telly.probing.summary import summarize


def probing_sets(folder, codes):
    sizes = {"train": 24, "valid": 8, "test": 8}
    start = 0
    for split, n in sizes.items():
        part = codes[start : start + n]
        start += n
        ids = [f"{split}-{i}" for i in range(n)]
        write_jsonl(
            folder / "lexical" / f"{split}.jsonl",
            [{"id": i, "code": c, "tokens": [list(t) for t in lexical_tokens(c)]} for i, c in zip(ids, part)],
        )
        asts = [ast_only(c) for c in part]
        write_jsonl(
            folder / "syntactic" / f"{split}.jsonl",
            [{"id": f"{i}-t", "code": c, "ast_only": a, "label": 1} for i, c, a in zip(ids, part, asts)]
            + [
                {"id": f"{i}-f", "code": c, "ast_only": asts[(k + 1) % n], "label": 0}
                for k, (i, c) in enumerate(zip(ids, part))
            ],
        )
        write_jsonl(
            folder / "structural" / f"{split}.jsonl",
            [
                {
                    "id": i,
                    "code": c,
                    "complexity": cyclomatic_complexity(c),
                    "label": complexity_class(cyclomatic_complexity(c)),
                }
                for i, c in zip(ids, part)
            ],
        )
        write_jsonl(
            folder / "semantic" / f"{split}.jsonl",
            [{"id": i, "code": c, "label": f"class-{k % 4}"} for k, (i, c) in enumerate(zip(ids, part))],
        )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    model = make_tiny_roberta(root / "models" / "pretrained", max_length=64)
    codes = [
        c
        for _, _, c, _, _ in stdlib_functions(["textwrap", "shlex", "bisect", "colorsys", "fnmatch", "glob"])
        if len(c) < 1500
    ][:40]
    assert len(codes) == 40
    probing_sets(root / "data" / "probing", codes)
    return root, model


@pytest.fixture
def params(project, raw_params, tracking_env):
    root, model = project
    raw_params.setdefault("model", {})["name_or_path"] = str(model)
    raw_params["finetune"]["output_dir"] = str(root / "models" / "finetuned")
    raw_params["probe"].update(
        probing_dir=str(root / "data" / "probing"),
        representations_dir=str(root / "data" / "representations"),
        out_dir=str(root / "results" / "probe"),
        max_rows={"train": 24, "valid": 8, "test": 8},
        max_length=64,
        epochs=2,
        batch_size=8,
        seeds=[1, 2],
    )
    return parse_params(raw_params)


@pytest.mark.parametrize("prop", ["lexical", "syntactic", "structural", "semantic"])
def test_each_property_runs_on_random_and_pretrained(params, prop, project, capsys):
    root, _ = project
    for state in ("random", "pretrained"):
        result = run_one(params, prop, state)
        folder = root / "results" / "probe" / state / prop
        metrics = json.loads((folder / "metrics.json").read_text())
        rows = list(csv.DictReader((folder / "curve.csv").open()))
        assert len(rows) == 3 == result["n_hidden_states"]  # 2 layers + embeddings
        assert {"score", "control", "selectivity", "weight"} <= set(rows[0])
        assert 0 <= metrics["peak"]["layer"] <= 2 and "selectivity" in metrics["peak"]
        weights = result["weighted-layer-wise"]["layer_weights"]["mean"]
        assert sum(weights) == pytest.approx(1, abs=1e-3)
        assert len(result["layer-wise"][f"per_seed_{result['metric']}"]) == 2
    out = capsys.readouterr().out
    assert f"{prop}" in out and "peaks at layer" in out and "selectivity" in out
    reps = root / "data" / "representations"
    assert (reps / "random" / f"probing-{prop}-train" / "meta.json").exists()


def test_lexical_rows_are_last_subwords_and_cache_is_reused(params, project, caplog):
    root, _ = project
    run_one(params, "lexical", "pretrained")
    import logging

    caplog.set_level(logging.INFO)
    run_one(params, "lexical", "pretrained")
    assert "cached representations reused" in caplog.text
    details = json.loads((root / "results" / "probe" / "pretrained" / "lexical" / "details.json").read_text())
    from telly.models.loading import load_encoder, tokenize

    codes = [json.loads(line)["code"] for line in (root / "data" / "probing" / "lexical" / "train.jsonl").open()]
    offsets = tokenize(load_encoder(params.model.name_or_path), codes, max_length=64).offsets
    # one row per subword that is the last subword of a (kept) source token; a subword that
    # ends two tokens (BPE merging "()") is one row
    expected = 0
    for code, spans in zip(codes, offsets):
        last = {
            max(i for i, (s, e) in enumerate(spans) if e > s and s < b and e > a)
            for a, b, _ in lexical_tokens(code)
            if any(e > s and s < b and e > a for s, e in spans)
        }
        expected += len(last)
    assert details["sizes"]["train"] == expected


def test_missing_finetuned_model_is_skipped_with_a_message(params, project, capsys):
    root, _ = project
    result = run_one(params, "structural", "finetuned")
    assert "does not exist yet" in result["skipped"]
    assert "skipped" in json.loads(
        (root / "results" / "probe" / "finetuned" / "structural" / "metrics.json").read_text()
    )
    assert "skipped" in capsys.readouterr().out


def test_summary_figures_and_mlflow_runs(params, project, capsys):
    import mlflow

    root, _ = project
    for state in ("random", "pretrained", "finetuned"):
        for prop in ("structural", "semantic"):
            run_one(params, prop, state)
    summary = summarize(params)
    out = capsys.readouterr().out
    assert "where each property peaks" in out
    assert summary["pretrained"]["structural"]["peak"]["layer"] in (0, 1, 2)
    figures = root / "results" / "probe" / "figures"
    assert (figures / "curves-pretrained.png").stat().st_size > 0 and (figures / "weights-random.png").exists()
    runs = mlflow.search_runs(experiment_names=["telly-probe"])
    names = set(runs["tags.mlflow.runName"])
    assert {"random", "pretrained", "finetuned", "pretrained/structural", "pretrained/semantic/layer-2"} <= names
    parent = runs[runs["tags.mlflow.runName"] == "pretrained"]["run_id"].iloc[0]
    child = runs[runs["tags.mlflow.runName"] == "pretrained/structural"]
    assert child["tags.mlflow.parentRunId"].iloc[0] == parent


def test_bad_rows_are_named(params, project, tmp_path):
    root, _ = project
    bad = tmp_path / "probing"
    (bad / "structural").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        write_jsonl(
            bad / "structural" / f"{split}.jsonl",
            [{"id": f"x{i}", "code": "def f(): pass\n", "label": 9} for i in range(3)],
        )
    broken = params.model_copy(update={"probe": params.probe.model_copy(update={"probing_dir": bad})})
    with pytest.raises(TellyError, match=r"structural/train.jsonl: rows .*label must be an integer class 0..5"):
        run_one(broken, "structural", "random")
    with pytest.raises(TellyError, match="not in probe.properties"):
        run_one(params, "morphology", "random")
