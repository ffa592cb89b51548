"""The finetune-run stage: one run per (task, variant); the per-task table is ``telly.finetuning.table``."""

from __future__ import annotations

import logging

from telly.config import Params
from telly.errors import TellyError

log = logging.getLogger(__name__)


def run(params: Params, task: str, variant: str, seed: int | None = None) -> None:
    """``telly finetune --task T --variant V [--seed S]``: train, then write checkpoint, metrics json and
    per-example scores (seed: one of the variant's ``finetune.seeds`` / ``deep_seeds``; default the first)."""
    from telly.finetuning.train import train_variant

    if params.finetune is None:
        raise TellyError("params: the finetune section is missing")
    allowed = params.finetune.seeds_of(variant)
    if seed is not None and seed not in allowed:
        raise TellyError(
            f"telly finetune --seed {seed}: {variant} runs with seeds {allowed} (finetune.seeds/deep_seeds)"
        )
    result = train_variant(params, task, variant, seed=seed)
    log.info(
        "%s/%s seed %s: test %s; %d epochs to convergence",
        task,
        variant,
        result.settings.get("seed"),
        result.test,
        result.convergence_epoch,
    )
