"""Fine-tuning variants: the one place that reads and writes their names.

A variant says what of the encoder trains:

- ``base``: everything (the paper's full fine-tuning);
- ``telly-<K>``: the embeddings and the bottom K layers frozen, K = 0..L-1 (the paper's Telly-K);
- parameter-efficient methods (beyond the paper; applied by :mod:`telly.models.peft_methods`):
  ``lora-r<r>`` (LoRA of rank r on attention query/value), ``lora-all-r<r>`` (LoRA on every
  linear layer of the transformer layers), ``ia3`` ((IA)3), ``bitfit`` (biases only);
- ``telly-<K>+<method>``: Telly-K (embeddings and layers 0..K-1 frozen and cached) with the
  method on layers K..L-1 only, e.g. ``telly-3+lora-r8``.

Every stage (params validation, the finetune runs and tables, tuning, the report) goes
through :func:`parse`, :func:`name`, :func:`label` and :func:`sort_key`; nothing else splits a
variant name. A new kind of variant (e.g. a PEFT method) is one more branch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from telly.errors import TellyError

BASE = "base"
_TELLY = re.compile(r"telly-(0|[1-9][0-9]*)")
_SEEDED = re.compile(r"(?P<variant>.+)-seed(?P<seed>[0-9]+)")
# registry: the PEFT families (their application lives in telly.models.peft_methods.METHODS, same keys)
PEFT_FAMILIES = ("lora", "lora-all", "ia3", "bitfit")
_PEFT = re.compile(r"(lora|lora-all)-r([1-9][0-9]*)|(ia3|bitfit)")
_FAMILY_LABELS = {"lora": "LoRA", "lora-all": "LoRA-all", "ia3": "(IA)3", "bitfit": "BitFit"}


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``k`` is None for Base, else the number of frozen layers; ``method`` is the PEFT
    family (None for Base and Telly-K) and ``rank`` its LoRA rank (None for rank-free families). Seeds are not
    part of a variant: each (task, variant, seed) is a run (``finetune.seeds``; model tags: :func:`split_seed`)."""

    name: str
    k: int | None
    method: str | None = None
    rank: int | None = None

    @property
    def is_base(self) -> bool:
        """Full fine-tuning: nothing frozen, no method."""
        return self.k is None and self.method is None

    @property
    def method_name(self) -> str | None:
        """The method part of the name: ``lora-r8``, ``bitfit``, ... (None without a method)."""
        if self.method is None:
            return None
        return f"{self.method}-r{self.rank}" if self.rank is not None else self.method


def parse(variant: str, num_layers: int | None = None) -> Variant:
    """``base`` -> Variant(k=None), ``telly-K`` -> Variant(k=K), ``lora-r8`` -> Variant(k=None, method="lora",
    rank=8), ``telly-3+ia3`` -> Variant(k=3, method="ia3"); with ``num_layers`` also checks 0 <= K < L."""
    if variant == BASE:
        return Variant(variant, None)
    frozen, plus, method_part = variant.partition("+")
    if not plus and (peft := _PEFT.fullmatch(variant)):
        return Variant(variant, None, *_method(peft))
    match = _TELLY.fullmatch(frozen)
    peft = _PEFT.fullmatch(method_part) if plus else None
    if not match or (plus and not peft):
        hint = " (seeds are finetune.seeds, not variants)" if _SEEDED.fullmatch(variant) else ""
        raise TellyError(
            f"variant {variant!r}: expected 'base', 'telly-<K>' (K = 0, 1, ...), a method "
            f"('lora-r<r>', 'lora-all-r<r>', 'ia3', 'bitfit') or 'telly-<K>+<method>'{hint}"
        )
    k = int(match.group(1))
    if num_layers is not None and k >= num_layers:
        raise TellyError(
            f"variant {variant!r}: K = {k} but the model has {num_layers} layers; "
            f"Telly-K needs 0 <= K <= {num_layers - 1}"
        )
    return Variant(variant, k, *_method(peft)) if peft else Variant(variant, k)


def _method(match: re.Match) -> tuple[str, int | None]:
    ranked, rank, plain = match.groups()
    return (ranked, int(rank)) if ranked else (plain, None)


def k_of(variant: str, num_layers: int | None = None) -> int | None:
    """The frozen-and-cached depth of a variant name: None for Base and the methods on their own."""
    return parse(variant, num_layers).k


