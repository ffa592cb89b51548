"""Frozen-prefix caching: per-epoch training time of every Telly-K relative to Base,
with caching (default) and in the paper's regime (frozen layers run every step), in one run.

Goal for the encoder tasks (search, clone): speedup with caching >= 0.8 x L / (L - K) for
K >= L/2, and test quality within 1% of the uncached run. The generation tasks are reported too.

Uses ``models/pretrained`` when it exists, else the pre-training architecture of params.yaml
with random weights; task rows are made from the corpus unless ``--real-tasks`` (data/tasks).
Timings do not depend on the weights; quality compares the cached and the uncached run.

    python benchmarks/caching.py [--tasks code_search clone_detection] [--train-size 256] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "caching"
ALL_TASKS = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]
MAIN = {
    "code_search": "mrr",
    "clone_detection": "f1",
    "code_summarization": "bleu",
    "code_generation": "bleu",
    "line_completion": "edit_sim",
}


def random_model(params, folder: Path) -> str:
    """The pre-training architecture with random weights and a tokenizer trained on the corpus."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from telly.jsonl import read_jsonl
    from telly.models.tokenizer import train_tokenizer

    if (folder / "config.json").exists():
        return str(folder)
    pre = params.pretrain
    codes = [r["code"] for r in read_jsonl(REPO / "data/corpus/python/train.jsonl")[:5000]]
    tok = train_tokenizer(codes, vocab_size=pre.vocab_size, max_length=pre.max_length)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=pre.hidden_size,
        num_hidden_layers=pre.layers,
        num_attention_heads=pre.heads,
        intermediate_size=pre.ffn_size,
        max_position_embeddings=pre.max_length + 2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def corpus_tasks(folder: Path, n: int) -> Path:
    """Task rows in the contract's formats, made from corpus functions (only when data/tasks is absent)."""
    import random

    from telly.jsonl import read_jsonl, write_jsonl

    if (folder / "line_completion" / "test.jsonl").exists():
        return folder
    for split in ("train", "valid", "test"):
        rows = read_jsonl(REPO / f"data/corpus/python/{split}.jsonl")[:n]
        rng = random.Random(0)
        code = [r["code"] for r in rows]
        doc = [" ".join(r["docstring_tokens"]) for r in rows]
        write_jsonl(
            folder / "code_search" / f"{split}.jsonl",
            [{"id": i, "query": d, "code": c} for i, (d, c) in enumerate(zip(doc, code))],
        )
        write_jsonl(
            folder / "clone_detection" / f"{split}.jsonl",
            [
                {"id": i, "code1": c, "code2": c if i % 2 else rng.choice(code), "label": i % 2}
                for i, c in enumerate(code)
            ],
        )
        write_jsonl(
            folder / "code_summarization" / f"{split}.jsonl",
            [{"id": i, "source": c, "target": d} for i, (d, c) in enumerate(zip(doc, code))],
        )
        write_jsonl(
            folder / "code_generation" / f"{split}.jsonl",
            [{"id": i, "source": d, "target": r["signature"]} for i, (d, r) in enumerate(zip(doc, rows))],
        )
        completion = []
        for i, c in enumerate(code):
            lines = c.splitlines()
            cut = max(1, len(lines) // 2)
            completion.append(
                {"id": i, "source": "\n".join(lines[:cut]), "target": lines[cut] if cut < len(lines) else ""}
            )
        write_jsonl(folder / "line_completion" / f"{split}.jsonl", completion)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=ALL_TASKS, choices=ALL_TASKS)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--real-tasks", action="store_true", help="use data/tasks (default: rows made from the corpus)")
    ap.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()

    os.chdir(REPO)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{OUT / 'mlflow.db'}"  # keep the project's store clean
    from telly.config import load_params
    from telly.finetuning.train import override, train_variant

    params = load_params()
    ft = params.finetune
    model = ft.model if (Path(ft.model) / "config.json").exists() else random_model(params, OUT / "random-model")
    tasks_dir = ft.tasks_dir if args.real_tasks else corpus_tasks(OUT / "tasks", 2000)
    sizes = {"train_size": args.train_size, "valid_size": 64, "test_size": 128, "epochs": args.epochs, "beam_size": 1}
    small_eval = {"valid_size": 16, "test_size": 32}  # beam search re-runs the encoder per token: keep eval short
    tasks = ft.tasks.model_copy(
        update={
            t: getattr(ft.tasks, t).model_copy(
                update=sizes | (small_eval if t not in ("code_search", "clone_detection") else {})
            )
            for t in ALL_TASKS
        }
    )
    ft = ft.model_copy(
        update={
            "model": model,
            "tasks_dir": Path(tasks_dir),
            "output_dir": OUT / "finetuned",
            "results_dir": OUT / "results",
            "checkpoint_dir": OUT / "checkpoints",
            "tasks": tasks,
        }
    )
    params = params.model_copy(update={"finetune": ft})

    from telly.models.loading import load_encoder

    n_layers = load_encoder(model, device="cpu").num_layers
    rows = []
    started = time.time()
    for task in args.tasks:
        base = train_variant(params, task, "base")
        rows.append(_row(task, "base", None, None, base, base))
        for k in range(n_layers):
            cached = train_variant(override(params, cache_frozen=True), task, f"telly-{k}")
            paper = train_variant(override(params, cache_frozen=False), task, f"telly-{k}")
            rows.append(_row(task, f"telly-{k}", k, n_layers, cached, base, paper))
            print(json.dumps(rows[-1]), flush=True)
    meta = {
        "date": date.today().isoformat(),
        "model": model,
        "layers": n_layers,
        "tasks_dir": str(tasks_dir),
        "train_size": args.train_size,
        "epochs": args.epochs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": rows[0]["device"],
        "wall_seconds": time.time() - started,
    }
    (OUT / "caching.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = markdown(meta, rows)
    print(md)
    if not args.no_docs:
        write_docs(md)


def _row(task, variant, k, n_layers, run, base, paper=None) -> dict:
    main = MAIN[task]
    row = {
        "task": task,
        "variant": variant,
        "k": k,
        "device": run.system.get("system.device"),
        "base_epoch_s": base.cost["epoch_seconds"],
        "epoch_s_cached": run.cost["epoch_seconds"],
        "cache_s": run.cost["cache_seconds"],
        f"{main}_cached": run.test[main],
        "speedup_cached": base.cost["epoch_seconds"] / run.cost["epoch_seconds"],
        "cpu_speedup_cached": base.cost["epoch_cpu_seconds"] / run.cost["epoch_cpu_seconds"],
    }
    if paper is not None:
        row |= {
            "epoch_s_paper": paper.cost["epoch_seconds"],
            f"{main}_paper": paper.test[main],
            "speedup_paper": base.cost["epoch_seconds"] / paper.cost["epoch_seconds"],
            "cpu_speedup_paper": base.cost["epoch_cpu_seconds"] / paper.cost["epoch_cpu_seconds"],
            "goal": 0.8 * n_layers / (n_layers - k) if 2 * k >= n_layers else None,
            "quality_delta_pct": 100 * (run.test[main] / paper.test[main] - 1) if paper.test[main] else None,
        }
    return row


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['machine']} ({meta['device']}), model `{meta['model']}` "
        f"(L = {meta['layers']}), {meta['train_size']} training rows, {meta['epochs']} epochs per run; "
        f"epoch time = training only (no evaluation); whole benchmark {meta['wall_seconds'] / 60:.1f} min.",
        "",
        "Speedup = Base epoch time / Telly-K epoch time, on wall time and on process CPU time "
        "(the CPU figure is robust to other jobs on a shared machine).",
        "",
        "| task | variant | epoch s (Base) | epoch s cached | cache build s | speedup cached (wall / CPU) | goal | "
        "epoch s paper regime | speedup paper (wall / CPU) | main metric cached / paper | Δ% |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["k"] is None:
            continue
        main = MAIN[r["task"]]
        goal = f"{r['goal']:.2f}" if r.get("goal") else "–"
        delta = f"{r['quality_delta_pct']:+.1f}" if r.get("quality_delta_pct") is not None else "–"
        lines.append(
            f"| {r['task']} | {r['variant']} | {r['base_epoch_s']:.2f} | {r['epoch_s_cached']:.2f} | {r['cache_s']:.2f} | "
            f"{r['speedup_cached']:.2f} / {r['cpu_speedup_cached']:.2f} | {goal} | {r['epoch_s_paper']:.2f} | "
            f"{r['speedup_paper']:.2f} / {r['cpu_speedup_paper']:.2f} | "
            f"{main} {r[f'{main}_cached']:.4g} / {r[f'{main}_paper']:.4g} | {delta} |"
        )
    return "\n".join(lines) + "\n"


HEADING = "## Frozen-prefix caching (`benchmarks/caching.py`)"


def write_docs(md: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8")
    section = (
        f"{HEADING}\n\nTargets: per-epoch time of Telly-K relative to Base with caching at least "
        "0.8 x L/(L-K) for K >= L/2 on code search and clone detection; test quality of the cached run "
        "within 1% of the paper's regime (frozen layers run every step, dropout on).\n\n" + md
    )
    if HEADING in text:
        start = text.index(HEADING)
        # up to the next heading of any level: the subsections below belong to other scripts
        nxt = text.find("\n#", start + len(HEADING))
        text = text[:start] + section + "\n" + (text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
