"""The finetune stages: one run per (task, variant), then one table per task."""

from __future__ import annotations

import logging

from telly.config import Params
from telly.errors import TellyError

log = logging.getLogger(__name__)


def run(params: Params, task: str, variant: str) -> None:
    """``telly finetune --task T --variant V``: train, then write checkpoint and metrics json."""
    from telly.finetuning.train import train_variant

    result = train_variant(params, task, variant)
    log.info("%s/%s: test %s; %d epochs to convergence", task, variant, result.test, result.convergence_epoch)


def table(params: Params, task: str) -> None:
    """``telly finetune --task T --table``: aggregate the task's runs into tables/<task>.{csv,md,json}."""
    from telly.finetuning.table import write_table

    if params.finetune is None:
        raise TellyError("params: the finetune section is missing")
    results = params.finetune.results_dir
    df = write_table(task, results / task, results / "tables")
    log.info("%s: table of %d variants in %s", task, len(df), results / "tables")
