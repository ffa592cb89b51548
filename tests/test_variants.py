"""Model tags and variant labels: the one grammar in telly.variants."""

from __future__ import annotations

import pytest

from telly import variants
from telly.errors import TellyError


@pytest.mark.parametrize(
    "tag, kind, task, variant, seed",
    [
        ("pretrained", "pretrained", None, None, None),
        ("random", "random", None, None, None),
        ("finetuned-code_search-base", "finetuned", "code_search", "base", None),
        ("finetuned-line_completion-telly-3+lora-r8", "finetuned", "line_completion", "telly-3+lora-r8", None),
        ("finetuned-clone_detection-telly-2-seed123456", "finetuned", "clone_detection", "telly-2", 123456),
    ],
)
def test_parse_tag_round_trips(tag, kind, task, variant, seed):
    parsed = variants.parse_tag(tag)
    assert (parsed.kind, parsed.task, parsed.variant, parsed.seed) == (kind, task, variant, seed)
    assert parsed.name == tag
    if kind == "finetuned":
        assert variants.model_tag(task, variant, seed) == tag


@pytest.mark.parametrize("tag", ["finetuned-code_search-telly-x", "finetuned-", "pretrained-2", "models/foo"])
def test_a_bad_tag_is_a_clear_error(tag):
    with pytest.raises(TellyError, match="model tag"):
        variants.parse_tag(tag)
    assert not variants.is_model_tag(tag)


def test_labels_of_every_kind_of_variant():
    assert [variants.label(v) for v in ("base", "telly-3", "lora-r8", "telly-3+lora-r8", "bitfit")] == [
        "Base",
        "Telly-3",
        "LoRA r=8",
        "Telly-3 + LoRA r=8",
        "BitFit",
    ]


def test_resolve_model_uses_the_first_seed_without_a_suffix(raw_params):
    from telly.config import parse_params
    from telly.models.extract_stage import resolve_model

    params = parse_params(raw_params)
    first = params.finetune.first_seed
    assert resolve_model(params, "finetuned-code_search-base")[1].endswith(f"code_search/base/seed{first}")
    assert resolve_model(params, "finetuned-code_search-base-seed2")[1].endswith("code_search/base/seed2")
