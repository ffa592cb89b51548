"""A byte-level BPE tokenizer for code, with RoBERTa's and UniXcoder's special tokens.

Byte-level BPE (as RoBERTa, CodeBERT and UniXcoder use) never meets an unknown
character and keeps whitespace, so indentation survives tokenisation. The UniXcoder
mode tokens are added as special tokens so that downstream code builds the same
``[<s>, <encoder-only>, </s>] + code + [</s>]`` inputs as with UniXcoder itself.

For UniXcoder's pre-training (``telly.models.pretrain``) the tokenizer also holds the span
sentinels ``<mask1>`` ... (``<mask0>`` is a mode token) and a pair of boundary tokens per
AST node type (``<block::left>``, ``<block::right>``, :func:`telly.data.analysis.ast_boundaries`),
all special tokens, so BPE never splits them and the masking collator never masks them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from telly.models.loading import MODE_TOKENS

ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, pad id 1 as in RoBERTa
SENTINELS = 16  # span-denoising sentinels <mask0> .. <mask15> (<mask0> is also UniXcoder's target start)


def sentinel_tokens() -> list[str]:
    return [f"<mask{i}>" for i in range(SENTINELS)]


def pretraining_specials(lang: str = "python") -> list[str]:
    """The sentinels after <mask0>, then both boundary tokens of every AST node type of ``lang``."""
    from telly.data.analysis import ast_boundaries, ast_node_types

    return sentinel_tokens()[1:] + [t for node_type in ast_node_types(lang) for t in ast_boundaries(node_type)]


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int,
    min_frequency: int = 2,
    max_length: int = 512,
    extra_specials: Sequence[str] = (),
) -> Any:
    """Train on ``texts`` and wrap as a fast ``RobertaTokenizer`` (``save_pretrained``-able);
    ``extra_specials`` (e.g. :func:`pretraining_specials`) come after the mode tokens."""
    specials = [*MODE_TOKENS, *extra_specials]
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*ROBERTA_SPECIALS, *specials],
        show_progress=False,
    )
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = RobertaTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        additional_special_tokens=specials,
        model_max_length=max_length,
    )
    return tokenizer
