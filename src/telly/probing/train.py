"""Train one probe (all its heads at once) and keep, per head, the epoch with the best dev score.

This is the paper's checkpoint rule (best dev metric per epoch, then test) applied
head by head: every parameter of a probe has a leading head axis, so the best
epoch of head k is copied into slice k alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from telly.errors import NonFiniteError
from telly.probing.objectives import ProbingTask
from telly.probing.probes import build_probe


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    head: str = "linear"
    mlp_hidden: int = 256


@dataclass
class TrainedProbe:
    probe: torch.nn.Module
    best_epoch: list[int]
    valid: list[dict[str, float]]
    test: list[dict[str, float]]
    layer_weights: list[float] | None


def train_probe(task: ProbingTask, probe_type: str, settings: TrainSettings, seed: int) -> TrainedProbe:
    # contrastive softmaxes at scale 20 leave subnormal gradients that slow CPUs several-fold
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    probe = build_probe(
        probe_type,
        task.n_states,
        task.hidden,
        task.out_size,
        kind=settings.head,
        mlp_hidden=settings.mlp_hidden,
        orthogonal=task.retrieval,
    )
    optimizer = torch.optim.AdamW(probe.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    best_state = {k: v.detach().clone() for k, v in probe.state_dict().items()}
    best = [float("-inf")] * (1 if probe_type == "weighted-layer-wise" else task.n_states)
    best_epoch = [0] * len(best)
    valid_best: list[dict[str, float]] = [{} for _ in best]
    for epoch in range(1, settings.epochs + 1):
        for idx in task.batches(rng, settings.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(probe, idx, rng)
            if not bool(torch.isfinite(loss)):  # NaN would pass every "better than best" test as false
                raise NonFiniteError(f"probe {probe_type} on {task.name}: loss is {loss.item()} at epoch {epoch}")
            loss.backward()
            optimizer.step()
        for k, scores in enumerate(task.evaluate(probe, task.valid)):
            if scores[task.primary] > best[k]:
                best[k], best_epoch[k], valid_best[k] = scores[task.primary], epoch, scores
                for name, value in probe.state_dict().items():
                    best_state[name][k] = value[k]
    probe.load_state_dict(best_state)
    weights = probe.layer_weights().tolist() if hasattr(probe, "layer_weights") else None
    return TrainedProbe(probe, best_epoch, valid_best, task.evaluate(probe, task.test), weights)