def split_seed(text: str) -> tuple[str, int | None]:
    """``base-seed1`` -> (``base``, 1); ``telly-3`` -> (``telly-3``, None): the seed suffix of a model tag's variant."""
    match = _SEEDED.fullmatch(text)
    if match:
        try:
            parse(match["variant"])
        except TellyError:
            return text, None
        return match["variant"], int(match["seed"])
    return text, None


@dataclass(frozen=True)
class ModelTag:
    """A parsed model tag (the folder name of a model's representations): ``pretrained``, ``random`` or
    ``finetuned-<task>-<variant>[-seed<S>]`` (``seed`` None: the run of the first of ``finetune.seeds``)."""

    kind: str  # pretrained | random | finetuned
    task: str | None = None
    variant: str | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.kind != "finetuned" else model_tag(self.task, self.variant, self.seed)


_FINETUNED = re.compile(r"finetuned-(?P<task>[a-z][a-z0-9_]*)-(?P<variant>.+)")
UNTRAINED_TAGS = ("pretrained", "random")


def model_tag(task: str, variant: str, seed: int | None = None) -> str:
    """``finetuned-<task>-<variant>``, with ``-seed<S>`` when ``seed`` is given: the inverse of :func:`parse_tag`."""
    return f"finetuned-{task}-{variant}" + ("" if seed is None else f"-seed{seed}")


def parse_tag(tag: str) -> ModelTag:
    """``pretrained`` / ``random`` / ``finetuned-<task>-<variant>[-seed<S>]`` -> :class:`ModelTag`; anything else
    is a clear error."""
    if tag in UNTRAINED_TAGS:
        return ModelTag(tag)
    found = _FINETUNED.fullmatch(tag)
    if found:
        variant, seed = split_seed(found["variant"])
        try:
            parse(variant)
        except TellyError as err:
            raise TellyError(f"model tag {tag!r}: {err}") from None
        return ModelTag("finetuned", found["task"], variant, seed)
    raise TellyError(f"model tag {tag!r}: expected pretrained, random or finetuned-<task>-<variant>[-seed<S>]")


def is_model_tag(tag: str) -> bool:
    try:
        parse_tag(tag)
    except TellyError:
        return False
    return True


def run_dir(root: str | Path, task: str, variant: str, seed: int) -> Path:
    """``<root>/<task>/<variant>/seed<S>``: the folder of one run's model (and its results' stem)."""
    return Path(root) / task / variant / f"seed{seed}"


def name(k: int | None, method: str | None = None) -> str:
    """The inverse of :func:`parse`: None -> ``base``, K -> ``telly-K``; with a method part
    (``lora-r8``): None -> ``lora-r8``, K -> ``telly-K+lora-r8``."""
    if method is None:
        return BASE if k is None else f"telly-{k}"
    return method if k is None else f"telly-{k}+{method}"


def label(variant: str) -> str:
    """How tables and figures print a variant: ``Base``, ``Telly-3``, ``LoRA r=8``,
    ``Telly-3 + LoRA r=8``, ``BitFit``."""
    v = parse(variant)
    if v.method is None:
        return "Base" if v.k is None else f"Telly-{v.k}"
    method = _FAMILY_LABELS[v.method] + (f" r={v.rank}" if v.rank is not None else "")
    return method if v.k is None else f"Telly-{v.k} + {method}"


def sort_key(variant: str) -> tuple[int, int, int, int]:
    """Base first, then Telly-K by K, then the methods (by family, rank),
    then the combinations (by family, rank, K)."""
    v = parse(variant)
    if v.method is not None:
        family = PEFT_FAMILIES.index(v.method)
        rank = -1 if v.rank is None else v.rank
        return (2, family, rank, -1) if v.k is None else (3, family, rank, v.k)
    if v.k is None:
        return (0, 0, 0, 0)
    return (1, v.k, 0, 0)


def family(variant: str) -> str:
    """The method family a variant belongs to, for figures and tags: ``base``, ``telly``, ``lora``,
    ``telly+lora``, ..."""
    v = parse(variant)
    if v.method is None:
        return BASE if v.k is None else "telly"
    return v.method if v.k is None else f"telly+{v.method}"


def all_for_depth(num_layers: int) -> list[str]:
    """Base and every Telly-K a model of ``num_layers`` layers has (K = 0..L-1)."""
    return [BASE, *(name(k) for k in range(num_layers))]


def check_names(variants: list[str]) -> list[str]:
    """Names that parse and do not repeat (params validation: the depth is checked when a run loads the model)."""
    for v in variants:
        parse(v)
    if len(set(variants)) != len(variants):
        raise TellyError(f"variants repeat: {variants}")
    return variants
