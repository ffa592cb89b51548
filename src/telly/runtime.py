"""Seeds, devices and small run-time facts shared by every stage."""

from __future__ import annotations

import os
import random
import subprocess
from functools import lru_cache
from pathlib import Path


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a stage is repeatable."""
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    try:
        import torch

        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
    except ImportError:  # pragma: no cover
        pass


def device(prefer: str = "auto") -> torch.device:  # noqa: F821
    """CUDA when present (or asked for), else CPU."""
    import torch

    if prefer == "cpu":
        return torch.device("cpu")
    if prefer == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA device is available")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast speeds
    training up (docs/benchmarks.md); elsewhere torch emulates it, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:  # not Linux: no autocast on CPU
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@lru_cache(maxsize=1)
def repo_root() -> Path:
    """The folder holding params.yaml (the current directory when run by DVC)."""
    here = Path.cwd()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").exists() or (candidate / "dvc.yaml").exists():
            return candidate
    return here


@lru_cache(maxsize=1)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=repo_root())
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
