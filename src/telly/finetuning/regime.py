"""Telly-K in the paper's regime (no frozen-prefix caching: the frozen layers run every step, dropout on),
so the report can put the cost of both regimes side by side. Base freezes nothing, so its run is shared."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from telly.config import Params
from telly.errors import TellyError

log = logging.getLogger(__name__)


def run_paper_regime(params: Params, task: str, variant: str) -> Path:
    """Train ``variant`` on ``task`` without caching; write ``<paper_regime.results_dir>/<task>/<variant>.json``."""
    from telly.finetuning.train import override, train_variant

    if params.report is None or params.finetune is None:
        raise TellyError("params: the report and finetune sections are needed for paper-regime runs")
    regime = params.report.paper_regime
    if variant not in regime.variants or task not in regime.tasks:
        raise TellyError(
            f"report.paper_regime: {task}/{variant} is not in tasks {regime.tasks} x variants {regime.variants}"
        )
    # its own resume folder, so it never picks up (or discards) the cached run's state
    scratch = Path(params.finetune.checkpoint_dir) / "paper-regime"
    params = override(params, checkpoint_dir=scratch, cache_frozen=False)
    results = Path(regime.results_dir) / task / f"{variant}.json"
    model_dir = scratch / "models" / task / variant  # the weights are not needed: only the cost and metrics
    result = train_variant(params, task, variant, output_dir=model_dir, results_path=results)
    shutil.rmtree(model_dir, ignore_errors=True)
    log.info(
        "%s/%s (paper's regime): %.2f s per epoch, test %s", task, variant, result.cost["epoch_seconds"], result.test
    )
    return results
