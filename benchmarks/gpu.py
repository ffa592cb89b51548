"""The paper-scale engine on one GPU: training throughput, MFU, decoding and code-search ranking.

At the paper's shapes (a 12 x 768 RoBERTa with UniXcoder's vocabulary, 51,416 ids; random
weights: nothing to download), on random token ids, bf16 autocast, every time CUDA-synchronized:

- code-search training (256 code / 128 query tokens, the largest batch up to 128 that fits):
  Base, and Telly-K for K = 3, 6, 9, 11 both cached (hidden state K built once on the device by
  ``telly.finetuning.caching.bottom``; the steps run layers K..11 through ``TaskModel``, as the
  ``finetune`` stage does) and in the paper's regime (the frozen layers run every step, without
  gradients). Per row: examples/s over ``steps`` steps after ``warmup``, the speed-up over Base,
  peak memory and MFU;
- summarization decoding at beam 10 (256 source / 128 target tokens): ``beam_search``
  (incremental, key/value cache) against ``beam_search_reference`` (re-encodes every step);
- code-search ranking of 14,918 queries against 43,827 codes (random 768-d embeddings) by the
  project's tiled ``metrics.gold_ranks``: time and peak memory.

MFU = model FLOPs / (seconds x peak): per step 6 x N_trained x tokens + 2 x N_frozen_run x tokens,
N = the transformer layers' parameters (embeddings are a lookup; attention scores and the pooler
are left out, a few per cent at these lengths), N_frozen_run = the frozen layers the step runs
(0 when cached: the cache is built once, its time is reported beside). Peak bf16 dense: 989 TFLOP/s
on an H100 SXM or H200 (detected by name); ``--peak-tflops`` for other devices.

``--smoke`` runs the same code on a tiny model on the CPU in seconds (tests/test_benchmark_gpu.py).
Writes ``<out>/gpu[-smoke].json`` and ``.md``; prints the Markdown table with the goals beside it.

    python benchmarks/gpu.py                  # make bench-gpu; at most ~8 minutes on one H100
    python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from telly.finetuning.caching import bottom
from telly.finetuning.generation import beam_search, beam_search_reference
from telly.finetuning.heads import TaskModel
from telly.finetuning.metrics import gold_ranks
from telly.models.freezing import freeze_bottom
from telly.models.inputs import attention_mask

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 (SXM); matched in the device name
GOALS = {"telly-11 cached speed-up": 8.0, "telly-6 cached speed-up": 1.8, "base MFU": 0.35, "decoding speed-up": 10.0}


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    code_len: int
    query_len: int
    max_batch: int
    ks: tuple[int, ...]
    warmup: int
    steps: int
    beam: int
    source_len: int
    target_len: int
    decode_examples: int
    queries: int
    codes: int
    dim: int
    query_block: int = 4096
    code_chunk: int = 8192


PAPER = Shapes(
    layers=12, hidden=768, heads=12, ffn=3072, vocab=51416, code_len=256, query_len=128, max_batch=128,
    ks=(3, 6, 9, 11), warmup=5, steps=30, beam=10, source_len=256, target_len=128, decode_examples=16,
    queries=14918, codes=43827, dim=768,
)  # fmt: skip
SMOKE = Shapes(
    layers=2, hidden=64, heads=2, ffn=128, vocab=500, code_len=24, query_len=12, max_batch=8,
    ks=(1,), warmup=1, steps=2, beam=3, source_len=12, target_len=4, decode_examples=2,
    queries=40, codes=100, dim=16, query_block=16, code_chunk=32,
)  # fmt: skip
PAD = 1


def make_encoder(s: Shapes) -> torch.nn.Module:
    from transformers import RobertaConfig, RobertaModel

    config = RobertaConfig(
        vocab_size=s.vocab,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        intermediate_size=s.ffn,
        max_position_embeddings=max(s.code_len, s.source_len + s.target_len) + 2,
        pad_token_id=PAD,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    return RobertaModel(config)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    """CUDA: the most memory allocated since the last reset; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def autocast(device: torch.device) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16)


def random_batch(s: Shapes, batch: int, length: int, device: torch.device, gen: torch.Generator) -> dict:
    """Encoder-only inputs of full length (no padding): ids, lengths and the 4-D mask ``collate`` makes."""
    ids = torch.randint(5, s.vocab, (batch, length), generator=gen)
    lengths = torch.full((batch,), length)
    batch_ = {"ids": ids, "lengths": lengths, "mask": attention_mask(lengths, lengths, length)}
    return {k: v.to(device) for k, v in batch_.items()}


def layer_params(encoder: torch.nn.Module) -> int:
    return sum(p.numel() for p in encoder.encoder.layer[0].parameters())


# ----------------------------------------------------------------------------- training


