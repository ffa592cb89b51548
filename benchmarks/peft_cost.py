"""PEFT methods against Telly-K: trainable parameters, epoch time (wall and CPU) and test quality of every
variant of the default comparison on one task, through the real fine-tuning loop, in one process.

Uses ``models/pretrained`` when it exists, else the pre-training architecture of params.yaml with random
weights ; code-search rows are made from the corpus (``--corpus``). Random weights
make the quality column meaningless: the point is the cost columns. Peak memory is not compared here: on
CPU it is the process's peak RSS, which in one process only grows (the pipeline runs each variant in its
own process).

    python benchmarks/peft_cost.py [--corpus data/corpus/python] [--train-size 256] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "peft_cost"
HEADING = "## PEFT methods against Telly-K: cost per epoch (`benchmarks/peft_cost.py`)"


def search_rows(corpus: Path, folder: Path, n: int) -> Path:
    from telly.jsonl import read_jsonl, write_jsonl

    for split in ("train", "valid", "test"):
        rows = read_jsonl(corpus / f"{split}.jsonl")[:n]
        write_jsonl(
            folder / "code_search" / f"{split}.jsonl",
            [{"id": i, "query": " ".join(r["docstring_tokens"]), "code": r["code"]} for i, r in enumerate(rows)],
        )
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO / "data/corpus/python")
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=None, help="default: base, telly-L/2, finetune.peft.variants, ia3")
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()

    corpus = args.corpus.resolve()
    os.chdir(REPO)
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{OUT / 'mlflow.db'}"
    from telly.config import load_params
    from telly.finetuning.train import train_variant
    from telly.models.loading import load_encoder

    params = load_params()
    ft = params.finetune
    model = ft.model if ft.model and (Path(ft.model) / "config.json").exists() else None
    if model is None:
        model = _random_model(params, corpus)
    n_layers = load_encoder(model, device="cpu").num_layers
    tasks_dir = search_rows(corpus, OUT / "tasks", max(args.train_size, 256))
    task = ft.tasks.code_search.model_copy(
        update={"train_size": args.train_size, "valid_size": 64, "test_size": 128, "epochs": args.epochs}
    )
    ft = ft.model_copy(
        update={
            "model": model,
            "tasks_dir": tasks_dir,
            "output_dir": OUT / "finetuned",
            "results_dir": OUT / "results",
            "checkpoint_dir": OUT / "checkpoints",
            "tasks": ft.tasks.model_copy(update={"code_search": task}),
            "peft": ft.peft.model_copy(update={"results_dir": OUT / "results-peft"}),
        }
    )
    params = params.model_copy(update={"finetune": ft})
    names = args.variants or ["base", f"telly-{n_layers // 2}", *ft.peft.variants, "ia3"]
    rows, started = [], time.time()
    for variant in dict.fromkeys(names):
        r = train_variant(params, "code_search", variant)
        rows.append(
            {
                "variant": variant,
                "trainable_params": r.cost["trainable_params"],
                "epoch_s": r.cost["epoch_seconds"],
                "epoch_cpu_s": r.cost["epoch_cpu_seconds"],
                "cache_s": r.cost["cache_seconds"],
                "mrr": r.test["mrr"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    meta = {
        "date": date.today().isoformat(),
        "model": model,
        "layers": n_layers,
        "train_size": args.train_size,
        "epochs": args.epochs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f} / {load[1]:.1f} (1 / 5 min)",
        "wall_seconds": time.time() - started,
    }
    (OUT / "peft_cost.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    md = markdown(meta, rows)
    print(md)
    if not args.no_docs:
        write_docs(md)


def _random_model(params, corpus: Path) -> str:
    """The pre-training architecture of params.yaml, random weights, a tokenizer trained on ``corpus``."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    from telly.jsonl import read_jsonl
    from telly.models.tokenizer import train_tokenizer

    folder = OUT / "random-model"
    if (folder / "config.json").exists():
        return str(folder)
    pre = params.pretrain
    codes = [r["code"] for r in read_jsonl(corpus / "train.jsonl")[:5000]]
    tok = train_tokenizer(codes, vocab_size=pre.vocab_size, max_length=pre.max_length)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=pre.hidden_size,
        num_hidden_layers=pre.layers,
        num_attention_heads=pre.heads,
        intermediate_size=pre.ffn_size,
        max_position_embeddings=pre.max_length + tok.pad_token_id + 1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def markdown(meta: dict, rows: list[dict]) -> str:
    base = next((r for r in rows if r["variant"] == "base"), rows[0])
    lines = [
        f"{meta['date']}, {meta['machine']}, model {Path(meta['model']).name} ({meta['layers']} layers), code search, "
        f"{meta['train_size']} training rows x {meta['epochs']} epoch(s); quality from random weights is not "
        "meaningful here.\n",
        "| variant | trainable params | epoch s | CPU s | vs Base (CPU) | cache s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['trainable_params']:,} | {r['epoch_s']:.2f} | {r['epoch_cpu_s']:.2f} | "
            f"{r['epoch_cpu_s'] / base['epoch_cpu_s']:.2f} | {r['cache_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(md: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8")
    section = f"{HEADING}\n\n" + md
    if HEADING in text:
        start = text.index(HEADING)
        nxt = text.find("\n#", start + len(HEADING))
        text = text[:start] + section + "\n" + (text[nxt + 1 :] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
