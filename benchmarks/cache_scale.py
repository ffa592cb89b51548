"""Frozen-prefix cache against the number of rows: bytes on disk, build peak memory, build and
epoch time, the memory-mapped fp16/bf16 cache (finetune.cache_dir) against the in-memory fp32 one.

Each configuration runs in its own process; peak *anonymous* memory (RssAnon: what the process
itself allocates, not the page cache of the mapped file) is sampled every 20 ms while it builds.
The encoder is a random 2-layer RoBERTa (width --hidden, default 256; FFN 4x, 64-wide heads):
K = 1 frozen layer is cached, the epoch runs the 1 layer above it (12 - K of them at UniXcoder's
depth: the script scales by that). Sequences are distinct, of uniform random length in
[16, --max-length]. The extrapolation to the paper's sizes is printed at the end (the cache is
distinct tokens x 768 x 2 bytes; epoch and build time scale with tokens x layers).

    python benchmarks/cache_scale.py [--rows 1000 4000 16000] [--max-length 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAPER_HIDDEN = 768
# registry: the paper's training sets and lengths (profiles/paper-unixcoder.yaml)
PAPER = {
    "code_search (251,820 pairs: query 128 + code 256)": (251_820, 128 + 256),
    "clone_detection, all 901,028 pairs (2 x 512), stored per pair": (901_028, 2 * 512),
    "clone_detection, deduplicated: BigCloneBench's 9,126 functions (512)": (9_126, 512),
}


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(rows: int, mode: str, max_length: int, folder: str, hidden: int) -> dict:
    import numpy as np
    import torch
    from transformers import RobertaConfig, RobertaModel

    from telly.finetuning.caching import CacheSettings, build_caches
    from telly.finetuning.data import Seq, collate
    from telly.finetuning.heads import TaskModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = RobertaConfig(
        vocab_size=1000,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=hidden // 64,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length + 2,
    )
    model = RobertaModel(config).eval()
    rng = np.random.default_rng(rows)
    lengths = rng.integers(16, max_length + 1, rows)
    examples = [{"code": Seq(tuple(rng.integers(5, 1000, n).tolist()), int(n))} for n in lengths]
    settings = CacheSettings("float32", None) if mode == "memory-fp32" else CacheSettings("float16", Path(folder))
    base = rss_anon_mb()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.02)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    caches = build_caches(model, 1, {"train": examples}, ("code",), 1, 64, settings)
    build = time.perf_counter() - t0
    done.set()
    watcher.join()
    cache = caches.get("train")["code"]
    disk = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file()) if mode != "memory-fp32" else 0

    task = TaskModel(model, "code_search", 1).train()
    params = [p for n, p in task.named_parameters() if "layer.1." in n]
    opt = torch.optim.AdamW(params, lr=1e-5)
    order = rng.permutation(rows)
    steps, batch = 6, 32
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[s * batch : (s + 1) * batch]
        b = collate([examples[i]["code"] for i in idx], 1, [cache[i] for i in idx])
        loss = task.last_hidden(b).float().pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step = (time.perf_counter() - t0) / steps
    return {
        "rows": rows,
        "mode": mode,
        "tokens": int(lengths.sum()),
        "cache_bytes": caches.nbytes,
        "disk_bytes": disk,
        "build_seconds": build,
        "build_tokens_per_s": int(lengths.sum()) / build,
        "build_peak_anon_mb_over_start": peak[0] - base,
        "step_seconds_one_layer": step,
        "epoch_seconds_one_layer": step * rows / batch,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256, help="768 = the paper's width (slow on a shared CPU)")
    parser.add_argument("--modes", nargs="+", default=["disk-fp16", "memory-fp32"])
    parser.add_argument("--one", nargs=3)  # internal: rows mode folder
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(int(args.one[0]), args.one[1], args.max_length, args.one[2], args.hidden)))
        return
    results = []
    for rows in args.rows:
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as folder:
                cmd = [sys.executable, __file__, "--one", str(rows), mode, folder, "--max-length", str(args.max_length)]
                cmd += ["--hidden", str(args.hidden)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(out))
            print(json.dumps(results[-1]), flush=True)
    print("load average at the end:", os.getloadavg())
    disk = [r for r in results if r["mode"] == "disk-fp16"]
    if disk:
        big = max(disk, key=lambda r: r["rows"])
        per_token = big["epoch_seconds_one_layer"] / big["tokens"]
        build_per_token = big["build_seconds"] / big["tokens"]
        print(f"\nthe paper's sizes (upper bound: every input at full length; width {PAPER_HIDDEN}, 2 bytes):")
        for name, (n, length) in PAPER.items():
            tokens = n * length
            print(f"  {name}: {tokens:,} tokens, cache {tokens * PAPER_HIDDEN * 2 / 1e9:,.1f} GB")
        print(
            f"measured at width {args.hidden}, 1 CPU thread: build {1 / build_per_token:,.0f} tokens/s per frozen layer, "
            f"training {1 / per_token:,.0f} tokens/s per trained layer"
        )


if __name__ == "__main__":
    main()
