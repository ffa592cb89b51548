"""The no-training baselines: each on a tiny case worked out by hand, then the stage on the fine-tuning fixture."""

from __future__ import annotations

import json
import math

import pytest

from finetune_fixture import make_setup
from telly import tasks
from telly.data import baselines as DB
from telly.errors import TellyError
from telly.finetuning import baselines as B
from telly.finetuning import examples as E
from telly.finetuning.data import load_split
from telly.jsonl import read_jsonl

CODES = [
    "def add(a, b):\n    return a + b",
    "def push(self, item):\n    self.items.append(item)",
    "def getUserName(user):\n    return user.name",
    "for i in range(10):\n    print(i * 2)",
]


def test_bm25_terms_add_identifier_parts():
    assert DB.bm25_terms("getUserName(user_id)") == ["getusername", "get", "user", "name", "user_id", "user", "id"]


def test_bm25_ranks_the_exact_duplicate_first():
    bm25 = DB.BM25(CODES)
    assert bm25.nearest(CODES) == [0, 1, 2, 3]
    assert bm25.nearest(["return the user name"]) == [2]  # the query's words meet getUserName's parts


def test_code_search_baseline_ranks_each_query_among_the_test_codes():
    test = [
        {"id": str(i), "query": q, "code": c}
        for i, (q, c) in enumerate(zip(["add a b", "push item", "user name", "print range"], CODES))
    ]
    metrics, rows = B.code_search([], [], test)
    assert metrics["mrr"] == pytest.approx(1.0) and [r["rr"] for r in rows] == [1.0] * 4


def test_code_search_baseline_ranks_against_the_codebase_when_there_is_one():
    total = "def total(values):\n    return sum(values)"
    test = [{"id": "a", "query": "sum values", "code": total}, {"id": "b", "query": "user name", "code": CODES[2]}]
    codebase = [
        {"id": "x", "code": "def sum_values(values):\n    return sum(values)"},  # outranks "a": more shared terms
        {"id": "a", "code": total},
        {"id": "b", "code": CODES[2]},
    ]
    metrics, rows = B.code_search([], [], test, codebase)
    assert [r["rr"] for r in rows] == [0.5, 1.0] and metrics["mrr"] == pytest.approx(0.75)
    with pytest.raises(TellyError, match="no code for test queries"):
        B.code_search([], [], test, codebase[:2])


def test_clone_threshold_is_chosen_on_valid_not_on_test():
    same = {"code1": "a b c d", "code2": "a b c d", "label": 1}  # Jaccard 1
    half = {"code1": "a b c d", "code2": "a b x y", "label": 1}  # 2 / 6
    other = {"code1": "a b c d", "code2": "p q r s", "label": 0}  # 0
    valid = [same, other, same, other]  # threshold 1.0 on valid
    test = [same, half, other]  # a threshold chosen on test would be 1/3 and catch `half`
    metrics, rows = B.clone_detection([], valid, test)
    assert metrics["threshold"] == pytest.approx(1.0)
    assert [r["pred"] for r in rows] == [1, 0, 0] and [r["gold"] for r in rows] == [1, 1, 0]
    assert metrics["recall"] == pytest.approx(0.5) and metrics["f1"] == pytest.approx(2 / 3)


def test_summarization_and_generation_copy_the_nearest_training_row():
    train = [{"id": str(i), "source": c, "target": f"doc {i}"} for i, c in enumerate(CODES)]
    test = [{"id": "t", "source": CODES[2], "target": "doc 2"}]
    metrics, rows = B.code_summarization(train, [], test)
    assert rows[0]["hyp"] == "doc 2" and metrics["bleu"] == pytest.approx(100.0)
    metrics, rows = B.code_generation(train, [], [{"id": "t", "source": CODES[3], "target": "doc 0"}])
    assert rows[0]["hyp"] == "doc 3" and rows[0]["em"] == 0.0


def test_ngram_predicts_a_repeated_line():
    train = [{"id": str(i), "source": f"def f{i}(x):\n    y = x + 1\n", "target": "return y * 2"} for i in range(5)]
    model = B.NgramLines([r["source"] + r["target"] for r in train])
    assert model.complete("def g(x):\n    y = x + 1\n") == "return y * 2"
    assert model.complete("def g(x):\n") == "y = x + 1"  # backs off from an unseen name to the seen context
    metrics, rows = B.line_completion(
        train, [], [{"id": "t", "source": "def h(x):\n    y = x + 1\n", "target": "return  y * 2"}]
    )
    assert metrics["em"] == 100.0 and rows[0]["hyp"] == "return y * 2"


def test_line_tokens_drop_indentation_and_keep_inner_spaces():
    assert B.line_tokens("    return a  +b\n\n") == ["return", " ", "a", " ", "+", "b", B.EOL]


