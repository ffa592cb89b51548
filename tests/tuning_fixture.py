"""A stand-in trainer with a known optimum, and tiny params, for the tuning tests.

``fake_train`` has ``train_variant``'s signature and result shape. Its validation
score peaks at lr = 1e-4 and K = 1 and rises linearly over the epochs, so a
search can be checked against a known answer in milliseconds.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

from telly import variants
from telly.config import Params, parse_params

LAYERS = 4
TASK = "code_search"


def quality(variant: str, lr: float) -> float:
    k = -1 if variants.k_of(variant) is None else variants.k_of(variant)
    return 1.0 - (math.log10(lr) + 4.0) ** 2 / 4.0 - 0.05 * abs(k - 1)


def fake_train(params, task, variant, *, on_epoch=None, output_dir=None, results_path=None, seed=None, **_):
    task_cfg = getattr(params.finetune.tasks, task)
    lr, epochs = task_cfg.learning_rate, task_cfg.epochs
    state = Path(params.finetune.checkpoint_dir)
    resumed = (state / "last.pt").exists()  # a retried trial finds the state its dead worker saved
    state.mkdir(parents=True, exist_ok=True)
    (state / "last.pt").write_text("saved state")  # the trial's folder must be cleaned up afterwards
    log = os.environ.get("TELLY_FAKE_LOG")
    if log:  # which worker ran what: the worker tests check no trial is lost or run twice
        with open(log, "a") as fh:
            record = {"pid": os.getpid(), "variant": variant, "lr": lr, "state": str(state), "resumed": resumed}
            fh.write(json.dumps(record) + "\n")
    delay = float(os.environ.get("TELLY_FAKE_DELAY", "0"))
    q = quality(variant, lr) - 0.001 * ((seed or 7) - 7)  # another training seed moves the score a little
    records = []
    for epoch in range(1, epochs + 1):
        time.sleep(delay)
        record = {"epoch": epoch, "train_loss": 1.0 - q * epoch / epochs, "valid_score": q * epoch / epochs}
        records.append(record)
        if on_epoch is not None:
            on_epoch(epoch, record)
    k = -1 if variants.k_of(variant) is None else variants.k_of(variant)
    frozen = k + 1  # embeddings count as one block here
    return SimpleNamespace(
        epochs=records,
        convergence_epoch=epochs,
        cost={
            "trainable_params": 100 * (LAYERS + 1 - frozen),
            "time_to_convergence": 10.0 * (LAYERS + 1 - frozen),
            "epoch_seconds": 1.0,
        },
    )


FINETUNE_TASK = {
    "train_size": 16,
    "valid_size": 8,
    "test_size": 8,
    "epochs": 2,
    "batch_size": 4,
    "learning_rate": 1e-4,
    "max_source_length": 24,
    "max_target_length": 12,
    "beam_size": 1,
}
NAMES = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]


def tune_section(root: Path, **overrides) -> dict:
    section = {
        "task_names": [TASK],
        "study_name": "{task}",
        "storage": None,
        "results_dir": str(root / "tune"),
        "work_dir": str(root / "work"),
        "heartbeat_seconds": 1,
        "grace_seconds": 4,
        "max_retries": 3,
        "n_trials": 6,
        "timeout_minutes": None,
        "max_failed_trials": 4,
        "objectives": ["valid_score"],
        "lr_min": 1e-6,
        "lr_max": 1e-2,
        "epochs": [3],
        "batch_sizes": None,
        "train_size": None,
        "valid_size": None,
        "test_size": 2,
        "pruner": "median",
        "warmup_epochs": 1,
        "startup_trials": 2,
        "enqueue_default": True,
        "repeats": 1,
        "seed": 3,
    }
    section.update(overrides)
    return section


def required_sections(raw_params: dict) -> dict:
    """Only the sections every params file needs: other stages' sections are not these tests' business."""
    return {
        k: copy.deepcopy(v)
        for k, v in raw_params.items()
        if k in Params.model_fields and Params.model_fields[k].is_required()
    }


def make_params(raw_params: dict, root: Path, *, finetune: dict | None = None, **tune_overrides):
    """Params with a finetune section (or ``finetune``, e.g. a real tiny setup) and a tune section under root."""
    raw = required_sections(raw_params)
    raw["finetune"] = finetune or {
        "model": str(root / "model"),
        "tasks_dir": str(root / "tasks"),
        "output_dir": str(root / "finetuned"),
        "results_dir": str(root / "results"),
        "checkpoint_dir": str(root / "checkpoints"),
        "task_names": NAMES,
        "variants": ["base"],
        "cache_frozen": True,
        "data_seed": 7,
        "seeds": [7, 8],
        "deep_seeds": [7],
        "device": "cpu",
        "bf16": False,
        "weight_decay": 0.0,
        "warmup_fraction": 0.0,
        "max_grad_norm": 1.0,
        "eval_batch_size": 8,
        "convergence_tolerance": 0.01,
        "tasks": {t: dict(FINETUNE_TASK) for t in NAMES},
    }
    raw["tune"] = tune_section(root, **tune_overrides)
    return parse_params(raw), raw
