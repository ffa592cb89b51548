"""Fine-tuning variants: the one place that reads and writes their names.

A variant says what of the encoder trains:

- ``base``: everything (the paper's full fine-tuning);
- ``telly-<K>``: the embeddings and the bottom K layers frozen, K = 0..L-1 (the paper's Telly-K);
- ``base-seed<S>``: Base with only the seed changed (the RQ2 noise baseline).

Every stage (params validation, the finetune runs and tables, tuning, the report) goes
through :func:`parse`, :func:`name`, :func:`label` and :func:`sort_key`; nothing else splits a
variant name. A new kind of variant (e.g. a PEFT method) is one more branch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telly.errors import TellyError

BASE = "base"
_TELLY = re.compile(r"telly-(0|[1-9][0-9]*)")
_BASE_SEED = re.compile(r"base-seed([0-9]+)")


@dataclass(frozen=True)
class Variant:
    """A parsed variant name: ``k`` is None for Base, else the number of frozen layers;
    ``seed`` is set only where the name fixes it (``base-seed<S>``)."""

    name: str
    k: int | None
    seed: int | None = None

    @property
    def is_base(self) -> bool:
        return self.k is None


def parse(variant: str, num_layers: int | None = None) -> Variant:
    """``base`` -> Variant(k=None), ``telly-K`` -> Variant(k=K); with ``num_layers`` also checks 0 <= K < L."""
    if variant == BASE:
        return Variant(variant, None)
    if seeded := _BASE_SEED.fullmatch(variant):
        return Variant(variant, None, int(seeded.group(1)))
    match = _TELLY.fullmatch(variant)
    if not match:
        raise TellyError(f"variant {variant!r}: expected 'base', 'base-seed<S>' or 'telly-<K>' (K = 0, 1, ...)")
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


def seed_of(variant: str, default: int) -> int:
    """The seed a run of ``variant`` uses: the one its name fixes, else ``default``."""
    seed = parse(variant).seed
    return default if seed is None else seed


def name(k: int | None) -> str:
    """The inverse of :func:`k_of`: None -> ``base``, K -> ``telly-K``."""
    return BASE if k is None else f"telly-{k}"


def label(variant: str) -> str:
    """How tables and figures print a variant: ``Base``, ``Telly-3``, ``Base (seed 2)``."""
    v = parse(variant)
    if v.seed is not None:
        return f"Base (seed {v.seed})"
    return "Base" if v.k is None else f"Telly-{v.k}"


def sort_key(variant: str) -> tuple[int, int]:
    """Base first (its seeded copies after it), then Telly-K by K."""
    v = parse(variant)
    if v.k is None:
        return (0, -1 if v.seed is None else v.seed)
    return (1, v.k)


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
