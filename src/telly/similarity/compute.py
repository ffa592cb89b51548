"""All similarity scores of a run, hidden state by hidden state.

A comparison is two model tags over the same samples; its "task" is the column it
fills in the paper-like table. Per hidden state, the pre-trained model's RSA
vector (and its ranks) is built once and shared by every comparison, on the full
samples and on each half-sample of the bootstrap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from telly.errors import TellyError
from telly.similarity.bootstrap import half_samples, spread_interval
from telly.similarity.cka import Centred, scores
from telly.similarity.rsa import RSAReference, compare

METRICS = ("rsa_spearman", "rsa_pearson", "cka", "procrustes")

# kind of comparison -> what it tells the reader
KINDS = {
    "finetuned": "pre-trained vs fine-tuned (the paper's RQ2)",
    "seed": "pre-trained vs a second fine-tuning seed (is the curve repeatable?)",
    "seed_pair": "fine-tuned vs a second fine-tuning seed (how much is run-to-run noise)",
    "random": "pre-trained vs randomly initialised (the floor: nothing shared)",
}


@dataclass(frozen=True)
class Comparison:
    kind: str  # a key of KINDS
    task: str  # a task name, or "all" for the random baseline
    a: str  # model tag
    b: str


# Hidden state h of every sample, as float32 [N, H]; given the model tag and h.
LayerGetter = Callable[[str, int], np.ndarray]


class _Shared:
    """Per-tag preparations for one pass over the comparisons, dropped after their last use.

    An RSA reference is 100 MB at N = 5,000 (vector + ranks): keeping only the ones still
    needed holds the pre-trained one plus one or two others, not one per model.
    """

    def __init__(self, comparisons: Sequence[Comparison], make: Callable[[str], object]) -> None:
        self.left = Counter(tag for c in comparisons for tag in (c.a, c.b))
        self.make = make
        self.ready: dict[str, object] = {}

    def pair(self, c: Comparison) -> tuple:
        out = []
        for tag in (c.a, c.b):
            if tag not in self.ready:
                self.ready[tag] = self.make(tag)
            out.append(self.ready[tag])
            self.left[tag] -= 1
        for tag in (c.a, c.b):
            if self.left[tag] == 0:
                self.ready.pop(tag, None)
        return tuple(out)


def compute(
    layer: LayerGetter,
    comparisons: Sequence[Comparison],
    num_hidden_states: int,
    *,
    num_samples: int,
    block_rows: int = 512,
    rsa_rounds: int = 0,
    rounds: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
) -> list[dict]:
    """One row per comparison and hidden state, with intervals where rounds > 0."""
    if not comparisons:
        raise TellyError("similarity: nothing to compare")
    subsets = half_samples(num_samples, max(rsa_rounds, rounds), seed)
    rows = []
    bar = tqdm(total=num_hidden_states * (1 + len(subsets)), desc="similarity", unit="pass")
    for h in range(num_hidden_states):
        arrays: dict[str, np.ndarray] = {}

        def get(tag: str, arrays: dict[str, np.ndarray] = arrays, h: int = h) -> np.ndarray:
            if tag not in arrays:
                arrays[tag] = layer(tag, h)
                if arrays[tag].shape[0] != num_samples:
                    raise TellyError(
                        f"{tag}: {arrays[tag].shape[0]} samples at hidden state {h}, expected {num_samples}"
                    )
            return arrays[tag]

        full = _scores_all(comparisons, get, None, rsa=True, other=True, block_rows=block_rows)
        bar.update(1)
        replicates: dict[Comparison, dict[str, list[float]]] = {c: {m: [] for m in METRICS} for c in comparisons}
        for i, idx in enumerate(subsets):
            scored = _scores_all(comparisons, get, idx, rsa=i < rsa_rounds, other=i < rounds, block_rows=block_rows)
            for c, values in scored.items():
                for m, v in values.items():
                    if m in METRICS:
                        replicates[c][m].append(v)
            bar.update(1)
        for c in comparisons:
            row = {"kind": c.kind, "task": c.task, "model_a": c.a, "model_b": c.b, "hidden_state": h}
            row.update(full[c])
            for m in METRICS:
                ci = spread_interval(full[c][m], replicates[c][m], ci_level)
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = ci.low, ci.high
            row["n_samples"] = num_samples
            rows.append(row)
    bar.close()
    return rows


def _scores_all(
    comparisons: Sequence[Comparison],
    get: Callable[[str], np.ndarray],
    idx: np.ndarray | None,
    *,
    rsa: bool,
    other: bool,
    block_rows: int,
) -> dict[Comparison, dict[str, float]]:
    """Every comparison's scores on the samples ``idx`` (None = all)."""

    def rows_of(tag: str) -> np.ndarray:
        return get(tag) if idx is None else get(tag)[idx]

    refs = _Shared(comparisons, lambda tag: RSAReference.of(rows_of(tag), block_rows)) if rsa else None
    centred = _Shared(comparisons, lambda tag: Centred.of(rows_of(tag))) if other else None
    out = {}
    for c in comparisons:
        values: dict[str, float] = {}
        if refs is not None:
            r = compare(*refs.pair(c))
            values.update(
                rsa_spearman=r.spearman, rsa_spearman_p=r.spearman_p, rsa_pearson=r.pearson, rsa_pearson_p=r.pearson_p
            )
        if centred is not None:
            values["cka"], values["procrustes"] = scores(*centred.pair(c))
        out[c] = values
    return out


def curves(rows: Sequence[Mapping], metric: str, kind: str = "finetuned") -> dict[str, list[float]]:
    """``{task: [value at h = 0, 1, ...]}`` for one kind of comparison."""
    out: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: r["hidden_state"]):
        if row["kind"] == kind:
            out.setdefault(row["task"], []).append(float(row[metric]))
    return out
