"""All similarity scores of a run, hidden state by hidden state.

A comparison is two model tags over the same samples; its "task" is the column it
fills in the paper-like table. Per hidden state, the pre-trained model's RSA
vector (and its ranks) is built once and shared by every comparison, on the full
samples and on each half-sample of the bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from telly.errors import TellyError
from telly.similarity.bootstrap import basic_interval, half_samples
from telly.similarity.cka import linear_cka, procrustes_distance
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


def _scores(a: np.ndarray, b: np.ndarray, ref_a: RSAReference, ref_b: RSAReference) -> dict[str, float]:
    r = compare(ref_a, ref_b)
    return {
        "rsa_spearman": r.spearman,
        "rsa_spearman_p": r.spearman_p,
        "rsa_pearson": r.pearson,
        "rsa_pearson_p": r.pearson_p,
        "cka": linear_cka(a, b),
        "procrustes": procrustes_distance(a, b),
    }


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
    bar = tqdm(total=num_hidden_states * len(comparisons), desc="similarity", unit="layer-pair")
    for h in range(num_hidden_states):
        reps: dict[str, np.ndarray] = {}

        def get(tag: str) -> np.ndarray:
            if tag not in reps:
                reps[tag] = layer(tag, h)
                if reps[tag].shape[0] != num_samples:
                    raise TellyError(f"{tag}: {reps[tag].shape[0]} samples at hidden state {h}, expected {num_samples}")
            return reps[tag]

        # RSA vectors are 50 MB each at N = 5,000: keep one per tag for this layer only.
        refs: dict[str, RSAReference] = {}

        def ref(tag: str) -> RSAReference:
            if tag not in refs:
                refs[tag] = RSAReference.of(get(tag), block_rows)
            return refs[tag]

        full = {c: _scores(get(c.a), get(c.b), ref(c.a), ref(c.b)) for c in _advance(comparisons, bar)}
        replicates: dict[Comparison, dict[str, list[float]]] = {c: {m: [] for m in METRICS} for c in comparisons}
        for i, idx in enumerate(subsets):
            sub_refs: dict[str, RSAReference] = {}
            for c in comparisons:
                a, b = get(c.a)[idx], get(c.b)[idx]
                rep = replicates[c]
                if i < rsa_rounds:
                    for tag, x in ((c.a, a), (c.b, b)):
                        if tag not in sub_refs:
                            sub_refs[tag] = RSAReference.of(x, block_rows)
                    r = compare(sub_refs[c.a], sub_refs[c.b])
                    rep["rsa_spearman"].append(r.spearman)
                    rep["rsa_pearson"].append(r.pearson)
                if i < rounds:
                    rep["cka"].append(linear_cka(a, b))
                    rep["procrustes"].append(procrustes_distance(a, b))
        for c in comparisons:
            row = {"kind": c.kind, "task": c.task, "model_a": c.a, "model_b": c.b, "hidden_state": h}
            row.update(full[c])
            for m in METRICS:
                ci = basic_interval(full[c][m], replicates[c][m], ci_level)
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = ci.low, ci.high
            row["n_samples"] = num_samples
            rows.append(row)
        del refs, reps
    bar.close()
    return rows


def _advance(items: Sequence[Comparison], bar: tqdm):
    for item in items:
        yield item
        bar.update(1)


def curves(rows: Sequence[Mapping], metric: str, kind: str = "finetuned") -> dict[str, list[float]]:
    """``{task: [value at h = 0, 1, ...]}`` for one kind of comparison."""
    out: dict[str, list[float]] = {}
    for row in sorted(rows, key=lambda r: r["hidden_state"]):
        if row["kind"] == kind:
            out.setdefault(row["task"], []).append(float(row[metric]))
    return out
