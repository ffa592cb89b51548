"""Fingerprints of a model: what later results depend on, hashed once, here.

The probes key their cached representations on it and the Optuna studies put it in their name,
so both notice a re-trained model the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Weights, configs and tokenizer files; not logs or checkpoints left next to them.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def update_with_tree(digest, root: Path, suffixes: tuple[str, ...] | None = None) -> None:
    """Feed every file under ``root`` (relative path, then contents; in sorted order) into ``digest``."""
    for file in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        if suffixes is not None and file.suffix not in suffixes:
            continue
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)


def model_fingerprint(source: str) -> str:
    """16 hex digits of a local model's weight, config and tokenizer files; a hub id (or anything
    that is not a folder) by its name. ``random:<path>`` is the untrained model shaped like ``<path>``."""
    folder = Path(source.split(":", 1)[1] if source.startswith("random:") else source).expanduser()
    digest = hashlib.sha256(source.encode())
    if folder.is_dir():
        update_with_tree(digest, folder, MODEL_FILE_SUFFIXES)
    return digest.hexdigest()[:16]
