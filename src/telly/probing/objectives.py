"""The probing objectives: what a probe of a property is trained on and scored by, on cached hidden states.

Each property of :mod:`telly.probing.properties` names one of these classes (its ``objective``).
An objective holds the property's splits as arrays ``x`` of shape ``[N, L+1, H]`` (token rows for
the lexical property, function rows for the others), and knows four things: how to
draw a training batch, the per-head loss of a batch, the paper's metrics of
every head on a split, and the score of a probe that ignores its input (``majority``). Features are standardised per hidden state with the
training split's statistics, so that one learning rate suits every layer and the
scalar mix compares layers on an equal footing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from telly.probing import metrics
from telly.probing.properties import ProbingProperty

INFO_NCE_SCALE = 20.0  # the paper's in-batch contrastive scale (telly-paper.md 1.3)
# An array up to this size (as float32) is standardised once and kept; a larger one (paper-scale token
# sets: tens of GB) is standardised per batch, as it is stored (float16), so memory stays at one copy.
SCALE_ONCE_MAX_BYTES = 1 << 30


@dataclass
class Split:
    """One split: ``x`` features, ``y`` labels, ``x2`` the paired AST-only features (syntactic only),
    ``types`` the string of each token row (lexical only: its control task labels strings)."""

    x: np.ndarray
    y: np.ndarray
    x2: np.ndarray | None = None
    types: list[str] | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 3:
            raise ValueError(f"features must be [N, L+1, H], got shape {self.x.shape}")
        if len(self.y) != len(self.x) or (self.x2 is not None and self.x2.shape != self.x.shape):
            raise ValueError(f"features {self.x.shape}, labels {len(self.y)} and pairs do not line up")

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Scaler:
    """Per-(layer, unit) standardisation fitted on training features."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, *arrays: np.ndarray, max_rows: int = 20000) -> Scaler:
        rows = np.concatenate([a[:max_rows] for a in arrays]).astype(np.float32)
        return cls(rows.mean(axis=0), rows.std(axis=0) + 1e-6)

    def __call__(self, x: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.from_numpy((x.astype(np.float32) - self.mean) / self.std).to(device)


@dataclass
class ProbingTask:
    """Base: a property, its splits and the size of the head's output."""

    name: str
    train: Split
    valid: Split
    test: Split
    primary: str = "acc"
    scaler: Scaler = field(init=False)
    _scaled: dict[int, tuple[np.ndarray, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    retrieval: ClassVar[bool] = False  # heads map into representation space (H x H) instead of classifying

    def __post_init__(self) -> None:
        extra = [self.train.x2] if self.train.x2 is not None else []
        self.scaler = Scaler.fit(self.train.x, *extra)

    @classmethod
    def of(cls, prop: ProbingProperty, splits: list[Split]) -> ProbingTask:
        """The objective of ``prop`` on its (train, valid, test) splits."""
        return cls(prop.name, *splits)

    @property
    def n_states(self) -> int:
        return self.train.x.shape[1]

    @property
    def hidden(self) -> int:
        return self.train.x.shape[2]

    @property
    def out_size(self) -> int:
        raise NotImplementedError

    def batches(self, rng: np.random.Generator, batch_size: int) -> list[np.ndarray]:
        order = rng.permutation(len(self.train))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def loss(self, probe: torch.nn.Module, idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Sum over heads of each head's mean loss (heads share no parameter)."""
        raise NotImplementedError

    def evaluate(self, probe: torch.nn.Module, split: Split) -> list[dict[str, float]]:
        """The paper's metrics for every head of ``probe`` on ``split``."""
        raise NotImplementedError

    def majority(self, seed: int) -> dict[str, float]:
        """The test score of a probe that ignores its input: the majority train class, or chance for retrieval."""
        raise NotImplementedError

    def _majority_class(self) -> np.ndarray:
        values, counts = np.unique(self.train.y, return_counts=True)
        return values[counts.argmax()]

    def scaled(self, x: np.ndarray, rows: np.ndarray | slice | None = None) -> torch.Tensor:
        """``x[rows]`` standardised (all of ``x`` without ``rows``).

        Scaling every batch anew cost a quarter of the lexical probe's time (float16 -> float32 copies), so
        an array of at most ``SCALE_ONCE_MAX_BYTES`` is scaled once and indexed: elementwise scaling gives
        the same numbers whole or in slices.
        """
        if x.size * 4 > SCALE_ONCE_MAX_BYTES:
            return self.scaler(x if rows is None else x[rows])
        if id(x) not in self._scaled:
            self._scaled[id(x)] = (x, self.scaler(x))  # keeps x alive, so its id is not reused
        whole = self._scaled[id(x)][1]
        return whole if rows is None else whole[rows]

    @torch.no_grad()
    def outputs(self, probe: torch.nn.Module, x: np.ndarray, chunk: int = 4096) -> np.ndarray:
        probe.eval()
        outs = [probe(self.scaled(x, slice(i, i + chunk))).numpy() for i in range(0, len(x), chunk)]
        probe.train()
        return np.concatenate(outs)  # [N, heads, out]


@dataclass
class TaggingTask(ProbingTask):
    """Lexical (token types, label 0 = pad never occurs in rows) and structural (complexity class)."""

    n_classes: int = 6
    pad_label: int | None = None

    @classmethod
    def of(cls, prop: ProbingProperty, splits: list[Split]) -> TaggingTask:
        return cls(prop.name, *splits, n_classes=prop.n_classes, pad_label=prop.pad_label)

    @property
    def out_size(self) -> int:
        return self.n_classes

    def majority(self, seed: int) -> dict[str, float]:
        guess = np.full_like(self.test.y, self._majority_class())
        if self.pad_label is not None:
            return {"acc": metrics.token_accuracy(self.test.y, guess)}
        return metrics.class_scores(self.test.y, guess, self.n_classes)

    def loss(self, probe, idx, rng):
        logits = probe(self.scaled(self.train.x, idx))  # [B, K, C]
        y = torch.from_numpy(self.train.y[idx]).long()
        per_head = F.cross_entropy(logits.permute(0, 2, 1), y[:, None].expand(-1, logits.shape[1]), reduction="none")
        return per_head.mean(dim=0).sum()

    def evaluate(self, probe, split):
        predictions = self.outputs(probe, split.x).argmax(axis=-1)
        results = []
        for k in range(predictions.shape[1]):
            if self.pad_label is not None:
                results.append({"acc": metrics.token_accuracy(split.y, predictions[:, k], self.pad_label)})
            else:
                results.append(metrics.class_scores(split.y, predictions[:, k], self.n_classes))
        return results


def _info_nce(queries: torch.Tensor, keys: torch.Tensor, same_class: torch.Tensor | None = None) -> torch.Tensor:
    """Per-head in-batch InfoNCE: query i's positive is key i; ``same_class`` masks other positives."""
    q, k = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)  # [B, K, H]
    scores = INFO_NCE_SCALE * torch.einsum("ikh,jkh->kij", q, k)  # [K, B, B]
    if same_class is not None:
        scores = scores.masked_fill(same_class[None], float("-inf"))
    target = torch.arange(q.shape[0]).expand(q.shape[1], -1)
    return F.cross_entropy(scores.permute(1, 2, 0), target.T, reduction="none").mean(dim=0).sum()


@dataclass
class PairTask(ProbingTask):
    """Syntactic: one linear mapper for code and AST-only; true pairs train it contrastively."""

    primary: str = "acc"
    retrieval: ClassVar[bool] = True

    @property
    def out_size(self) -> int:
        return self.hidden

    def batches(self, rng, batch_size):
        true_pairs = np.flatnonzero(self.train.y == 1)
        order = rng.permutation(true_pairs)
        return [
            order[i : i + batch_size] for i in range(0, len(order), batch_size) if len(order[i : i + batch_size]) > 1
        ]

    def loss(self, probe, idx, rng):
        return _info_nce(probe(self.scaled(self.train.x, idx)), probe(self.scaled(self.train.x2, idx)))

    def evaluate(self, probe, split):
        code, ast = self.outputs(probe, split.x), self.outputs(probe, split.x2)
        true = split.y == 1
        return [
            {
                "acc": metrics.pair_accuracy(code[:, k], ast[:, k], split.y),
                "mrr": metrics.mean_reciprocal_rank(code[true, k], ast[true, k]),
            }
            for k in range(code.shape[1])
        ]

    def majority(self, seed: int) -> dict[str, float]:
        n_true = int((self.test.y == 1).sum())
        return {
            "acc": float((self.test.y == self._majority_class()).mean()),
            "mrr": float(np.mean(1.0 / np.arange(1, n_true + 1))),  # expected MRR of a random ranking
        }


@dataclass
class CloneRetrievalTask(ProbingTask):
    """Semantic: a linear mapper trained so that clones (same label) are nearest; MAP@R."""

    primary: str = "map"
    retrieval: ClassVar[bool] = True

    @property
    def out_size(self) -> int:
        return self.hidden

    def batches(self, rng, batch_size):
        labels, counts = np.unique(self.train.y, return_counts=True)
        usable = np.isin(self.train.y, labels[counts > 1])
        order = rng.permutation(np.flatnonzero(usable))
        return [
            order[i : i + batch_size] for i in range(0, len(order), batch_size) if len(order[i : i + batch_size]) > 1
        ]

    def loss(self, probe, idx, rng):
        # each anchor gets a random other member of its clone class as its positive
        y = self.train.y
        members = self._members()
        positives = np.array([rng.choice(members[y[i]][members[y[i]] != i]) for i in idx])
        labels = torch.from_numpy(y[idx])
        same_class = (labels[:, None] == labels[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
        return _info_nce(probe(self.scaled(self.train.x, idx)), probe(self.scaled(self.train.x, positives)), same_class)

    def _members(self) -> dict[int, np.ndarray]:
        if not hasattr(self, "_members_cache"):
            self._members_cache = {c: np.flatnonzero(self.train.y == c) for c in np.unique(self.train.y)}
        return self._members_cache

    def evaluate(self, probe, split):
        vecs = self.outputs(probe, split.x)
        return [{"map": metrics.map_at_r(vecs[:, k], split.y)} for k in range(vecs.shape[1])]

    def majority(self, seed: int) -> dict[str, float]:
        rng = np.random.default_rng(seed)  # chance: random vectors ranked by MAP@R
        return {"map": metrics.map_at_r(rng.standard_normal((len(self.test), 64)), self.test.y)}
