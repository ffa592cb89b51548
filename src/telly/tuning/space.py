"""The search space of one task's study: freeze depth K and learning rate (optionally epochs, batch size,
and the fine-tuning method: ``tune.methods``).

K runs over {Base, 0, ..., L-1} as one ordered integer ``k`` with -1 for Base.
Base freezes nothing, Telly-0 the embeddings, Telly-K the embeddings and layers
0..K-1, so -1 < 0 < ... < L-1 is the order of "how much is frozen" and the
sampler can use it. The learning rate is log-uniform in [lr_min, lr_max].

With ``tune.methods`` (e.g. ``[lora-r8, lora-r16, bitfit]``) a categorical ``method`` comes
first: ``none`` (Telly-K / Base, K searched as above) or one of the methods; with
``tune.combine_methods`` K is searched under a method too (-1 = the method alone, K >= 0 =
``telly-K+<method>``), else a method runs alone. The learning rate searched is the method's
own (``finetune.peft.learning_rate_scale`` is not applied to a trial).

A study remembers the space it was created with (and what the score means:
model, data sizes, seed). Reopening it with another space is an error, since
its old trials would then answer a different question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from telly import variants
from telly.config import Params
from telly.errors import TellyError

BASE = -1
DIRECTIONS = {
    "valid_score": "maximize",
    "time_to_convergence": "minimize",
    "trainable_params": "minimize",
    "epoch_seconds": "minimize",
}
NO_METHOD = "none"  # the method choice of Base and Telly-K


class SearchSpaceMismatch(TellyError):
    """A study name reused with another search space or objective."""


def variant_name(k: int, method: str | None = None) -> str:
    return variants.name(None if k == BASE else k, None if method == NO_METHOD else method)


@dataclass(frozen=True)
class Choice:
    """One trial's settings."""

    k: int
    lr: float
    epochs: int
    batch_size: int
    method: str = NO_METHOD

    @property
    def variant(self) -> str:
        return variant_name(self.k, self.method)


@dataclass(frozen=True)
class SearchSpace:
    num_layers: int
    lr_min: float
    lr_max: float
    epochs: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    objectives: tuple[str, ...]
    fixed: dict[str, Any]  # what the score depends on besides the searched values
    methods: tuple[str, ...] = ()
    combine: bool = False

    @classmethod
    def of(cls, params: Params, task: str, num_layers: int) -> SearchSpace:
        tune, finetune = params.tune, params.finetune
        task_cfg = getattr(finetune.tasks, task)
        fixed = {
            "task": task,
            "model": params.finetune_model,
            "seed": finetune.data_seed,
            "cache_frozen": finetune.cache_frozen,
            "train_size": tune.train_size or task_cfg.train_size,
            "valid_size": tune.valid_size or task_cfg.valid_size,
            **task_cfg.model_dump(include={"max_source_length", "max_target_length", "beam_size"}),
        }
        if tune.methods:  # what a method's score depends on (absent otherwise: older studies stay valid)
            fixed |= {"lora_alpha": finetune.peft.lora_alpha, "lora_dropout": finetune.peft.lora_dropout}
        return cls(
            num_layers=num_layers,
            lr_min=tune.lr_min,
            lr_max=tune.lr_max,
            epochs=tuple(tune.epochs),
            batch_sizes=tuple(tune.batch_sizes or [task_cfg.batch_size]),
            objectives=tuple(tune.objectives),
            fixed=fixed,
            methods=tuple(tune.methods),
            combine=tune.combine_methods,
        )

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[o] for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def suggest(self, trial: Any) -> Choice:
        """Sample one trial's settings; a single choice is passed on, not searched."""
        method = trial.suggest_categorical("method", (NO_METHOD, *self.methods)) if self.methods else NO_METHOD
        k = trial.suggest_int("k", BASE, self.num_layers - 1) if method == NO_METHOD or self.combine else BASE
        lr = trial.suggest_float("lr", self.lr_min, self.lr_max, log=True)
        epochs = trial.suggest_categorical("epochs", self.epochs) if len(self.epochs) > 1 else self.epochs[0]
        batch = (
            trial.suggest_categorical("batch_size", self.batch_sizes)
            if len(self.batch_sizes) > 1
            else self.batch_sizes[0]
        )
        trial.set_user_attr("variant", variant_name(k, method))
        return Choice(k=k, lr=lr, epochs=epochs, batch_size=batch, method=method)

    def describe(self) -> dict[str, Any]:
        """The JSON form stored in the study (and written to results/tune/<task>.json)."""
        described = {
            "k": [BASE, self.num_layers - 1],
            "lr": [self.lr_min, self.lr_max],
            "epochs": list(self.epochs),
            "batch_size": list(self.batch_sizes),
            "objectives": list(self.objectives),
            "fixed": dict(self.fixed),
        }
        if self.methods:
            described |= {"method": [NO_METHOD, *self.methods], "combine_methods": self.combine}
        return described

    def check(self, stored: dict[str, Any] | None, study_name: str, storage: str) -> None:
        """Raise :class:`SearchSpaceMismatch` naming every setting that differs from the stored space."""
        if stored is None:
            return
        now = json.loads(json.dumps(self.describe()))  # tuples -> lists, as stored
        diffs = []
        for key in sorted(set(now) | set(stored)):
            if key == "fixed":
                for sub in sorted(set(now["fixed"]) | set(stored.get("fixed", {}))):
                    a, b = stored.get("fixed", {}).get(sub), now["fixed"].get(sub)
                    if a != b:
                        diffs.append(f"{sub}: {a!r} -> {b!r}")
            elif stored.get(key) != now.get(key):
                diffs.append(f"{key}: {stored.get(key)!r} -> {now.get(key)!r}")
        if diffs:
            raise SearchSpaceMismatch(
                f"study {study_name!r} in {storage} was created with another search space "
                f"({'; '.join(diffs)}). Its trials would not be comparable: set tune.study_name to a new name "
                f"(e.g. '{{task}}-v2'), or delete the study (the .db file) to start over."
            )
