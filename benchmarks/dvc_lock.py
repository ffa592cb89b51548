"""DVC's own time per stage: reading and rewriting dvc.lock, with and without libyaml.

After every stage, ``dvc repro`` reads the lock (``safe`` loads: libyaml's C parser when ruamel.yaml.clib is
installed, else pure Python) and rewrites it (a round-trip load and a dump, pure Python either way). The lock
holds every stage's deps, params and outs, so this grows with the matrix; stale entries of stages a matrix no
longer defines (``scripts/prune_dvc_lock.py``) add to it for nothing.

Times (median of ``--repeats``) for the lock as it is and as pruned: a ``safe`` load in pure Python and with
libyaml, the round-trip load and the dump; then a forced one-stage ``dvc repro`` (the cheap
``finetune@code_search`` table) as a whole, as it runs in this venv. Prints Markdown rows for
docs/benchmarks.md, with the load average.

    python benchmarks/dvc_lock.py [--lock dvc.lock] [--repeats 5] [--stage finetune@code_search]

``--lock`` may be an older lock of this repository (``git show REV:dvc.lock > old.lock``): it is pruned
against today's dvc.yaml.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse_times(text: str, repeats: int) -> dict[str, float]:
    from dvc.utils.serialize._yaml import _dump

    rt = YAML(typ="rt")
    data = rt.load(text)
    return {
        "safe load, pure Python": _median(lambda: YAML(typ="safe", pure=True).load(text), repeats),
        "safe load, libyaml": _median(lambda: YAML(typ="safe").load(text), repeats),
        "round-trip load": _median(lambda: YAML(typ="rt").load(text), repeats),
        "dump": _median(lambda: _dump(data, io.StringIO()), repeats),
    }


def pruned_text(lock: Path) -> str:
    """The lock without the entries its dvc.yaml no longer defines (what scripts/prune_dvc_lock.py writes)."""
    from dvc.utils.serialize._yaml import _dump
    from prune_dvc_lock import defined_stages

    keep = defined_stages(ROOT / "dvc.yaml")
    data = YAML(typ="rt").load(lock.read_text())
    for name in [n for n in data["stages"] if n not in keep]:
        del data["stages"][name]
    out = io.StringIO()
    _dump(data, out)
    return out.getvalue()


def stage_time(stage: str, repeats: int) -> float:
    """A forced one-stage repro, as `make repro` runs it; dvc.lock is restored afterwards."""
    saved = (ROOT / "dvc.lock").read_bytes()
    env = {**os.environ, "TELLY_FORKSERVER": "1", "DVC_NO_ANALYTICS": "1"}
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "-s", "-f", stage]
    try:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)  # warms the fork server
        return _median(lambda: subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True), repeats)
    finally:
        (ROOT / "dvc.lock").write_bytes(saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "dvc.lock")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stage", default="finetune@code_search")
    args = ap.parse_args()
    lock = args.lock.resolve()
    text = lock.read_text()
    pruned = pruned_text(lock)
    print(f"load average {os.getloadavg()[0]:.2f}; lock {len(text) / 1e3:.0f} kB, pruned {len(pruned) / 1e3:.0f} kB\n")
    print("| dvc.lock | as it is (s) | pruned (s) |\n|---|---|---|")
    as_is, smaller = parse_times(text, args.repeats), parse_times(pruned, args.repeats)
    for name in as_is:
        print(f"| {name} | {as_is[name]:.2f} | {smaller[name]:.2f} |")
    print(
        f"\nforced `dvc repro -s -f {args.stage}` (whole command, median of {args.repeats}): "
        f"{stage_time(args.stage, args.repeats):.2f} s"
    )


if __name__ == "__main__":
    main()
