"""Probing sets as cached hidden states: extract once per model state, then only read.

For each (model state, property) the probing rows are run through the frozen encoder
once with :func:`telly.models.extraction.extract`, into
``data/representations/<model_tag>/probing-<property>-<split>[-ast]/``. A fingerprint
of the model weights, the rows and the settings is kept in the folder's meta, so a
rerun reuses what is still valid and an interrupted run resumes at the next folder.

Then each property becomes arrays ``[N, L+1, H]``:

- lexical: one row per source token, the hidden states of its **last** subword
  (the paper's alignment, :func:`telly.data.analysis.align_labels`);
- structural and semantic: the pooled function (masked mean by default);
- syntactic: the pooled code and the pooled AST-only sequence of each pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telly.errors import TellyError
from telly.fingerprint import model_fingerprint
from telly.jsonl import read_jsonl
from telly.probing.properties import PROPERTIES

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
LEXICAL_LABELS = {"<pad>": 0, "KEYWORD": 1, "NAME": 2, "NUMBER": 3, "STRING": 4, "OPERATOR": 5}  # the paper's vocab


@dataclass(frozen=True)
class ModelState:
    """A model state of the study: its name, its representations tag and how to load it."""

    name: str  # random | pretrained | finetuned
    tag: str  # folder under data/representations
    source: str  # load_encoder's name_or_path
    like: str  # architecture of the random model


def read_rows(probing_dir: Path, prop: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    path = Path(probing_dir) / prop / f"{split}.jsonl"
    if not path.exists():
        raise TellyError(f"{path}: probing set not found (run `dvc repro tasks` first)")
    rows = read_jsonl(path, required=PROPERTIES[prop].fields)
    return rows[:limit] if limit else rows


def ast_text(row: dict[str, Any]) -> str:
    """The AST-only sequence as text, as the paper feeds it (tokens joined by spaces, lower-cased)."""
    value = row["ast_only"]
    return (" ".join(value) if isinstance(value, list) else str(value)).lower()


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _cached(folder: Path, fingerprint: str):
    from telly.models.extraction import Representations

    meta = folder / "meta.json"
    if meta.exists() and json.loads(meta.read_text(encoding="utf-8")).get("probe_fingerprint") == fingerprint:
        return Representations.open(folder)
    return None


class FeatureBuilder:
    """Extracts (or reuses) the representations of one property's splits for one model state."""

    def __init__(self, state: ModelState, reps_dir: Path, *, max_length: int, batch_size: int, seed: int) -> None:
        self.state, self.reps_dir = state, Path(reps_dir)
        self.max_length, self.batch_size, self.seed = max_length, batch_size, seed
        self._encoder = None
        self._model_fp: str | None = None

    def encoder(self):
        if self._encoder is None:
            from telly.models.loading import load_encoder

            self._encoder = load_encoder(self.state.source, like=self.state.like, seed=self.seed)
        return self._encoder

    def model_fp(self) -> str:
        if self._model_fp is None:
            self._model_fp = model_fingerprint(
                self.state.source if self.state.source != "random" else f"random:{self.state.like}"
            )
        return self._model_fp

    def representations(
        self, prop: str, split: str, texts: list[str], ids: list[str], *, side: str = "", tokens: bool = False
    ):
        from telly.models.extraction import extract

        name = f"{split}-{side}" if side else split
        folder = self.reps_dir / self.state.tag / f"probing-{prop}-{name}"
        fingerprint = _digest(self.model_fp(), texts, ids, self.max_length, tokens, self.seed)
        reps = _cached(folder, fingerprint)
        if reps is not None:
            log.info("%s: cached representations reused", folder)
            return reps
        return extract(
            self.encoder(),
            texts,
            ids,
            folder,
            kinds=("mean", "first"),
            batch_size=self.batch_size,
            max_length=self.max_length,
            token_examples=len(texts) if tokens else 0,
            meta={"probe_fingerprint": fingerprint, "model_state": self.state.name},
        )


def lexical_arrays(rows: list[dict[str, Any]], reps) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Token rows: hidden states of each source token's last subword, its label and its string."""
    from telly.data.analysis import align_labels

    feats, labels, strings = [], [], []
    for i, row in enumerate(rows):
        spans = sorted((int(a), int(b), t) for a, b, t in row["tokens"])
        unknown = {t for _, _, t in spans} - set(LEXICAL_LABELS)
        if unknown:
            raise TellyError(
                f"lexical row {row['id']!r}: unknown token type(s) {sorted(unknown)}; "
                f"expected {sorted(set(LEXICAL_LABELS) - {'<pad>'})}"
            )
        # align token *indices*, so each labelled subword also tells which token (string) it ends
        ends = align_labels(reps.token_spans(i).tolist(), [(a, b, k) for k, (a, b, _) in enumerate(spans)])
        positions = [p for p, k in enumerate(ends) if k is not None]
        if not positions:
            continue
        feats.append(np.asarray(reps.tokens(i))[positions])
        for p in positions:
            a, b, token_type = spans[ends[p]]
            labels.append(LEXICAL_LABELS[token_type])
            strings.append(row["code"][a:b])  # the control task's word type
    if not feats:
        raise TellyError("lexical probing set: no token could be aligned to a subword")
    return np.concatenate(feats), np.asarray(labels, dtype=np.int64), strings
