"""Tokenize once: the on-disk form gives the same examples as tokenizing the rows, and is reused."""

from __future__ import annotations

import logging

import pytest

from finetune_fixture import task_rows
from model_fixture import make_tiny_roberta
from telly.finetuning import tokens as tokens_module
from telly.finetuning.data import (
    CLIP_CHARS_PER_TOKEN,
    CLIP_MIN_TOKENS,
    DatasetError,
    Tokens,
    example_from_pieces,
    load_examples,
)
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


class Recording:
    """The tokenizer, noting the length of every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **kwargs):
        self.lengths += [len(t) for t in ([text] if isinstance(text, str) else text)]
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("task", ["code_search", "line_completion"])
def test_a_huge_row_is_tokenized_clipped_and_gives_the_example_of_the_whole_text(encoder, tmp_path, task):
    """A 1.4 MB field reaches the tokenizer as at most 2 x 32 x 1024 characters, and its example (the first
    tokens of a code, the last of a left context) is the one the whole text gives."""
    tasks_dir = tmp_path / "tasks"
    rows = task_rows(task, 6)
    field = "code" if task == "code_search" else "source"
    rows[2][field] = "def f(x):\n" + "    y = x + 1  # step\n" * 60_000 + "    return y"
    write_jsonl(tasks_dir / task / "valid.jsonl", rows)
    tok = Tokens.of(encoder.tokenizer)
    whole = {
        f: encoder.tokenizer(rows[2][f], add_special_tokens=False)["input_ids"]
        for f in (field, "query", "target")
        if f in rows[2]
    }
    expected = example_from_pieces(task, whole, rows[2], tok, 24, 12)
    for cache_dir in (None, tmp_path / "c"):
        recording = Recording(encoder.tokenizer)
        examples = load_examples(tasks_dir, task, "valid", 0, 1, recording, tok, 24, 12, cache_dir=cache_dir)
        assert max(recording.lengths) <= 2 * CLIP_CHARS_PER_TOKEN * CLIP_MIN_TOKENS < len(rows[2][field])
        assert examples[2] == expected
        assert examples[3] == load_examples(tasks_dir, task, "valid", 0, 1, encoder.tokenizer, tok, 24, 12)[3]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_token_store_is_rebuilt_with_one_warning(encoder, tmp_path, caplog, damage):
    tasks_dir = tmp_path / "tasks"
    write_jsonl(tasks_dir / "code_search" / "valid.jsonl", task_rows("code_search", 12))
    tok = Tokens.of(encoder.tokenizer)

    def load():
        return load_examples(
            tasks_dir, "code_search", "valid", 0, 1, encoder.tokenizer, tok, 24, 12, cache_dir=tmp_path
        )

    first = load()
    (store,) = (tmp_path / "tokens").iterdir()
    pieces = store / "pieces.npy"
    data = bytearray(pieces.read_bytes())
    if damage == "truncate":
        pieces.write_bytes(data[: len(data) // 2])
    else:
        data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
        pieces.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        assert load() == first
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{store}" in warning and "pieces.npy" in warning and "tokenizing it again" in warning
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == [store.name]
