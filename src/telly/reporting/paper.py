"""The paper's published numbers (``paper_numbers.yaml``, transcribed from telly-paper.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from telly import variants
from telly.config import read_yaml
from telly.errors import TellyError
from telly.tasks import TASK_NAMES

PACKAGED = Path(__file__).with_name("paper_numbers.yaml")
REQUIRED = {
    "model": ("layers",),
    "rq1": ("scores", "layer_weights"),
    "rq2": ("similarity",),
    "rq3": TASK_NAMES,
}


def load_paper(path: str | Path | None = None) -> dict[str, Any]:
    """Read the published numbers; a missing file or section is an error naming it."""
    path = Path(path) if path else PACKAGED
    if not path.exists():
        raise TellyError(f"report.paper_numbers: {path} not found (null = the packaged {PACKAGED.name})")
    numbers = read_yaml(path)
    for section, keys in REQUIRED.items():
        missing = [k for k in keys if k not in ((numbers or {}).get(section) or {})]
        if missing:
            raise TellyError(f"{path}: {section} lacks {', '.join(missing)}")
    layers = numbers["model"]["layers"]
    for task, curve in numbers["rq2"]["similarity"].items():
        if len(curve) != layers + 1:
            raise TellyError(
                f"{path}: rq2.similarity.{task} has {len(curve)} values, expected {layers + 1} (h0..h{layers})"
            )
    return numbers


def paper_variant_metrics(numbers: dict[str, Any], task: str, metric: str) -> dict[int | None, float]:
    """``{None: Base, 0: Telly-0, ...}`` of one metric of one task's published table."""
    out: dict[int | None, float] = {}
    for row in numbers["rq3"][task]["rows"]:
        k = variants.k_of(row["variant"])
        out[k] = row["metrics"][metric]
    return out
