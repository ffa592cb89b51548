"""Atomic writes: a file or folder appears whole or not at all.

An interrupted stage must never leave a half-written output that DVC would cache or a later
stage would read. Every writer goes through these: write to a temporary sibling, then rename
it into place (a rename within one folder is atomic on POSIX).

Just before each rename they run the process's publish check (:func:`check_before_publish`): the
CLI sets one that fails when ``params.yaml`` changed since the stage read it (``telly.config``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_publish_check: Callable[[], None] | None = None


def check_before_publish(check: Callable[[], None] | None) -> None:
    """Run ``check`` before every atomic write of this process puts a file or folder in place (it
    raises to stop the write); None: no check."""
    global _publish_check
    _publish_check = check


def _before_publish() -> None:
    if _publish_check is not None:
        _publish_check()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file next to ``path`` (same suffix, so writers that look at it work);
    it replaces ``path`` only when the block ends without an error. Concurrent writers each get their own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        _before_publish()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``folder``; it replaces ``folder`` (and whatever was
    there) only when the block ends without an error."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; an output folder is shared data
    try:
        yield tmp
        _before_publish()
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """A text file (UTF-8, ``\\n`` line ends), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
