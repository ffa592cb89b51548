"""Frozen-prefix caching: run the frozen bottom of the encoder once per dataset.

With the embeddings and the bottom K layers frozen (Telly-K), hidden state K of
a fixed input never changes -- as long as the frozen part runs without dropout.
So we compute it once per dataset, keep it (one flat tensor plus offsets, like
the extracted representations), and each training step runs only layers K..L-1.
The backward pass never reached below layer K anyway; caching removes the
forward pass through the frozen layers as well, which is what dominates an
epoch of Telly-K with a large K.

At the paper's scale (251,820 code-search pairs at 256 + 128 tokens, 768 wide) an fp32
cache in RAM is ~300 GB, so the cache is a file (docs/paper-scale.md):

- stored in ``finetune.cache_dtype`` (bf16 / fp16 halve fp32; measured in docs/benchmarks.md),
- ragged: ``[total tokens, H]`` + offsets, no padding, preallocated from the known lengths and
  written batch by batch into a memory map (no second copy while building),
- identical sequences stored once (clone pairs reuse functions; query/code fields share a pool),
- under ``finetune.cache_dir/hidden/<key>``, the key a hash of the frozen weights, K, the dtype
  and the token ids themselves (so the task, split, field, lengths and tokenizer are all in it):
  every variant, seed and process with the same frozen prefix and inputs reuses it. A build
  writes ``<key>.tmp-<pid>-<n>`` and renames it into place; a process that loses the race keeps
  the winner's copy and drops its own.
- ``meta.json`` records the file's size and a CRC-32 per 64 MiB block (and of the offsets); a
  cache is checked against them when it is opened (one sequential read, about 3 GB/s), and a
  short or corrupted one is rebuilt with one warning naming the file, never trained on.
- Before building, the size is logged; above ``finetune.cache_budget_gb`` the run falls back
  to the uncached regime (the frozen layers run every step) with one warning.

The paper's regime (frozen layers still run every step in train mode, dropout on) is
``finetune.cache_frozen: false``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from telly.finetuning.data import Seq, collate
from telly.models.architectures import adapter_for

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the files' layout changes: old caches are then never read
BLOCK_BYTES = 64 << 20  # hidden.bin is checksummed per block of this size
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_tmp_counter = itertools.count()


def bottom(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Hidden state k: the embeddings followed by layers 0..k-1 (``mask``: the 4-D boolean mask)."""
    adapter = adapter_for(model)
    hidden = adapter.embed(model, ids, mask)
    return adapter.run_layers(model, hidden, mask, 0, k)


