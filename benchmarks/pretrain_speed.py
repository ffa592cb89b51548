"""Training throughput of the embedded model per torch thread count and batch size.

One pre-training step as the ``pretrain`` stage takes it (bf16 autocast, the LM head on the
masked positions only, AdamW), on random token ids of a fixed length, so only the arithmetic
is measured. Chooses ``pretrain.threads`` and ``pretrain.batch_size``: on an idle 2-core
machine both cores help; on one shared with other jobs one thread is steadier
(docs/benchmarks.md, "Pre-training throughput"). Run it on a quiet machine; the ratios
between settings in one run are what to read, not the absolute figures.

    python benchmarks/pretrain_speed.py                 # the params.yaml model, a few settings
    python benchmarks/pretrain_speed.py --settings 1x16 2x16 2x32 --length 160
    python benchmarks/pretrain_speed.py --objectives --settings 1x16   # seconds per step of each objective

``--objectives`` times one step of each pre-training objective (masked-LM, unidirectional LM,
span denoising, contrastive) on inputs shaped like the corpus' (code ``--length`` tokens, a
15-token comment, an AST view 2.5 times the code, capped at ``max_length``), and the mixture of
``pretrain.objectives`` relative to masked-LM only: what a step of the mixture costs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer

from telly.config import parse_params
from telly.models import pretrain_data as data
from telly.models.pretrain import build_model, mlm_loss, training_loss


def tokens_per_second(cfg, tokenizer, threads: int, batch_size: int, length: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    ids = torch.randint(10, len(tokenizer), (batch_size, length))
    masked = torch.rand(batch_size, length) < cfg.mlm_probability
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.masked_fill(~masked, -100)}

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss, _, _ = mlm_loss(model, batch)  # the stage's own loss: LM head on the masked positions
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: allocator, oneDNN kernels
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * length / (time.perf_counter() - start)


def objective_batches(cfg, tokenizer, batch_size: int, length: int) -> dict:
    """One batch per objective, random ids in the corpus' shapes."""
    from transformers import DataCollatorForLanguageModeling

    sp = data.Special.of(tokenizer)
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[list[int]]:
        return torch.randint(300, len(tokenizer), (batch_size, n), generator=g).tolist()

    code = ids(length)
    ast = ids(min(int(2.5 * length), cfg.max_length - 4))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=cfg.mlm_probability, seed=0)
    rng = np.random.default_rng(0)
    return {
        "mlm": data.mlm_batch(collator, sp, code),
        "ulm": data.ulm_batch(sp, code),
        "denoise": data.denoise_batch(sp, code, cfg.denoise_rate, cfg.denoise_span, cfg.max_length, rng),
        "contrastive": data.contrastive_batch(sp, list(zip(code, ids(15), ast))),
    }


def seconds_per_step(cfg, tokenizer, threads: int, batch_size: int, length: int, steps: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batches = objective_batches(cfg, tokenizer, batch_size, length)
    times = {name: [] for name in batches}
    for i in range(steps + 2):  # round-robin, so load changes hit every objective alike
        for name, batch in batches.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = training_loss(model, name, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:  # the first rounds warm up allocator and kernels
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokenizer", default="models/pretrained", help="a saved tokenizer (the stage's output)")
    ap.add_argument(
        "--settings", nargs="+", default=["1x8", "2x8", "1x16", "2x16", "1x32", "2x32"], help="THREADSxBATCH pairs"
    )
    ap.add_argument("--length", type=int, default=160, help="tokens per input (the corpus' pieces average ~157)")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--objectives", action="store_true", help="seconds per step of each objective and the mixture")
    args = ap.parse_args()

    cfg = parse_params(yaml.safe_load(Path(args.params).read_text())).pretrain
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if args.objectives:
        weights = cfg.objectives.model_dump()
        total = sum(weights.values())
        print("| threads | batch | " + " | ".join(f"{n} s/step" for n in weights) + " | mixture / mlm |")
        print("|---" * (len(weights) + 3) + "|")
        for setting in args.settings:
            threads, batch = (int(x) for x in setting.split("x"))
            t = seconds_per_step(cfg, tokenizer, threads, batch, args.length, args.steps)
            mixture = sum(weights[n] * t[n] for n in weights) / total
            print(
                f"| {threads} | {batch} | "
                + " | ".join(f"{t[n]:.3f}" for n in weights)
                + f" | {mixture / t['mlm']:.2f} |"
            )
        return
    print(
        f"| threads | batch | tokens/s |  ({cfg.layers} layers x hidden {cfg.hidden_size}, "
        f"{args.length} tokens, bf16 {cfg.bf16}, {cfg.mlm_probability:.0%} masked)"
    )
    print("|---|---|---|")
    for setting in args.settings:
        threads, batch = (int(x) for x in setting.split("x"))
        rate = tokens_per_second(cfg, tokenizer, threads, batch, args.length, args.steps)
        print(f"| {threads} | {batch} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
