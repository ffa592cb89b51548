"""Tiny task datasets and params for the fine-tuning tests (a 2-layer RoBERTa from model_fixture)."""

from __future__ import annotations

import copy
from pathlib import Path

from model_fixture import make_tiny_roberta
from telly.config import parse_params
from telly.jsonl import write_jsonl

SNIPPETS = [
    ("add two numbers", "def add(a, b):\n    return a + b"),
    ("push an item", "def push(self, item):\n    self.items.append(item)"),
    ("print doubles", "for i in range(10):\n    print(i * 2)"),
    ("return the size", "def size(self):\n    return len(self.items)"),
    ("subtract numbers", "def sub(a, b):\n    return a - b"),
    ("pop the last item", "def pop(self):\n    return self.items.pop()"),
    ("check emptiness", "def empty(self):\n    return not self.items"),
    ("multiply values", "def mul(a, b):\n    return a * b"),
]


def task_rows(task: str, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        doc, code = SNIPPETS[i % len(SNIPPETS)]
        if task == "code_search":
            rows.append({"id": f"r{i}", "query": doc, "code": code})
        elif task == "clone_detection":
            other = SNIPPETS[(i + 1 + i // 2) % len(SNIPPETS)][1]
            rows.append(
                {"id": f"r{i}", "code1": code, "code2": code if i % 2 == 0 else other, "label": int(i % 2 == 0)}
            )
        elif task == "code_summarization":
            rows.append({"id": f"r{i}", "source": code, "target": doc})
        elif task == "code_generation":
            rows.append({"id": f"r{i}", "source": doc, "target": code.split("\n")[0]})
        else:
            first, rest = code.split("\n", 1)
            rows.append({"id": f"r{i}", "source": first, "target": rest.strip()})
    return rows


TASK_SETTINGS = {
    "train_size": 16,
    "valid_size": 8,
    "test_size": 8,
    "epochs": 2,
    "batch_size": 4,
    "learning_rate": 1e-3,
    "max_source_length": 24,
    "max_target_length": 12,
    "beam_size": 2,
}


def make_setup(root: Path, raw_params: dict, *, n_train: int = 16, **task_overrides) -> tuple:
    """A tiny model, tiny datasets for all five tasks and params pointing at them."""
    model = make_tiny_roberta(root / "model", max_length=64, layers=2, hidden=32)
    tasks_dir = root / "tasks"
    names = ["code_search", "clone_detection", "code_summarization", "code_generation", "line_completion"]
    for task in names:
        for split, n in (("train", n_train), ("valid", 8), ("test", 8)):
            write_jsonl(tasks_dir / task / f"{split}.jsonl", task_rows(task, n))
    raw = copy.deepcopy(raw_params)
    raw["finetune"] = {
        "model": str(model),
        "tasks_dir": str(tasks_dir),
        "output_dir": str(root / "finetuned"),
        "results_dir": str(root / "results"),
        "checkpoint_dir": str(root / "checkpoints"),
        "task_names": names,
        "variants": ["base", "telly-0", "telly-1"],
        "cache_frozen": True,
        "data_seed": 7,
        "seeds": [7, 8],
        "deep_seeds": [7],
        "device": "cpu",
        "bf16": False,
        "weight_decay": 0.0,
        "warmup_fraction": 0.0,
        "max_grad_norm": 1.0,
        "eval_batch_size": 8,
        "convergence_tolerance": 0.01,
        "tasks": {t: {**TASK_SETTINGS, **task_overrides} for t in names},
    }
    return parse_params(raw), raw
