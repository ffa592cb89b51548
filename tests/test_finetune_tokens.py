"""Tokenize once: the on-disk form gives the same examples as tokenizing the rows, and is reused."""

from __future__ import annotations

import pytest

from finetune_fixture import task_rows
from model_fixture import make_tiny_roberta
from telly.finetuning import tokens as tokens_module
from telly.finetuning.data import DatasetError, Tokens, load_examples
from telly.jsonl import write_jsonl
from telly.models.loading import load_encoder
from telly.tasks import TASK_NAMES as TASKS


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_encoder(make_tiny_roberta(tmp_path_factory.mktemp("tok") / "m"), device="cpu")


@pytest.mark.parametrize("task", TASKS)
def test_stored_tokens_give_the_examples_of_the_rows(encoder, tmp_path, task):
    tasks_dir = tmp_path / "tasks"
    write_jsonl(tasks_dir / task / "valid.jsonl", task_rows(task, 30))
    tok = Tokens.of(encoder.tokenizer)
    for limit, (src, tgt) in ((0, (24, 12)), (11, (24, 12)), (11, (9, 5))):  # all rows, a sample, other lengths
        direct = load_examples(tasks_dir, task, "valid", limit, 3, encoder.tokenizer, tok, src, tgt)
        stored = load_examples(
            tasks_dir, task, "valid", limit, 3, encoder.tokenizer, tok, src, tgt, cache_dir=tmp_path / "c"
        )
        assert stored == direct and len(stored) == (limit or 30)
    assert len(list((tmp_path / "c" / "tokens").iterdir())) == 1  # one tokenization served all three


def test_tokenized_once_then_read_and_rebuilt_when_the_file_changes(encoder, tmp_path, monkeypatch):
    tasks_dir = tmp_path / "tasks"
    write_jsonl(tasks_dir / "clone_detection" / "train.jsonl", task_rows("clone_detection", 20))
    tok = Tokens.of(encoder.tokenizer)
    calls = []
    real = tokens_module.read_jsonl
    monkeypatch.setattr(tokens_module, "read_jsonl", lambda *a, **k: calls.append(a) or real(*a, **k))

    def load():
        return load_examples(
            tasks_dir, "clone_detection", "train", 8, 1, encoder.tokenizer, tok, 24, 12, cache_dir=tmp_path / "c"
        )

    first, second = load(), load()
    assert first == second and len(calls) == 1  # the second run never read the jsonl
    store = next((tmp_path / "c" / "tokens").iterdir())
    assert '"texts": 8' in (store / "meta.json").read_text()  # 40 code fields, 8 distinct snippets
    write_jsonl(tasks_dir / "clone_detection" / "train.jsonl", task_rows("clone_detection", 21))
    load()
    assert len(calls) == 2 and len(list((tmp_path / "c" / "tokens").iterdir())) == 2


def test_stored_form_keeps_the_clear_errors(encoder, tmp_path):
    tasks_dir = tmp_path / "tasks"
    tok = Tokens.of(encoder.tokenizer)
    rows = task_rows("clone_detection", 6)
    for r in rows:
        r["label"] = 1
    write_jsonl(tasks_dir / "clone_detection" / "valid.jsonl", rows)
    with pytest.raises(DatasetError, match="both clone"):
        load_examples(tasks_dir, "clone_detection", "valid", 0, 1, encoder.tokenizer, tok, 24, 12, cache_dir=tmp_path)
    write_jsonl(tasks_dir / "code_search" / "valid.jsonl", [{"id": "a", "query": "q"}])
    with pytest.raises(Exception, match=r"valid\.jsonl:1: missing field\(s\) 'code'"):
        load_examples(tasks_dir, "code_search", "valid", 0, 1, encoder.tokenizer, tok, 24, 12, cache_dir=tmp_path)
