"""A byte-level BPE tokenizer for code, with RoBERTa's and UniXcoder's special tokens.

Byte-level BPE (as RoBERTa, CodeBERT and UniXcoder use) never meets an unknown
character and keeps whitespace, so indentation survives tokenisation. The UniXcoder
mode tokens are added as special tokens so that downstream code builds the same
``[<s>, <encoder-only>, </s>] + code + [</s>]`` inputs as with UniXcoder itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from telly.models.loading import MODE_TOKENS

ROBERTA_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, pad id 1 as in RoBERTa


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2, max_length: int = 512) -> Any:
    """Train on ``texts`` and wrap as a fast ``RobertaTokenizer`` (``save_pretrained``-able)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*ROBERTA_SPECIALS, *MODE_TOKENS],
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
        additional_special_tokens=list(MODE_TOKENS),
        model_max_length=max_length,
    )
    return tokenizer
