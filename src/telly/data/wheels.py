"""Pinned wheel lists: ``name==version --hash=sha256:...`` lock files and the hashes of downloaded wheels.

Read by the prepare stage (the corpus, ``data.lockfile``), the tasks stage (the behaviour set,
``tasks.behaviour.lockfile``) and `telly data fetch` (:mod:`telly.data.fetch`), which downloads them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from telly.errors import TellyError

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)==(?P<version>[^\s]+)\s+--hash=sha256:(?P<sha>[0-9a-f]{64})\s*$")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str


def read_lock(path: str | Path) -> list[Pin]:
    """Parse the lock file; every non-comment line must be a hash-pinned requirement."""
    path = Path(path)
    if not path.exists():
        raise TellyError(f"{path}: lock file not found (data.lockfile or tasks.behaviour.lockfile in params.yaml)")
    pins = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            raise TellyError(f"{path}:{lineno}: expected 'name==version --hash=sha256:<64 hex>', got {line!r}")
        pins.append(Pin(m["name"].lower(), m["version"], m["sha"]))
    if not pins:
        raise TellyError(f"{path}: lists no wheels")
    return pins


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