def test_stage_scores_exactly_the_fine_tuning_test_rows(tmp_path, raw_params):
    params, _ = make_setup(tmp_path, raw_params, n_train=16, test_size=6)
    settings = params.finetune
    for task in settings.task_names:
        path = B.run(params, task, tmp_path / "baselines")
        result = json.loads(path.read_text())
        rows = read_jsonl(E.examples_path(path))
        test = load_split(settings.tasks_dir, task, "test", 6, settings.data_seed)
        assert [r["id"] for r in rows] == [r["id"] for r in test]
        assert result["variant"] == "baseline" and result["settings"]["test_size"] == 6
        main = E.statistic(task).metric
        assert E.main_metric(task, E.statistics(task, rows)) == pytest.approx(result["test"][main])
    with pytest.raises(TellyError, match="unknown task"):
        B.run(params, "nope", tmp_path / "baselines")


def test_equal_input_baseline_reads_exactly_the_models_tokens(tmp_path, raw_params):
    from telly.finetuning.data import Tokens, kept_pieces, make_example, model_view, token_ids
    from telly.models.loading import load_tokenizer

    params, _ = make_setup(tmp_path, raw_params, max_source_length=9, max_target_length=5)
    tokenizer = load_tokenizer(params.finetune_model)
    tok = Tokens.of(tokenizer)
    cut_any = False
    for task in params.finetune.task_names:
        splits = B._splits(params, task)
        seen, _ = B.equal_inputs(params, task, splits, None)
        spec = tasks.get(task)
        for row, view in zip(splits["test"], seen["test"]):
            pieces = {f: token_ids(tokenizer, row[f], 9) for f in spec.text_fields}
            kept = kept_pieces(task, pieces, tok, 9, 5)
            example = make_example(task, row, tokenizer, tok, 9, 5)
            if spec.layout == "encoder-only":  # the model's sequence is the mode's wrap around exactly these ids
                head, tail = tok.wrap("encoder-only")
                assert all(example[f].ids == tuple(head + kept[f] + tail) for f in spec.sequences)
            elif spec.layout == "encoder-decoder":
                head, tail = tok.wrap("encoder-decoder")
                assert example["prompt"] == head + kept["source"] + tail + [tok.target_start]
            else:
                head, _ = tok.wrap("decoder-only")
                assert example["prompt"] == head + kept["source"]
            inputs = spec.text_fields if not spec.generates else ("source",)
            for f in inputs:  # the baseline's text is those ids, and re-reads as them
                assert view[f] == model_view(task, row, tokenizer, tok, 9, 5)[f]
                assert tokenizer(view[f], add_special_tokens=False)["input_ids"] == kept[f]
                cut_any |= len(kept[f]) < len(pieces[f])
            if spec.generates:
                assert view["target"] == row["target"]  # the reference is scored whole
        if spec.generates:  # training targets as the model learns them: cut to max_target_length - 2
            assert all(len(tokenizer(r["target"], add_special_tokens=False)["input_ids"]) <= 3 for r in seen["train"])
    assert cut_any  # the lengths do cut: the test compares truncated inputs


def test_stage_writes_the_whole_input_figure_and_the_pretrained_encoder(tmp_path, raw_params):
    params, _ = make_setup(tmp_path, raw_params, max_source_length=9, max_target_length=5)
    for task in ("code_search", "clone_detection", "code_generation"):
        path = B.run(params, task, tmp_path / "baselines")
        result = json.loads(path.read_text())
        assert "on the model's tokens (9 / 5)" in result["method"] and "whole inputs" in result["full_input"]["method"]
        assert set(result["full_input"]["test"]) == set(result["test"])
        other = json.loads((tmp_path / "baselines" / f"{task}.pretrained.json").read_text())
        rows = read_jsonl(E.examples_path(tmp_path / "baselines" / f"{task}.pretrained.json"))
        main = E.statistic(task).metric
        assert other["applies"] and E.main_metric(task, E.statistics(task, rows)) == pytest.approx(other["test"][main])
        assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(E.examples_path(path))]
        assert all(math.isfinite(v) for v in other["test"].values())
        mode = "encoder-decoder mode" if task == "code_generation" else "encoder mode"
        assert mode in other["method"]