def train_row(s: Shapes, encoder: torch.nn.Module, k: int | None, cached: bool, batch: int, device) -> dict:
    """``steps`` optimiser steps of code search after ``warmup``; the cache (if any) built first, timed apart."""
    freeze_bottom(encoder, k)
    model = TaskModel(encoder, "code_search", k).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    gen = torch.Generator().manual_seed(1)
    pool = [
        {
            "query": random_batch(s, batch, s.query_len, device, gen),
            "code": random_batch(s, batch, s.code_len, device, gen),
        }
        for _ in range(2)
    ]
    reset_peak(device)
    cache_s = 0.0
    if cached:  # the frozen prefix, once: the stage caches it in fp16 (finetune.cache_dtype)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device):
            for inputs in pool:
                for side in inputs.values():
                    side["hidden"] = bottom(encoder, side["ids"], side["mask"], k).to(torch.float16)
        sync(device)
        cache_s = (time.perf_counter() - start) / (len(pool) * batch)  # seconds per example
    seconds = 0.0
    for step in range(s.warmup + s.steps):
        if step == s.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device):
            loss = model(pool[step % len(pool)])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    if not math.isfinite(float(loss.detach())):
        raise RuntimeError(f"K={k}: the loss is {float(loss.detach())}")
    per_layer, tokens = layer_params(encoder), batch * (s.code_len + s.query_len)
    trained = s.layers - (k or 0)
    frozen_run = 0 if cached else (k or 0)
    flops = s.steps * (6 * per_layer * trained + 2 * per_layer * frozen_run) * tokens
    row = {
        "variant": "base" if k is None else f"telly-{k}",
        "regime": "base" if k is None else ("cached" if cached else "paper"),
        "k": k,
        "batch": batch,
        "examples_per_s": s.steps * batch / seconds,
        "step_s": seconds / s.steps,
        "cache_s_per_example": cache_s,
        "peak_gb": peak_gb(device),
        "flops_per_s": flops / seconds,
    }
    del model, optimizer, pool
    return row


def largest_batch(s: Shapes, encoder: torch.nn.Module, device: torch.device) -> int:
    """The largest batch up to ``max_batch`` (halving) with which Base trains: the costliest row."""
    batch = s.max_batch
    while True:
        try:
            trial = Shapes(**{**asdict(s), "warmup": 0, "steps": 1})
            train_row(trial, encoder, None, False, batch, device)
            return batch
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            reset_peak(device)


def training(s: Shapes, device: torch.device) -> list[dict]:
    encoder = make_encoder(s).to(device)
    batch = largest_batch(s, encoder, device)
    rows = [train_row(s, encoder, None, False, batch, device)]
    for k in s.ks:
        rows.append(train_row(s, encoder, k, True, batch, device))
        rows.append(train_row(s, encoder, k, False, batch, device))
    base = rows[0]["examples_per_s"]
    for row in rows:
        row["speedup"] = row["examples_per_s"] / base
    return rows


# ----------------------------------------------------------------------------- decoding


def decoding(s: Shapes, device: torch.device) -> dict:
    """Summarization at beam ``beam``: the end token never comes (every beam runs every step)."""
    model = TaskModel(make_encoder(s), "code_summarization").to(device).eval()
    gen = torch.Generator().manual_seed(2)
    prompts = []
    for _ in range(s.decode_examples):
        body = torch.randint(5, s.vocab, (s.source_len - 3,), generator=gen).tolist()
        prompts.append([0, *body, 2, 4])  # <s> source </s>, then the target's start
    prefixes = [len(p) - 1 for p in prompts]
    kw = dict(beam_size=s.beam, max_new_tokens=s.target_len, eos_id=-1, pad_id=PAD, batch_size=s.decode_examples)
    out = {}
    for name, fn in (("incremental", beam_search), ("reference", beam_search_reference)):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            tokens = fn(model, prompts, prefixes, **kw)
        sync(device)
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "tokens_per_s": sum(map(len, tokens)) / seconds, "peak_gb": peak_gb(device)}
        out[name + "_tokens"] = tokens
    same = sum(a == b for a, b in zip(out.pop("incremental_tokens"), out.pop("reference_tokens")))
    return {
        **out,
        "examples": s.decode_examples,
        "beam": s.beam,
        "new_tokens": s.target_len,
        "same_output_share": same / s.decode_examples,
        "speedup": out["incremental"]["tokens_per_s"] / out["reference"]["tokens_per_s"],
    }


# ----------------------------------------------------------------------------- ranking


def ranking(s: Shapes, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(3)
    codes = torch.nn.functional.normalize(torch.randn(s.codes, s.dim, generator=gen), dim=-1)
    gold = torch.randperm(s.codes, generator=gen)[: s.queries]
    queries = torch.nn.functional.normalize(codes[gold] + 0.5 * torch.randn(s.queries, s.dim, generator=gen), dim=-1)
    queries, codes = queries.to(device), codes.to(device)
    reset_peak(device)
    sync(device)
    start = time.perf_counter()
    ranks = gold_ranks(queries, codes, gold, query_block=s.query_block, code_chunk=s.code_chunk, device=device)
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "queries": s.queries,
        "codes": s.codes,
        "dim": s.dim,
        "seconds": seconds,
        "peak_gb": peak_gb(device),
        "mrr": float((1.0 / ranks.double()).mean()),
    }


