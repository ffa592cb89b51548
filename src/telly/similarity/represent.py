"""The paper's RSA inputs, and one model's representations of them.

Inputs (R:RSA/run.py): the first N functions of the training split, in file order,
code only (``code_tokens`` joined by spaces), every input padded to one fixed
length. The same inputs serve every model, whatever task it was fine-tuned on.
Extraction and model tags are the models package's (``extraction.extract``,
``extract_stage.resolve_model``); this module only chooses the inputs and the folder.

Model tags (docs/architecture.md): ``pretrained`` (``model.name_or_path``),
``random`` (its architecture, freshly initialised) and ``finetuned-<task>-<variant>``
(``models/finetuned/<task>/<variant>/``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from telly import variants
from telly.config import Params, SimilarityParams
from telly.errors import TellyError
from telly.jsonl import iter_jsonl

log = logging.getLogger(__name__)

POOLINGS = ("mean_unmasked", "mean")  # the paper's, and the real-token mean to compare


def section(params: Params) -> SimilarityParams:
    if params.similarity is None:
        raise TellyError("params.yaml: section 'similarity' is missing (see docs/similarity.md for its keys)")
    return params.similarity


def folder(sp: SimilarityParams, tag: str) -> Path:
    """One model's RSA inputs: every tag of a dataset under one folder, the similarity stage's one dependency."""
    return Path(sp.representations_dir) / sp.dataset / tag


def rsa_inputs(params: Params) -> tuple[list[str], list[str]]:
    """Texts and ids of the first ``num_samples`` training functions."""
    n = section(params).num_samples
    path = Path(params.data.corpus_dir) / params.prepare.language / "train.jsonl"
    texts, ids = [], []
    for row in iter_jsonl(path, required=("id", "code_tokens")):
        texts.append(" ".join(row["code_tokens"]))
        ids.append(row["id"])
        if len(ids) == n:
            break
    if len(ids) < n:
        raise TellyError(f"{path}: {len(ids)} functions, but similarity.num_samples = {n}; lower it")
    return texts, ids


def represent(params: Params, tag: str) -> Path:
    """Extract ``tag``'s unmasked-mean representations of the RSA inputs; return the folder."""
    from telly.models.extract_stage import resolve_model
    from telly.models.extraction import extract
    from telly.models.loading import load_encoder
    from telly.runtime import device

    sp = section(params)
    kind = variants.parse_tag(tag).kind
    _, source = resolve_model(params, tag)
    if kind == "finetuned" and not Path(source).exists():
        raise TellyError(
            f"{source}: no fine-tuned checkpoint for model tag {tag!r}; run `dvc repro finetune` "
            f"(the finetune stage writes <finetune.output_dir>/<task>/<variant>/seed<S>/)"
        )
    texts, ids = rsa_inputs(params)
    encoder = load_encoder(source, device=device(params.model.device), seed=params.model.seed)
    if encoder.max_length < sp.max_length:
        log.warning(
            "%s embeds at most %d positions: inputs are padded to %d, not similarity.max_length = %d",
            tag,
            encoder.max_length,
            encoder.max_length,
            sp.max_length,
        )
    out = folder(sp, tag)
    extract(
        encoder,
        texts,
        ids,
        out,
        kinds=POOLINGS,
        batch_size=sp.batch_size,
        max_length=sp.max_length,
        bf16=params.model.bf16,
        meta={"model": tag, "dataset": sp.dataset, "input": "code_tokens joined by spaces"},
    )
    return out
