"""The finetune-run stage: one run per (task, variant); the per-task table is ``telly.finetuning.table``."""

from __future__ import annotations

import logging

from telly.config import Params

log = logging.getLogger(__name__)


def run(params: Params, task: str, variant: str) -> None:
    """``telly finetune --task T --variant V``: train, then write checkpoint and metrics json."""
    from telly.finetuning.train import train_variant

    result = train_variant(params, task, variant)
    log.info("%s/%s: test %s; %d epochs to convergence", task, variant, result.test, result.convergence_epoch)
