"""Code search's test protocol: queries ranked against ``codebase.jsonl`` when the task folder has it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from finetune_fixture import make_setup, task_rows
from telly.config import parse_params
from telly.finetuning.data import DatasetError, Tokens, make_example
from telly.finetuning.evaluate import codebase_path, embed_all, evaluate, load_codebase
from telly.finetuning.heads import TaskModel
from telly.finetuning.train import train_variant
from telly.jsonl import write_jsonl
from telly.models.loading import load_encoder

DISTRACTORS = [
    {"id": f"d{i}", "code": code}
    for i, code in enumerate(
        [
            "def add(a, c):\n    return a + c",
            "def push(self, x):\n    self.items.append(x)",
            "def size(self):\n    return len(self.things)",
            "def mul(a, b):\n    return b * a",
            "for j in range(10):\n    print(j * 2)",
        ]
    )
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("cb")
    params, raw = make_setup(root, yaml.safe_load((REPO / "params.yaml").read_text()), epochs=1)
    return root, params, raw


def test_evaluation_ranks_the_test_queries_against_the_codebase(setup, tmp_path):
    _, params, _ = setup
    encoder = load_encoder(params.finetune.model, device="cpu")
    tok = Tokens.of(encoder.tokenizer)
    model = TaskModel(encoder.model, "code_search").eval()
    rows = task_rows("code_search", 8)
    examples = [make_example("code_search", r, encoder.tokenizer, tok, 24, 12) for r in rows]
    kwargs = dict(batches=[[0, 1, 2], [3, 4, 5], [6, 7]], beam_size=1, max_new_tokens=1)
    among_test_codes = evaluate(model, examples, tok, encoder.tokenizer, **kwargs)

    # the same codes in another order: found by id, the same ranks
    path = tmp_path / "codebase.jsonl"
    write_jsonl(path, [{"url": r["id"], "code": r["code"]} for r in reversed(rows)])  # UniXcoder's key: url
    shuffled = load_codebase(path, rows, encoder.tokenizer, tok, 24)
    assert shuffled.gold == [7 - i for i in range(8)]
    assert evaluate(model, examples, tok, encoder.tokenizer, codebase=shuffled, **kwargs) == among_test_codes

    # distractors: ranks as the dense score matrix of the query and codebase embeddings gives them
    write_jsonl(path, [{"id": r["id"], "code": r["code"]} for r in rows] + DISTRACTORS)
    codebase = load_codebase(path, rows, encoder.tokenizer, tok, 24)
    got = evaluate(model, examples, tok, encoder.tokenizer, codebase=codebase, codebase_batch_size=4, **kwargs)
    queries = embed_all(model, examples, "query", tok.pad, [range(8)]).numpy()
    codes = embed_all(model, [{"code": c} for c in codebase.codes], "code", tok.pad, [range(13)]).numpy()
    scores = queries @ codes.T
    ranks = 1 + (scores > scores[np.arange(8), np.arange(8)][:, None]).sum(1)
    assert got["mrr"] == pytest.approx(np.mean(1 / ranks)) and got["score"] == got["mrr"]
    assert got["mrr"] <= among_test_codes["mrr"] and ranks.max() > 1


def test_bad_codebase_names_the_file_and_the_id(setup, tmp_path):
    _, params, _ = setup
    encoder = load_encoder(params.finetune.model, device="cpu")
    tok = Tokens.of(encoder.tokenizer)
    rows = task_rows("code_search", 3)
    path = tmp_path / "codebase.jsonl"
    write_jsonl(path, [{"id": "r0", "code": "x"}, {"id": "r1", "code": "y"}])
    with pytest.raises(DatasetError, match=r"codebase\.jsonl: has no code with the test query's id 'r2'"):
        load_codebase(path, rows, encoder.tokenizer, tok, 24)
    write_jsonl(path, [{"id": "r0", "code": "x"}, {"id": "r0", "code": "y"}])
    with pytest.raises(DatasetError, match=r"codebase\.jsonl: line 2: id 'r0' is already on line 1"):
        load_codebase(path, rows, encoder.tokenizer, tok, 24)


def test_the_stage_reads_the_task_folders_codebase(setup, tmp_path, tracking_env):
    root, _, raw = setup
    tasks_dir = tmp_path / "tasks"
    shutil.copytree(root / "tasks" / "code_search", tasks_dir / "code_search")
    raw = json.loads(json.dumps(raw))
    raw["finetune"]["tasks_dir"] = str(tasks_dir)
    params = parse_params(raw)
    test_rows = task_rows("code_search", 8)
    write_jsonl(codebase_path(tasks_dir), [{"id": r["id"], "code": r["code"]} for r in test_rows[1:]])
    with pytest.raises(DatasetError, match=r"codebase\.jsonl: has no code with the test query's id 'r0'"):
        train_variant(params, "code_search", "base", output_dir=tmp_path / "out", results_path=tmp_path / "a.json")
    write_jsonl(codebase_path(tasks_dir), [{"id": r["id"], "code": r["code"]} for r in test_rows] + DISTRACTORS)
    train_variant(params, "code_search", "base", output_dir=tmp_path / "out", results_path=tmp_path / "a.json")
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["settings"]["n_codebase"] == 13 and saved["settings"]["n_test"] == 8