# ----------------------------------------------------------------------------- report


def peak_flops(device: torch.device, override: float | None) -> tuple[str, float | None]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    if override is not None:
        return name, override * 1e12
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def markdown(result: dict) -> str:
    peak = result["peak_tflops"]
    lines = [
        f"Device: {result['device']} ({result['shapes']}); peak bf16 {peak if peak else 'unknown'} TFLOP/s; "
        f"{result['seconds']:.0f} s in all.",
        "",
        "| variant | regime | batch | examples/s | speed-up vs Base | step ms | cache build ms/example "
        "| peak GB | TFLOP/s | MFU | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["training"]:
        goal = {
            ("telly-11", "cached"): f"speed-up >= {GOALS['telly-11 cached speed-up']}",
            ("telly-6", "cached"): f"speed-up >= {GOALS['telly-6 cached speed-up']}",
            ("base", "base"): f"MFU >= {GOALS['base MFU']:.0%}",
        }.get((r["variant"], r["regime"]), "")
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
        lines.append(
            f"| {r['variant']} | {r['regime']} | {r['batch']} | {r['examples_per_s']:.1f} | {r['speedup']:.2f}x "
            f"| {1000 * r['step_s']:.1f} | {1000 * r['cache_s_per_example']:.2f} | {r['peak_gb']:.2f} "
            f"| {r['flops_per_s'] / 1e12:.1f} | {mfu} | {goal} |"
        )
    d, k = result["decoding"], result["ranking"]
    lines += [
        "",
        f"| summarization decoding, beam {d['beam']}, {d['examples']} examples x {d['new_tokens']} tokens "
        "| tokens/s | s | peak GB | goal |",
        "|---|---|---|---|---|",
        f"| incremental (`beam_search`) | {d['incremental']['tokens_per_s']:.1f} | {d['incremental']['seconds']:.2f} "
        f"| {d['incremental']['peak_gb']:.2f} | {d['speedup']:.1f}x the reference (goal >= {GOALS['decoding speed-up']:.0f}x) |",
        f"| re-encoding (`beam_search_reference`) | {d['reference']['tokens_per_s']:.1f} "
        f"| {d['reference']['seconds']:.2f} | {d['reference']['peak_gb']:.2f} "
        f"| same tokens on {d['same_output_share']:.0%} of examples |",
        "",
        "| code-search ranking | s | peak GB |",
        "|---|---|---|",
        f"| {k['queries']:,} queries x {k['codes']:,} codes, {k['dim']}-d (`gold_ranks`, tiled) "
        f"| {k['seconds']:.2f} | {k['peak_gb']:.2f} |",
        "",
        "| goal | at least | measured | met |",
        "|---|---|---|---|",
        *(
            f"| {g['goal']} | {g['at_least']} | {g['value']:.3f} | {'yes' if g['met'] else 'no'} |"
            for g in result["goals"]
        ),
    ]
    return "\n".join(lines) + "\n"


def goals(result: dict) -> list[dict]:
    """Each goal beside its figure (absent where the shapes have no such row, e.g. Telly-11 in the smoke run)."""
    rows = {(r["variant"], r["regime"]): r for r in result["training"]}
    figures = {
        "telly-11 cached speed-up": rows.get(("telly-11", "cached"), {}).get("speedup"),
        "telly-6 cached speed-up": rows.get(("telly-6", "cached"), {}).get("speedup"),
        "base MFU": rows[("base", "base")]["mfu"],
        "decoding speed-up": result["decoding"]["speedup"],
    }
    return [
        {"goal": name, "at_least": GOALS[name], "value": value, "met": value >= GOALS[name]}
        for name, value in figures.items()
        if value is not None
    ]


def run(shapes: Shapes, device: torch.device, peak_tflops: float | None, label: str) -> dict:
    start = time.perf_counter()
    name, peak = peak_flops(device, peak_tflops)
    train = training(shapes, device)
    for row in train:
        row["mfu"] = row["flops_per_s"] / peak if peak else None
    result = {
        "shapes": label,
        "config": asdict(shapes),
        "device": name,
        "torch": torch.__version__,
        "peak_tflops": peak / 1e12 if peak else None,
        "mfu_formula": "(6 x N_trained + 2 x N_frozen_run) x tokens per step / (step seconds x peak bf16)",
        "training": train,
        "decoding": decoding(shapes, device),
        "ranking": ranking(shapes, device),
    }
    result["goals"] = goals(result)
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, in seconds")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not detected")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke (CPU) or on a GPU")
    label = "smoke: 2 x 64" if args.smoke else "paper: 12 x 768, vocab 51,416"
    result = run(SMOKE if args.smoke else PAPER, device, args.peak_tflops, label)
    stem = "gpu-smoke" if args.smoke else "gpu"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
