"""Layer-wise representations: all L + 1 hidden states, pooled and token level, on disk.

For every input the encoder's L + 1 hidden states (index 0 = embeddings, i = output of
layer i) are reduced three ways and stored as float16 ``.npy`` files that are
memory-mapped on read:

- ``mean``: masked mean over the real tokens (special tokens included, padding not);
- ``first``: the first token (``<s>`` / ``[CLS]``);
- ``mean_unmasked``: the paper's RSA pooling (telly-paper.md section 2.1): every input is
  padded to ``max_length`` and the mean runs over *all* positions, padding included.
  Asking for it pads every batch to ``max_length``; the other poolings do not change.

Token-level states are kept for the first ``token_examples`` inputs only (they are
``L + 1`` times larger than the text itself), with each token's character span so that
probes can align them with the code.

Batches are sorted by length (longest first) to cut padding; results land at their
input's row, so the files are in input order.

Folder layout (``data/representations/<model_tag>/<dataset>/``)::

    meta.json            model, layers, hidden size, kinds, max length, counts
    ids.json             row ids, in input order
    pooled-<kind>.npy    float16 [N, L + 1, H]
    tokens.npy           float16 [sum of T_i, L + 1, H] for the first token_examples rows
    token_index.npy      int64 [token_examples + 1]: row i is tokens[index[i]:index[i + 1]]
    token_ids.npy        int32 [sum of T_i]
    token_spans.npy      int32 [sum of T_i, 2]: character span in the text, (0, 0) for specials
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from telly.errors import TellyError
from telly.files import atomic_dir
from telly.models.loading import Encoder, Mode, pad, tokenize

log = logging.getLogger(__name__)

KINDS = ("mean", "first", "mean_unmasked")


def extract(
    encoder: Encoder,
    texts: Sequence[str],
    ids: Sequence[str],
    out_dir: str | Path,
    *,
    kinds: Sequence[str] = KINDS,
    batch_size: int = 32,
    max_length: int | None = None,
    mode: Mode = "encoder-only",
    token_examples: int = 0,
    bf16: bool = False,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> Representations:
    """Run ``encoder`` over ``texts`` and write the folder atomically; return it opened."""

    _check_inputs(texts, ids, kinds)
    limit = min(max_length or encoder.max_length, encoder.max_length)
    tokenized = tokenize(encoder, list(texts), mode=mode, max_length=limit)
    lengths = np.array([len(r) for r in tokenized.input_ids])
    fixed = limit if "mean_unmasked" in kinds else None  # the paper's pooling: every input padded alike
    token_rows = min(token_examples, len(texts))

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        seen, elapsed = _run_and_store(
            encoder, tokenized, lengths, tmp, kinds, batch_size, fixed, token_rows, bf16, f"extract {out_dir}", progress
        )
        info = {
            **(meta or {}),
            "name_or_path": encoder.name_or_path,
            "num_layers": encoder.num_layers,
            "hidden_size": encoder.hidden_size,
            "n": len(texts),
            "kinds": list(kinds),
            "max_length": limit,
            "padded_to": fixed,
            "mode": mode,
            "mode_tokens": bool(encoder.mode_tokens),
            "token_examples": token_rows,
            "n_truncated": tokenized.n_truncated,
            "tokens": int(lengths.sum()),
            "dtype": "float16",
        }
        (tmp / "ids.json").write_text(json.dumps(list(ids), ensure_ascii=False), encoding="utf-8")
        (tmp / "meta.json").write_text(
            json.dumps(info, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
        )
    log.info(
        "%s: %d inputs, %d real tokens in %.1f s (%.0f tokens/s), %d truncated",
        out_dir,
        len(texts),
        seen,
        elapsed,
        seen / max(elapsed, 1e-9),
        tokenized.n_truncated,
    )
    return Representations.open(out_dir)


def _check_inputs(texts: list[str], ids: list[str], kinds: tuple[str, ...] | list[str]) -> None:
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise TellyError(f"pooling kinds {list(kinds)!r}: each must be one of {', '.join(KINDS)}")
    if len(texts) != len(ids):
        raise TellyError(f"{len(texts)} texts but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise TellyError("row ids are not unique; representations are looked up by id")
    if not texts:
        raise TellyError("no inputs to extract representations from")


def _run_and_store(
    encoder, tokenized, lengths, folder, kinds, batch_size, fixed, token_rows, bf16, desc, progress
) -> tuple[int, float]:
    """Run the encoder over every input (longest first) and write the pooled (and token) states into
    memory-mapped arrays in ``folder``; return the real tokens seen and the seconds it took."""
    import torch
    from tqdm.auto import tqdm

    n, layers, hidden = len(lengths), encoder.num_layers + 1, encoder.hidden_size
    token_index = np.concatenate([[0], np.cumsum(lengths[:token_rows])]).astype(np.int64)
    pooled = {
        k: np.lib.format.open_memmap(folder / f"pooled-{k}.npy", mode="w+", dtype=np.float16, shape=(n, layers, hidden))
        for k in kinds
    }
    tokens = None
    if token_rows:
        tokens = np.lib.format.open_memmap(
            folder / "tokens.npy", mode="w+", dtype=np.float16, shape=(int(token_index[-1]), layers, hidden)
        )
    order = np.argsort(-lengths, kind="stable")  # longest first: the memory peak comes at once
    dev = encoder.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and dev.type == "cuda" else nullcontext()
    started, seen = time.perf_counter(), 0
    with torch.inference_mode(), autocast:
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not progress):
            rows = order[start : start + batch_size]
            batch = pad(encoder, [tokenized.input_ids[i] for i in rows], to_length=fixed)
            batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
            hidden_states = encoder.model(**batch).hidden_states
            _store(hidden_states, batch["attention_mask"], rows, pooled, tokens, token_index, token_rows)
            seen += int(batch["attention_mask"].sum())
    elapsed = time.perf_counter() - started
    for array in (*pooled.values(), *([tokens] if tokens is not None else [])):
        array.flush()
    if token_rows:
        flat_ids = [t for r in tokenized.input_ids[:token_rows] for t in r]
        flat_spans = [s for r in tokenized.offsets[:token_rows] for s in r]
        np.save(folder / "token_index.npy", token_index)
        np.save(folder / "token_ids.npy", np.asarray(flat_ids, dtype=np.int32))
        np.save(folder / "token_spans.npy", np.asarray(flat_spans, dtype=np.int32).reshape(-1, 2))
    return seen, elapsed


def _store(hidden_states, mask, rows, pooled, tokens, token_index, token_rows) -> None:
    """Pool one batch's hidden states and copy them into the memory-mapped arrays."""
    import torch

    m = mask.to(hidden_states[0].dtype)
    counts = m.sum(1, keepdim=True)
    per_kind: dict[str, list[Any]] = {k: [] for k in pooled}
    for h in hidden_states:  # one layer at a time: no [B, T, L + 1, H] copy
        if "mean" in pooled:
            per_kind["mean"].append(torch.einsum("bt,bth->bh", m, h) / counts)
        if "first" in pooled:
            per_kind["first"].append(h[:, 0])
        if "mean_unmasked" in pooled:
            per_kind["mean_unmasked"].append(h.mean(1))
    order = np.argsort(rows)  # memmap fancy assignment wants increasing rows
    for kind, parts in per_kind.items():
        values = torch.stack(parts, 1).to(torch.float16).cpu().numpy()
        pooled[kind][rows[order]] = values[order]
    if tokens is None:
        return
    wanted = [j for j, r in enumerate(rows) if r < token_rows]
    if wanted:
        stacked = torch.stack(hidden_states, 2)[wanted].to(torch.float16).cpu().numpy()  # [b, T, L+1, H]
        for j, row_states in zip(wanted, stacked):
            r = rows[j]
            a, b = token_index[r], token_index[r + 1]
            tokens[a:b] = row_states[: b - a]