def _greedy_by_hand(model, tokenizer, tok, example, steps: int, mlm_head: bool = False) -> str:
    """Greedy decoding that re-encodes prompt + tokens every step through ``RobertaForMaskedLM.roberta``
    and projects with the tied word embeddings, as the pre-training's ULM / denoising losses do (or, with
    ``mlm_head``, through the masked-LM head)."""
    import torch

    from telly.finetuning.data import Seq, collate
    from telly.models.pretrain import encode

    ids = list(example["prompt"])
    prefix = example["seq"].prefix
    out: list[int] = []
    for _ in range(steps):
        batch = collate([Seq(tuple(ids), prefix)], tok.pad)
        with torch.no_grad():
            hidden = encode(model, {"input_ids": batch["ids"], "attention_mask": batch["mask"]})
            last = hidden[0, -1]
            logits = model.lm_head(last) if mlm_head else last @ model.roberta.embeddings.word_embeddings.weight.T
        token = int(logits.argmax())
        if token == tok.eos:
            break
        out.append(token)
        ids.append(token)
    return " ".join(tokenizer.decode(out, skip_special_tokens=True).split())


@pytest.mark.parametrize("task", ["code_summarization", "line_completion"])
def test_pretrained_decoder_mode_decodes_through_the_pretraining_projection(tmp_path, raw_params, task):
    from transformers import RobertaForMaskedLM

    from telly.finetuning.data import Tokens, load_examples
    from telly.models.loading import load_tokenizer

    params, _ = make_setup(tmp_path, raw_params, beam_size=1, max_source_length=16, max_target_length=6)
    path = B.run(params, task, tmp_path / "baselines")
    other = json.loads((tmp_path / "baselines" / f"{task}.pretrained.json").read_text())
    rows = read_jsonl(E.examples_path(tmp_path / "baselines" / f"{task}.pretrained.json"))
    assert other["applies"] is True and "greedy" in other["method"] and "without fine-tuning" in other["method"]
    assert all(math.isfinite(v) for v in other["test"].values())
    assert [r["id"] for r in rows] == [r["id"] for r in read_jsonl(E.examples_path(path))]
    settings = params.finetune
    tokenizer = load_tokenizer(params.finetune_model)
    tok = Tokens.of(tokenizer)
    examples = load_examples(settings.tasks_dir, task, "test", 8, settings.data_seed, tokenizer, tok, 16, 6)
    model = RobertaForMaskedLM.from_pretrained(params.finetune_model, use_safetensors=True).eval()
    assert [r["hyp"] for r in rows] == [_greedy_by_hand(model, tokenizer, tok, ex, 6) for ex in examples]
    # the masked-LM head decodes other texts here, so the check above tells the two projections apart
    assert [r["hyp"] for r in rows] != [_greedy_by_hand(model, tokenizer, tok, ex, 6, True) for ex in examples]


def test_pretrained_baseline_does_not_apply_without_a_decoder_mode(tmp_path, raw_params):
    from telly.config import parse_params
    from telly.finetuning.data import Tokens
    from telly.models.loading import load_tokenizer

    params, raw = make_setup(tmp_path, raw_params)
    raw["finetune"]["model"] = f"random:{params.finetune.model}"
    B.run(parse_params(raw), "code_summarization", tmp_path / "baselines")
    other = json.loads((tmp_path / "baselines" / "code_summarization.pretrained.json").read_text())
    assert other["applies"] is False and "random weights" in other["method"] and "test" not in other
    assert read_jsonl(E.examples_path(tmp_path / "baselines" / "code_summarization.pretrained.json")) == []
    plain = Tokens(bos=0, eos=2, pad=1, modes={})  # a plain encoder's tokenizer: no mode tokens
    assert "<encoder-decoder>, <decoder-only>, <mask0>" in B.decoder_mode_missing("some/encoder", plain)
    assert B.decoder_mode_missing(params.finetune.model, Tokens.of(load_tokenizer(params.finetune.model))) is None


def test_truncated_share_counts_the_rows_the_models_input_cuts(tmp_path, raw_params):
    params, _ = make_setup(tmp_path, raw_params, max_source_length=9, max_target_length=5)
    long_code = "def f(a, b, c, d):\n    return a + b + c + d + a * b * c * d"
    short = {"id": "s", "source": "x", "target": "y"}
    longer = {"id": "l", "source": long_code, "target": "return a + b + c + d + a * b * c * d"}
    for task in ("code_summarization", "line_completion"):
        shares = B.truncated_shares(params, task, {"test": [short, longer], "valid": [short]}, None)
        assert shares == {"test": {"source": 0.5, "target": 0.5}, "valid": {"source": 0.0, "target": 0.0}}
    rows = [{"id": "s", "query": "x", "code": "x"}, {"id": "l", "query": "x", "code": long_code}]
    shares = B.truncated_shares(params, "code_search", {"test": rows}, rows + rows[:1])
    assert shares == {"test": {"query": 0.0, "code": 0.5}, "codebase": {"code": pytest.approx(1 / 3)}}
    result = json.loads(B.run(params, "code_search", tmp_path / "baselines").read_text())
    assert set(result["truncated"]) == {"train", "valid", "test"} and result["truncated"]["test"]["code"] > 0
