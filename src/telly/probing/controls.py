"""Control tasks (Hewitt & Liang, 2019): each property names its control here (``control``).

A control task keeps a task's inputs and label distribution but replaces the
labels with ones the representation cannot encode:

- lexical: every token *type* (its string) gets one random label drawn from the
  training label distribution, the same wherever the string occurs, in every split.
  A probe can only score by memorising strings, so task minus control accuracy
  (selectivity) says how much of the score is the representation's and not the probe's.
- structural and semantic: labels are shuffled across functions (per-function random
  labels with the class sizes unchanged);
- syntactic: each code's true partner is another function's AST-only (a fixed random
  derangement of the true pairs).

For function-level tasks, test functions are unseen in training, so a control probe
cannot memorise them and its score sits at chance: there selectivity is the gain
over chance of the same probe architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from telly.probing.objectives import Split


def labels_per_type(types: Sequence[Sequence[str]], train_labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """Control labels for token rows: one random label per distinct string, across all splits.

    ``types[s]`` lists the token strings of split ``s`` row by row; ``train_labels`` fixes
    the distribution the random labels are drawn from.
    """
    values, counts = np.unique(train_labels, return_counts=True)
    vocabulary = sorted(set().union(*map(set, types)))
    rng = np.random.default_rng(seed)
    drawn = dict(zip(vocabulary, rng.choice(values, size=len(vocabulary), p=counts / counts.sum())))
    return [np.array([drawn[t] for t in split_types], dtype=train_labels.dtype) for split_types in types]


def shuffled_labels(split: Split, seed: int) -> Split:
    """Per-function random labels with the same class sizes."""
    rng = np.random.default_rng(seed)
    return Split(split.x, rng.permutation(split.y), split.x2)


def deranged_pairs(split: Split, seed: int) -> Split:
    """Syntactic control: true pairs get another true pair's AST-only as their partner."""
    rng = np.random.default_rng(seed)
    true = np.flatnonzero(split.y == 1)
    if len(true) < 2:
        raise ValueError("the syntactic control needs at least two true pairs")
    shift = rng.integers(1, len(true))  # a cyclic shift of a random order: nobody keeps their own
    order = rng.permutation(true)
    x2 = np.array(split.x2, copy=True)
    x2[order] = split.x2[np.roll(order, shift)]
    return Split(split.x, split.y, x2)


# the controls a property names (telly.probing.properties): its real splits -> the control task's splits


def token_type_control(real: dict[str, Split], seed: int) -> dict[str, Split]:
    """Lexical: one random label per token string (the splits carry their ``types``)."""
    splits = list(real)
    labels = labels_per_type([real[s].types for s in splits], real["train"].y, seed)
    return {s: Split(real[s].x, y) for s, y in zip(splits, labels)}


def deranged_control(real: dict[str, Split], seed: int) -> dict[str, Split]:
    return {s: deranged_pairs(split, seed + i) for i, (s, split) in enumerate(real.items())}


def shuffled_control(real: dict[str, Split], seed: int) -> dict[str, Split]:
    return {s: shuffled_labels(split, seed + i) for i, (s, split) in enumerate(real.items())}