class Representations:
    """A representations folder, memory-mapped: nothing is read until it is sliced."""

    def __init__(self, folder: Path, meta: dict[str, Any], ids: list[str]) -> None:
        self.folder = folder
        self.meta = meta
        self.ids = ids
        self.num_layers: int = meta["num_layers"]  # L; arrays hold L + 1 hidden states
        self.hidden_size: int = meta["hidden_size"]
        self.kinds: list[str] = meta["kinds"]
        self._index: np.ndarray | None = None

    @classmethod
    def open(cls, folder: str | Path) -> Representations:
        folder = Path(folder)
        meta_file = folder / "meta.json"
        if not meta_file.exists():
            raise TellyError(
                f"{folder}: no representations here (no meta.json); write them with `telly extract` "
                "(or `dvc repro extract`)"
            )
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
        return cls(folder, meta, ids)

    def __len__(self) -> int:
        return len(self.ids)

    def pooled(self, kind: str = "mean") -> np.ndarray:
        """float16 ``[N, L + 1, H]`` (memory-mapped; ``np.asarray(x, np.float32)`` to compute)."""
        if kind not in self.kinds:
            raise TellyError(f"{self.folder}: pooling {kind!r} was not extracted; available: {', '.join(self.kinds)}")
        return np.load(self.folder / f"pooled-{kind}.npy", mmap_mode="r")

    @property
    def token_examples(self) -> int:
        return int(self.meta.get("token_examples", 0))

    def _token_slice(self, i: int) -> slice:
        if not 0 <= i < self.token_examples:
            raise TellyError(
                f"{self.folder}: token-level states exist for rows 0..{self.token_examples - 1} only "
                f"(asked for row {i}; raise token_examples in the extract settings)"
            )
        if self._index is None:
            self._index = np.load(self.folder / "token_index.npy")
        return slice(int(self._index[i]), int(self._index[i + 1]))

    def tokens(self, i: int) -> np.ndarray:
        """float16 ``[T_i, L + 1, H]`` for row ``i`` (special tokens included, no padding)."""
        return np.load(self.folder / "tokens.npy", mmap_mode="r")[self._token_slice(i)]

    def token_ids(self, i: int) -> np.ndarray:
        return np.load(self.folder / "token_ids.npy", mmap_mode="r")[self._token_slice(i)]

    def token_spans(self, i: int) -> np.ndarray:
        """int32 ``[T_i, 2]`` character spans into row ``i``'s text; ``(0, 0)`` for specials."""
        return np.load(self.folder / "token_spans.npy", mmap_mode="r")[self._token_slice(i)]
