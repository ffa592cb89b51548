"""Frozen-prefix caching as measured by the real ``finetune`` stages (no training here).

Reads ``results/finetune/<task>/<variant>.json`` (cached Telly-K and Base) and
``results/finetune-paper-regime/<task>/<variant>.json`` (the paper's regime) and prints the two
markdown tables of docs/benchmarks.md: epoch time and speed-up per task and K, and, for the tasks
run in both regimes, speed-up and test quality side by side. Speed-up = Base epoch time /
Telly-K epoch time (training only); the goal is 0.8 x L / (L - K) for K >= L / 2.

    python benchmarks/caching_stage.py [--results results/finetune] [--paper results/finetune-paper-regime]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MAIN = {
    "code_search": "mrr",
    "clone_detection": "f1",
    "code_summarization": "bleu",
    "code_generation": "bleu",
    "line_completion": "edit_sim",
}


def load(folder: Path, task: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((folder / task).glob("*.json"))}


def speedup_table(results: Path, tasks: list[str], layers: int) -> list[str]:
    head = " | ".join(f"Telly-{k} cached: epoch s (speed-up)" for k in range(layers))
    lines = [f"| task | Base epoch s | {head} |", "|---" * (layers + 2) + "|"]
    for task in tasks:
        runs = load(results, task)
        if "base" not in runs:
            continue
        base = runs["base"]["cost"]["epoch_seconds"]
        cells = []
        for k in range(layers):
            run = runs.get(f"telly-{k}")
            cells.append(
                f"{run['cost']['epoch_seconds']:.2f} (x{base / run['cost']['epoch_seconds']:.2f})" if run else "–"
            )
        lines.append(f"| {task} | {base:.2f} | " + " | ".join(cells) + " |")
    return lines


def quality_table(results: Path, paper: Path, tasks: list[str], layers: int) -> list[str]:
    lines = [
        "| task | K | goal (K >= L/2) | cached: epoch s, speed-up | paper regime: epoch s, speed-up | "
        "test metric cached / paper regime | Δ% |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        cached, regime = load(results, task), load(paper, task)
        if "base" not in cached or not regime:
            continue
        base, metric = cached["base"]["cost"]["epoch_seconds"], MAIN[task]
        for k in range(layers):
            c, p = cached.get(f"telly-{k}"), regime.get(f"telly-{k}")
            if not (c and p):
                continue
            goal = f"{0.8 * layers / (layers - k):.2f}" if k >= layers / 2 else "–"
            cs, ps = c["cost"]["epoch_seconds"], p["cost"]["epoch_seconds"]
            cm, pm = c["test"][metric], p["test"][metric]
            lines.append(
                f"| {task} | {k} | {goal} | {cs:.2f}, x{base / cs:.2f} | {ps:.2f}, x{base / ps:.2f} | "
                f"{metric} {cm:.4f} / {pm:.4f} | {100 * (cm / pm - 1):+.1f} |"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("results/finetune"))
    ap.add_argument("--paper", type=Path, default=Path("results/finetune-paper-regime"))
    args = ap.parse_args()
    tasks = [t for t in MAIN if (args.results / t / "base.json").exists()]
    if not tasks:
        raise SystemExit(f"{args.results}: no <task>/base.json; run `dvc repro finetune` first")
    layers = max(int(v.split("-")[1]) for t in tasks for v in load(args.results, t) if v.startswith("telly-")) + 1
    print("\n".join(speedup_table(args.results, tasks, layers)))
    print()
    print("\n".join(quality_table(args.results, args.paper, tasks, layers)))


if __name__ == "__main__":
    main()
