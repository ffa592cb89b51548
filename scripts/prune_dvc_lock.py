"""Drop the entries of a dvc.lock whose stages its dvc.yaml no longer defines.

DVC keeps the lock entry of a matrix item after the matrix shrinks (a seed or variant taken out of
params.yaml). Nothing reads those entries, but DVC parses and rewrites the whole lock after every
stage, so they cost time on every stage of every later `dvc repro` (docs/benchmarks.md).

    python scripts/prune_dvc_lock.py [dvc.yaml ...]     (default: dvc.yaml)

Comments and key order of the lock are kept (DVC's own round-trip YAML). Exit 0 with a line per file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dvc.utils.serialize import modify_yaml


def defined_stages(dvc_yaml: Path) -> set[str]:
    """The stage names ``dvc stage list`` gives for ``dvc_yaml``, without the file prefix."""
    # the DVC of this interpreter, whatever PATH holds (the script runs as .venv/bin/python)
    command = [sys.executable, "-m", "dvc", "stage", "list", "--name-only", str(dvc_yaml)]
    listed = subprocess.run(command, capture_output=True, text=True)
    if listed.returncode:
        raise SystemExit(f"{dvc_yaml}: dvc stage list failed, the lock is left as it is:\n{listed.stderr.strip()}")
    return {name.rsplit(":", 1)[-1] for name in listed.stdout.split()}


def prune(dvc_yaml: Path) -> list[str]:
    """Remove the stale entries of ``dvc_yaml``'s lock; return their names."""
    lock = dvc_yaml.with_suffix(".lock")
    if not lock.exists():
        return []
    keep = defined_stages(dvc_yaml)
    with modify_yaml(str(lock)) as data:
        stages = data.get("stages") or {}
        stale = [name for name in stages if name not in keep]
        for name in stale:
            del stages[name]
    return stale


def main(argv: list[str]) -> int:
    for name in argv or ["dvc.yaml"]:
        path = Path(name)
        if not path.is_file():
            print(f"{name}: no such pipeline file", file=sys.stderr)
            return 2
        stale = prune(path)
        print(f"{path.with_suffix('.lock')}: {len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
