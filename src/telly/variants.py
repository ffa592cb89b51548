"""Fine-tuning variants: the one place that reads and writes their names.

A variant says what of the encoder trains:

- ``base``: everything (the paper's full fine-tuning);
- ``telly-<K>``: the embeddings and the bottom K layers frozen, K = 0..L-1 (the paper's Telly-K).

Seeds are not part of a variant: each (task, variant, seed) is a run of its own
(``finetune.seeds``, docs/finetuning.md). Where one model must be named, a model tag
``finetuned-<task>-<variant>`` means the first seed's run and ``finetuned-<task>-<variant>-seed<S>``
seed S's (:func:`split_seed`): the RQ2 noise baseline compares ``base`` with ``base-seed<S>``.

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


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``k`` is None for Base, else the number of frozen layers."""

    name: str
    k: int | None

    @property
    def is_base(self) -> bool:
        return self.k is None


def parse(variant: str, num_layers: int | None = None) -> Variant:
    """``base`` -> Variant(k=None), ``telly-K`` -> Variant(k=K); with ``num_layers`` also checks 0 <= K < L."""
    if variant == BASE:
        return Variant(variant, None)
    match = _TELLY.fullmatch(variant)
    if not match:
        hint = " (seeds are finetune.seeds, not variants)" if _SEEDED.fullmatch(variant) else ""
        raise TellyError(f"variant {variant!r}: expected 'base' or 'telly-<K>' (K = 0, 1, ...){hint}")
    k = int(match.group(1))
    if num_layers is not None and k >= num_layers:
        raise TellyError(
            f"variant {variant!r}: K = {k} but the model has {num_layers} layers; "
            f"Telly-K needs 0 <= K <= {num_layers - 1}"
        )
    return Variant(variant, k)


def k_of(variant: str, num_layers: int | None = None) -> int | None:
    """The frozen depth of a variant name: None for Base."""
    return parse(variant, num_layers).k


def split_seed(text: str) -> tuple[str, int | None]:
    """``base-seed1`` -> (``base``, 1); ``telly-3`` -> (``telly-3``, None): the seed suffix of a model tag's variant."""
    match = _SEEDED.fullmatch(text)
    if match and (match["variant"] == BASE or _TELLY.fullmatch(match["variant"])):
        return match["variant"], int(match["seed"])
    return text, None


def run_dir(root: str | Path, task: str, variant: str, seed: int) -> Path:
    """``<root>/<task>/<variant>/seed<S>``: the folder of one run's model (and its results' stem)."""
    return Path(root) / task / variant / f"seed{seed}"


def name(k: int | None) -> str:
    """The inverse of :func:`k_of`: None -> ``base``, K -> ``telly-K``."""
    return BASE if k is None else f"telly-{k}"


def label(variant: str) -> str:
    """How tables and figures print a variant: ``Base``, ``Telly-3``."""
    v = parse(variant)
    return "Base" if v.k is None else f"Telly-{v.k}"


def sort_key(variant: str) -> tuple[int, int]:
    """Base first, then Telly-K by K."""
    v = parse(variant)
    return (0, 0) if v.k is None else (1, v.k)


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
