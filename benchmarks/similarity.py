"""RQ2 metrics at the paper's scale: N = 5,000 inputs (12,502,500 pairs per hidden state).

Targets: one model's RSA vector + ranks in float32 with extra peak memory within
~6 bytes per pair beyond the vector itself (no N x N matrix, no float64 copies),
and a whole hidden state (RSA + CKA + Procrustes, one comparison) in well under a
minute on 2 CPU cores. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from telly.similarity.cka import linear_cka, procrustes_distance
from telly.similarity.rsa import RSAReference, compare, n_pairs, ranks, similarity_vector

N = 5000


def timed(fn, *args):
    tracemalloc.start()
    start = time.perf_counter()
    out = fn(*args)
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, elapsed, peak / 2**20


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"| N = {N} ({n_pairs(N):,} pairs) | hidden | seconds | peak traced MB |")
    print("|---|---|---|---|")
    for hidden in (256, 768):
        x = rng.normal(size=(N, hidden)).astype(np.float32)
        y = (x + rng.normal(size=x.shape)).astype(np.float32)
        vec, t, mb = timed(similarity_vector, x)
        print(f"| similarity vector (block 512) | {hidden} | {t:.2f} | {mb:.0f} |")
        _, t, mb = timed(ranks, vec)
        print(f"| ranks of the vector (float32) | {hidden} | {t:.2f} | {mb:.0f} |")
        a = RSAReference.of(x)
        b = RSAReference.of(y)
        r, t, mb = timed(compare, a, b)
        print(f"| Pearson + Spearman of two vectors | {hidden} | {t:.2f} | {mb:.0f} |")
        _, t, mb = timed(linear_cka, x, y)
        print(f"| debiased linear CKA | {hidden} | {t:.2f} | {mb:.0f} |")
        _, t, mb = timed(procrustes_distance, x, y)
        print(f"| Procrustes distance | {hidden} | {t:.2f} | {mb:.0f} |")
        del a, b, vec


def whole_stage(hidden: int = 256, states: int = 7, rsa_rounds: int = 5, rounds: int = 20) -> None:
    """compute() as the stage runs it: 5 tasks + random vs pre-trained, every hidden state."""
    from telly.similarity.compute import Comparison, compute

    rng = np.random.default_rng(0)
    pre = rng.normal(size=(N, states, hidden)).astype(np.float32)
    tasks = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]
    models = {"pretrained": pre, "random": rng.normal(size=pre.shape).astype(np.float32)}
    comparisons = [Comparison("random", "all", "pretrained", "random")]
    for t in tasks:
        models[f"finetuned-{t}-base"] = pre + rng.normal(size=pre.shape).astype(np.float32)
        comparisons.append(Comparison("finetuned", t, "pretrained", f"finetuned-{t}-base"))
    _, t, mb = timed(
        lambda: compute(
            lambda tag, h: models[tag][:, h], comparisons, states, num_samples=N, rsa_rounds=rsa_rounds, rounds=rounds
        )
    )
    print(
        f"| whole stage: {len(comparisons)} comparisons x {states} hidden states, "
        f"{rsa_rounds} RSA + {rounds} CKA half-samples | {hidden} | {t:.0f} | {mb:.0f} |"
    )


if __name__ == "__main__":
    main()
    whole_stage()