def top(model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The last hidden state from hidden state k: layers k..L-1 (a reduced-precision cache is cast up)."""
    adapter = adapter_for(model)
    dtype = adapter.word_embeddings(model).weight.dtype
    return adapter.run_layers(model, hidden.to(dtype), mask, k, None)


def unique_sequences(seqs: list[Seq]) -> tuple[list[Seq], np.ndarray]:
    """The distinct sequences (first-seen order) and, per input, the index of its distinct one."""
    index: dict[Seq, int] = {}
    rows = np.empty(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        rows[i] = index.setdefault(s, len(index))
    return list(index), rows


def frozen_fingerprint(model: torch.nn.Module, k: int) -> str:
    """Identity of what hidden state k depends on: the architecture and the frozen weights (the
    adapter's ``frozen_modules``, which Telly-K freezes), hashed."""
    adapter = adapter_for(model)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{type(model).__name__}|{adapter.family}|k={k}".encode())
    for module in adapter.frozen_modules(model, k):
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _sequences_digest(seqs: list[Seq]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for s in seqs:
        digest.update(np.asarray((s.prefix, len(s.ids), *s.ids), dtype=np.int64).tobytes())
    return digest.hexdigest()


class CacheDamaged(Exception):
    """A published cache whose files do not match its ``meta.json``: rebuilt, never read."""


def block_checksums(path: Path, block_bytes: int = BLOCK_BYTES) -> list[int]:
    """CRC-32 of each ``block_bytes`` block of ``path`` (the last may be shorter)."""
    out = []
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            out.append(zlib.crc32(block))
    return out


def check_files(folder: Path, meta: dict) -> None:
    """Raise :class:`CacheDamaged` unless ``folder``'s files have the size and checksums ``meta`` records."""
    hidden, offsets = folder / "hidden.bin", folder / "offsets.npy"
    for path in (hidden, offsets):
        if not path.exists():
            raise CacheDamaged(f"{path}: missing")
    if zlib.crc32(offsets.read_bytes()) != meta["offsets_crc32"]:
        raise CacheDamaged(f"{offsets}: checksum mismatch")
    size = hidden.stat().st_size
    if size != meta["bytes"]:
        raise CacheDamaged(f"{hidden}: {size} bytes, expected {meta['bytes']}")
    sums = block_checksums(hidden, meta["block_bytes"])
    if bad := [i for i, (a, b) in enumerate(zip(sums, meta["checksums"], strict=True)) if a != b]:
        start = bad[0] * meta["block_bytes"]
        raise CacheDamaged(f"{hidden}: checksum mismatch in {len(bad)} block(s), the first at byte {start}")


class HiddenCache:
    """Hidden state k of every sequence of a dataset, stored flat: ``[distinct tokens, H]`` + offsets;
    ``rows[i]`` is the distinct sequence that input ``i`` is (identical inputs share one copy)."""

    def __init__(self, flat: torch.Tensor, offsets, rows=None, folder: Path | None = None):
        self.flat = flat
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.rows = np.arange(len(self.offsets) - 1) if rows is None else np.asarray(rows, dtype=np.int64)
        self.folder = folder

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor:
        u = self.rows[i]
        return self.flat[self.offsets[u] : self.offsets[u + 1]]

    def view(self, rows: np.ndarray) -> HiddenCache:
        """The same storage seen through other row indices (one field of a shared pool)."""
        return HiddenCache(self.flat, self.offsets, rows, self.folder)

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    def to(self, device: torch.device | str) -> HiddenCache:
        return HiddenCache(self.flat.to(device), self.offsets, self.rows, self.folder)

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: torch.nn.Module,
        seqs: list[Seq],
        k: int,
        pad_id: int,
        batch_size: int,
        desc: str = "cache",
        *,
        dtype: torch.dtype = torch.float32,
        folder: Path | None = None,
    ) -> HiddenCache:
        """Run embeddings + layers 0..k-1 once over the distinct ``seqs`` in eval mode (no dropout),
        into a preallocated tensor: in memory, or memory-mapped at ``folder/hidden.bin`` when given."""
        unique, rows = unique_sequences(seqs)
        lengths = np.array([len(s.ids) for s in unique], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        hidden_size = adapter_for(model).hidden_size(model)
        total = int(offsets[-1]) * hidden_size
        if folder is None:
            flat = torch.empty(total, dtype=dtype)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "hidden.bin"
            with open(path, "wb") as fh:  # sparse: pages are written once, by the loop below
                fh.truncate(total * torch.empty(0, dtype=dtype).element_size())
            flat = torch.from_file(str(path), shared=True, size=total, dtype=dtype)
        flat = flat.view(-1, hidden_size)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        order = np.argsort(lengths, kind="stable")  # similar lengths, less padding
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[start : start + batch_size]
            batch = collate([unique[i] for i in idx], pad_id)
            hidden = bottom(model, batch["ids"].to(device), batch["mask"].to(device), k).to(dtype).cpu()
            for row, i in enumerate(idx):
                flat[offsets[i] : offsets[i + 1]] = hidden[row, : lengths[i]]
        model.train(was_training)
        if folder is not None:
            np.save(folder / "offsets.npy", offsets)
        return cls(flat, offsets, rows, folder)

    @classmethod
    def open(cls, folder: Path, rows: np.ndarray | None = None) -> HiddenCache:
        """A published cache, checked against its ``meta.json`` (:class:`CacheDamaged` if it does not
        match), then memory-mapped read-only (pages come in as batches touch them)."""
        try:
            meta = json.loads((folder / "meta.json").read_text())
            check_files(folder, meta)
        except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable, not JSON, fields missing
            raise CacheDamaged(f"{folder / 'meta.json'}: {err}") from None
        offsets = np.load(folder / "offsets.npy")
        total = int(offsets[-1]) * meta["hidden_size"]
        flat = torch.from_file(str(folder / "hidden.bin"), shared=False, size=total, dtype=DTYPES[meta["dtype"]])
        return cls(flat.view(-1, meta["hidden_size"]), offsets, rows, folder)


# ------------------------------------------------------------ a run's caches


@dataclass
class CacheSettings:
    dtype: str = "float16"
    folder: Path | None = None  # None: in memory, rebuilt per run
    budget_gb: float = float("inf")
    on_device: bool = False


@dataclass
class RunCaches:
    """The caches of one run: ``splits[split][field]``, and what they cost."""

    splits: dict[str, dict[str, HiddenCache]] = field(default_factory=dict)
    seconds: float = 0.0
    nbytes: int = 0
    built: int = 0  # caches computed by this run (the rest were reused from disk)
    reused: int = 0

    def get(self, split: str) -> dict[str, HiddenCache]:
        return self.splits.get(split, {})


def planned_bytes(seqs: list[Seq], hidden_size: int, dtype: str) -> int:
    unique, _ = unique_sequences(seqs)
    return sum(len(s.ids) for s in unique) * hidden_size * DTYPES[dtype].itemsize


def frozen_caches(model: torch.nn.Module, k: int, train: list[dict], valid: list[dict], task: str, pad_id: int, params):
    """A fine-tuning run's caches (``params``: ``FinetuneParams``): the training sequences and, for the
    encoder tasks (whose evaluation embeds with layers K..L-1 too), the valid ones. None: run uncached."""
    from telly import tasks

    spec = tasks.get(task)
    settings = CacheSettings(
        dtype=params.cache_dtype,
        folder=params.cache_dir,
        budget_gb=params.cache_budget_gb,
        on_device=params.cache_on_device,
    )
    splits = {"train": train, **({} if spec.generates else {"valid": valid})}
    return build_caches(model, k, splits, spec.sequence_fields, pad_id, params.eval_batch_size, settings)


def build_caches(
    model: torch.nn.Module,
    k: int,
    splits: dict[str, list[dict]],
    fields: tuple[str, ...],
    pad_id: int,
    batch_size: int,
    settings: CacheSettings,
) -> RunCaches | None:
    """Hidden state k of ``fields`` of every example of ``splits``, one shared pool per split
    (built or reused); None, with one warning, where the whole exceeds the budget."""
    adapter = adapter_for(model)
    hidden_size = adapter.hidden_size(model)
    pools = {split: [ex[f] for f in fields for ex in examples] for split, examples in splits.items()}
    sizes = {split: planned_bytes(seqs, hidden_size, settings.dtype) for split, seqs in pools.items()}
    total = sum(sizes.values())
    where = settings.folder / "hidden" if settings.folder else "memory"
    log.info(
        "frozen-prefix cache (K = %d, %s): %s in %s",
        k,
        settings.dtype,
        ", ".join(f"{s} {b / 1e9:.3f} GB" for s, b in sizes.items()),
        where,
    )
    if total > settings.budget_gb * 1e9:
        log.warning(
            "frozen-prefix cache needs %.2f GB, over finetune.cache_budget_gb = %g: running uncached "
            "(the frozen layers run every step, dropout on: the paper's regime)",
            total / 1e9,
            settings.budget_gb,
        )
        return None
    out = RunCaches()
    t0 = time.perf_counter()
    fingerprint = frozen_fingerprint(model, k) if settings.folder else ""
    device = next(model.parameters()).device
    for split, seqs in pools.items():
        n = len(splits[split])
        if settings.folder is None:
            cache = HiddenCache.build(
                model, seqs, k, pad_id, batch_size, f"cache {split}", dtype=DTYPES[settings.dtype]
            )
            out.built += 1
        else:
            key = hashlib.blake2b(
                f"{FORMAT}|{fingerprint}|{settings.dtype}|{_sequences_digest(seqs)}".encode(), digest_size=16
            ).hexdigest()
            cache, built = _build_or_open(model, seqs, k, pad_id, batch_size, settings, Path(where) / key, split)
            out.built += built
            out.reused += not built
        if settings.on_device and device.type == "cuda":
            cache = cache.to(device)
        out.splits[split] = {f: cache.view(cache.rows[j * n : (j + 1) * n]) for j, f in enumerate(fields)}
        out.nbytes += cache.nbytes
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out.seconds = time.perf_counter() - t0
    return out


def _build_or_open(model, seqs, k, pad_id, batch_size, settings: CacheSettings, final: Path, split: str):
    """(cache, True when this process built it). A finished cache is a folder with ``meta.json``;
    one whose files fail their check is moved aside, removed and built again."""
    if (final / "meta.json").exists():
        _, rows = unique_sequences(seqs)
        try:
            cache = HiddenCache.open(final, rows)
            log.info("frozen-prefix cache %s: reusing %s", split, final)
            return cache, False
        except CacheDamaged as err:
            log.warning("frozen-prefix cache %s: %s; rebuilding it", split, err)
            _discard(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{next(_tmp_counter)}")
    shutil.rmtree(tmp, ignore_errors=True)
    dtype = DTYPES[settings.dtype]
    cache = HiddenCache.build(model, seqs, k, pad_id, batch_size, f"cache {split}", dtype=dtype, folder=tmp)
    meta = {
        "format": FORMAT,
        "k": k,
        "dtype": settings.dtype,
        "hidden_size": cache.flat.shape[1],
        "sequences": len(cache.offsets) - 1,
        "inputs": len(seqs),
        "tokens": int(cache.offsets[-1]),
        "bytes": cache.nbytes,
        "architecture": type(model).__name__,
        "block_bytes": BLOCK_BYTES,
        "checksums": block_checksums(tmp / "hidden.bin", BLOCK_BYTES),
        "offsets_crc32": zlib.crc32((tmp / "offsets.npy").read_bytes()),
    }
    rows = cache.rows
    del cache  # unmap before the rename
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, final)
    except OSError:  # another process published first: same inputs, same content; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return HiddenCache.open(final, rows), True


def _discard(folder: Path) -> None:
    """Move a damaged cache aside (atomic: no process opens it half-removed), then remove it."""
    aside = folder.with_name(f"{folder.name}.damaged-{os.getpid()}-{next(_tmp_counter)}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(aside, ignore_errors=True)
