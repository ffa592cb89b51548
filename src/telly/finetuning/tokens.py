"""Tokenize each task file once: an on-disk form that every run, variant and seed reuses.

Tokenizing row by row in every run is slow at the paper's scale (~400 pairs/s: 23 min per clone run at
BigCloneBench's size; docs/benchmarks.md). The first run that needs a (task file, tokenizer) pair writes

    <cache_dir>/tokens/<key>/  meta.json, pieces.npy (int32, every distinct text's ids, concatenated),
                               piece_offsets.npy, texts.bin + text_offsets.npy (the distinct texts, utf-8),
                               fields.npy ([rows, fields]: which distinct text each field is), labels.npy

with ``key`` a hash of the file's bytes, the tokenizer's full definition (``tokenizer.json``), the
clip limit and the format. Ids are stored without special tokens and not cut to the lengths, so every
length setting up to the clip limit reuses the same files (``data.example_from_pieces`` cuts them);
the tokenizer sees each text clipped to a character bound (``data.clip_text``: memory per row stays
bounded whatever a row holds). Identical texts (clone pairs reuse functions) are tokenized and stored
once. Later runs memory-map the arrays and touch only the sampled rows. Writing goes to
``<key>.tmp-<pid>`` and is renamed into place (concurrent runs: the first wins). ``meta.json`` records
each file's size and CRC-32; a store that does not match is rebuilt with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import zlib
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from telly.jsonl import read_jsonl

log = logging.getLogger(__name__)

FORMAT = 2
CHUNK = 4096  # texts per call of the (batched, Rust) tokenizer


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer's whole definition (vocabulary, merges, normalizer, added tokens), hashed."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.blake2b(f"{type(tokenizer).__name__}|{text}".encode(), digest_size=16).hexdigest()


def _size_and_crc(path: Path) -> list[int]:
    size, crc = 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            size, crc = size + len(block), zlib.crc32(block, crc)
    return [size, crc]


class TokenizedSplit:
    """One task file, tokenized: row ``i``'s fields as token ids, its label and its texts."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        for name, expected in self.meta["files"].items():  # a short or damaged store is never read
            if (found := _size_and_crc(folder / name)) != expected:
                raise ValueError(f"{folder / name}: size and CRC-32 {found}, expected {expected}")
        self.fields = tuple(self.meta["fields"])
        self._piece_offsets = np.load(folder / "piece_offsets.npy", mmap_mode="r")
        self._pieces = np.load(folder / "pieces.npy", mmap_mode="r")
        self._text_offsets = np.load(folder / "text_offsets.npy", mmap_mode="r")
        self._rows = np.load(folder / "fields.npy", mmap_mode="r")
        labels = folder / "labels.npy"
        self.labels = np.load(labels, mmap_mode="r") if labels.exists() else None

    def __len__(self) -> int:
        return int(self.meta["rows"])

    @cached_property
    def _texts(self) -> np.memmap:
        return np.memmap(self.folder / "texts.bin", dtype=np.uint8, mode="r")

    def _text(self, t: int) -> str:
        if self._text_offsets[t] == self._text_offsets[t + 1]:
            return ""  # (and texts.bin may be empty: nothing to map)
        return bytes(self._texts[self._text_offsets[t] : self._text_offsets[t + 1]]).decode("utf-8")

    def pieces(self, i: int) -> dict[str, list[int]]:
        out = {}
        for f, t in zip(self.fields, self._rows[i]):
            out[f] = self._pieces[self._piece_offsets[t] : self._piece_offsets[t + 1]].tolist()
        return out

    def row(self, i: int) -> dict[str, Any]:
        """The fields an example needs besides token ids: the label, the target text (the reference)."""
        out: dict[str, Any] = {}
        if self.labels is not None:
            out["label"] = int(self.labels[i])
        if "target" in self.fields:
            out["target"] = self._text(int(self._rows[i][self.fields.index("target")]))
        return out


def tokenized_split(path: Path, task: str, tokenizer: Any, folder: Path, clip: int) -> TokenizedSplit:
    """The tokenized form of task file ``path``, each text clipped for ``clip`` tokens (``data.clip_text``):
    reused when it exists and passes its check, else built and published."""
    key = hashlib.blake2b(
        f"{FORMAT}|{task}|{file_digest(path)}|{tokenizer_digest(tokenizer)}|{clip}".encode(), digest_size=16
    ).hexdigest()
    final = folder / key
    if (final / "meta.json").exists():
        try:
            return TokenizedSplit(final)
        except (OSError, ValueError, KeyError, TypeError) as err:  # short, damaged, not JSON, fields missing
            log.warning("tokenized %s in %s is damaged (%s); tokenizing it again", path, final, err)
            aside = final.with_name(f"{key}.damaged-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):  # another process moved it first
                os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
    return _build(path, task, tokenizer, final, clip)


def _build(path: Path, task: str, tokenizer: Any, final: Path, clip: int) -> TokenizedSplit:
    from telly import tasks
    from telly.finetuning.data import clip_text

    key = final.name
    spec = tasks.get(task)
    fields = spec.text_fields
    rows = read_jsonl(path, required=spec.fields)
    index: dict[str, int] = {}
    table = np.empty((len(rows), len(fields)), dtype=np.int64)
    for i, r in enumerate(rows):
        for j, f in enumerate(fields):
            table[i, j] = index.setdefault(r[f], len(index))
    texts = list(index)
    log.info("tokenizing %s once: %d rows, %d distinct texts -> %s", path, len(rows), len(texts), final)
    ids: list[list[int]] = []
    for start in range(0, len(texts), CHUNK):
        chunk = [clip_text(t, clip) for t in texts[start : start + CHUNK]]
        ids += tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
    tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    np.save(tmp / "piece_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    np.save(tmp / "pieces.npy", np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum())))
    encoded = [t.encode("utf-8") for t in texts]
    np.save(tmp / "text_offsets.npy", np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64))
    (tmp / "texts.bin").write_bytes(b"".join(encoded))
    np.save(tmp / "fields.npy", table.astype(np.int32 if len(texts) < 2**31 else np.int64))
    if "label" in spec.fields:
        np.save(tmp / "labels.npy", np.array([int(r["label"]) for r in rows], dtype=np.int8))
    meta = {"format": FORMAT, "task": task, "source": str(path), "rows": len(rows), "texts": len(texts), "clip": clip}
    files = {f.name: _size_and_crc(f) for f in sorted(tmp.iterdir())}
    meta = {**meta, "fields": list(fields), "tokens": int(lengths.sum()), "files": files}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, final)
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenizedSplit(final)
