"""Code-search evaluation at the paper's scale: time and peak memory of the ranking.

The paper's protocol ranks UniXcoder's 14,918 CSN-Python test queries against a 43,827-code
codebase. This ranks random 768-d embeddings (the encoder's cost is not in it: only the
ranking) two ways, each in a fresh process so that its peak resident memory is its own:

- ``tiled``: ``metrics.gold_ranks`` (query x code tiles, the gold code's rank only), at the
  paper's size and smaller ones (its extra memory should not grow with the codebase);
- ``square``: the previous approach, the whole ``[queries, codes]`` score matrix and
  scikit-learn's label-ranking average precision (queries against the test codes only, a
  square matrix); run at smaller sizes and extrapolated to 14,918 (time and memory ~ n^2).

Extra memory = peak RSS during the ranking - peak RSS before it (the embeddings themselves).

    python benchmarks/code_search_eval.py                        # all of the above (~3-5 min on 2 cores)
    python benchmarks/code_search_eval.py --only tiled --sizes 14918x43827
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PAPER_QUERIES, PAPER_CODES, DIM = 14918, 43827, 768


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(method: str, queries: int, codes: int, threads: int) -> dict:
    """One ranking in this process: seconds and extra peak memory (MB)."""
    import numpy as np
    import torch

    from telly.finetuning import metrics as M

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(queries, DIM, generator=gen), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(codes, DIM, generator=gen), dim=-1)
    gold = torch.randint(codes, (queries,), generator=gen)  # smaller codebases: queries share gold codes
    before = _peak_mb()
    start = time.perf_counter()
    if method == "tiled":
        out = M.metrics_from_ranks(M.gold_ranks(q, c, gold))
    else:  # the previous code: dense scores, sklearn LRAP (= MRR with one relevant code, no cutoff)
        from sklearn.metrics import label_ranking_average_precision_score

        if queries != codes:
            raise SystemExit("square: queries == codes (the previous code ranked among the test codes)")
        scores = (q @ c.T).numpy()
        out = {"mrr": float(label_ranking_average_precision_score(np.eye(queries, dtype=int), scores))}
    seconds = time.perf_counter() - start
    return {"method": method, "queries": queries, "codes": codes, "seconds": seconds,
            "extra_mb": _peak_mb() - before, "mrr": out["mrr"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["tiled", "square"])
    ap.add_argument("--sizes", nargs="+", help="QUERIESxCODES (default: the paper's and smaller ones)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # METHOD QUERIES CODES: one measurement
    args = ap.parse_args()
    if args.child:
        method, queries, codes = args.child[0], int(args.child[1]), int(args.child[2])
        print(json.dumps(measure(method, queries, codes, args.threads)))
        return

    plan = {
        "tiled": [(PAPER_QUERIES, 5000), (PAPER_QUERIES, 20000), (PAPER_QUERIES, PAPER_CODES)],
        "square": [(1000, 1000), (2000, 2000), (4000, 4000)],
    }
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes]
        plan = {m: sizes for m in plan}
    rows = []
    for method, sizes in plan.items():
        if args.only and method != args.only:
            continue
        for queries, codes in sizes:
            cmd = [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--child",
                method,
                str(queries),
                str(codes),
            ]
            rows.append(json.loads(subprocess.check_output(cmd).decode().strip().splitlines()[-1]))
            r = rows[-1]
            print(f"| {method} | {queries:,} | {codes:,} | {r['seconds']:.1f} | {r['extra_mb']:,.0f} |", flush=True)
    square = [r for r in rows if r["method"] == "square"]
    if square:
        big = max(square, key=lambda r: r["queries"])
        scale = (PAPER_QUERIES / big["queries"]) ** 2
        print(
            f"square, extrapolated from {big['queries']:,}^2 to {PAPER_QUERIES:,}^2 (x{scale:.1f}): "
            f"~{big['seconds'] * scale:.0f} s, ~{big['extra_mb'] * scale / 1024:.1f} GB; "
            f"its dense matrix alone against {PAPER_CODES:,} codes: {PAPER_QUERIES * PAPER_CODES * 4 / 2**30:.1f} GB"
        )


if __name__ == "__main__":
    main()
