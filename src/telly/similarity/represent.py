"""The paper's RSA inputs, and one model's representations of them.

Inputs (R:RSA/run.py): the first N functions of the training split, in file order,
code only (``code_tokens`` joined by spaces), every input padded to one fixed
length. The same inputs serve every model, whatever task it was fine-tuned on.
Extraction itself is the models package's (``telly.models.extraction.extract``);
this module only chooses the inputs, the model and the folder.

Model tags (docs/architecture.md): ``pretrained`` (``model.name_or_path``),
``random`` (its architecture, freshly initialised) and ``finetuned-<task>-<variant>``
(``models/finetuned/<task>/<variant>/``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from telly.config import Params, SimilarityParams
from telly.errors import TellyError
from telly.jsonl import iter_jsonl

log = logging.getLogger(__name__)

REPRESENTATIONS = Path("data/representations")
FINETUNED = Path("models/finetuned")
POOLINGS = ("mean_unmasked", "mean")  # the paper's, and the real-token mean to compare


def section(params: Params) -> SimilarityParams:
    if params.similarity is None:
        raise TellyError("params.yaml: section 'similarity' is missing (see docs/similarity.md for its keys)")
    return params.similarity


def finetuned_tag(task: str, variant: str) -> str:
    return f"finetuned-{task}-{variant}"


def folder(tag: str, dataset: str) -> Path:
    return REPRESENTATIONS / tag / dataset


def pretrained_source(params: Params) -> str:
    from telly.models import DEFAULT_MODEL

    return str(getattr(params.model, "name_or_path", None) or DEFAULT_MODEL)


def model_source(params: Params, tag: str) -> str:
    """What ``load_encoder`` loads for a model tag."""
    if tag == "pretrained":
        return pretrained_source(params)
    if tag == "random":
        return "random"
    if tag.startswith("finetuned-") and tag.count("-") >= 2:
        task, variant = tag.removeprefix("finetuned-").split("-", 1)
        return str(FINETUNED / task / variant)
    raise TellyError(f"model tag {tag!r}: expected pretrained, random or finetuned-<task>-<variant>")


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
    from telly.models import load_encoder
    from telly.models.extraction import extract

    sp = section(params)
    source = model_source(params, tag)
    if tag.startswith("finetuned-") and not Path(source).exists():
        raise TellyError(
            f"{source}: no fine-tuned checkpoint for model tag {tag!r}; run `dvc repro finetune` "
            f"(the finetune stage writes models/finetuned/<task>/<variant>/)"
        )
    texts, ids = rsa_inputs(params)
    device = getattr(params.model, "device", "auto")
    encoder = load_encoder(
        source, like=pretrained_source(params), seed=getattr(params.model, "seed", sp.seed),
        device=None if device == "auto" else device,
    )
    if encoder.max_length < sp.max_length:
        log.warning(
            "%s embeds at most %d positions: inputs are padded to %d, not similarity.max_length = %d",
            tag, encoder.max_length, encoder.max_length, sp.max_length,
        )
    out = folder(tag, sp.dataset)
    extract(
        encoder, texts, ids, out, kinds=POOLINGS, batch_size=sp.batch_size, max_length=sp.max_length,
        meta={"model_tag": tag, "dataset": sp.dataset},
    )
    return out
