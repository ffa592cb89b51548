"""Benchmark: the prepare stage on the default corpus, and a no-op `dvc repro`.

Targets (issue 2): prepare <= 2 minutes; `dvc repro` with nothing changed <= 10 s.
Run from the repository root after `make repro` (or at least `make data`):

    .venv/bin/python benchmarks/prepare.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from telly.config import load_params
from telly.data.corpus import prepare


def main() -> None:
    params = load_params("params.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        # write to a scratch folder so the DVC-tracked outputs stay untouched
        scratch = params.model_copy(update={"data": params.data.model_copy(update={"corpus_dir": Path(tmp)})})
        start = time.perf_counter()
        metrics = prepare(scratch)
        prepare_s = time.perf_counter() - start

    start = time.perf_counter()
    out = subprocess.run(["dvc", "repro", "prepare"], capture_output=True, text=True)
    noop_s = time.perf_counter() - start
    result = {
        "prepare_seconds": round(prepare_s, 1),
        "functions": metrics["functions"],
        "noop_dvc_repro_prepare_seconds": round(noop_s, 2),
        "noop_output": out.stdout.strip().splitlines()[-1:] if out.stdout else out.stderr[-200:],
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
