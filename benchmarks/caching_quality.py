"""Frozen-prefix caching and test quality: is the cached/uncached gap caching, or seed noise?

Two questions, answered with the real engine (``train_variant``) and the default profile of
``params.yaml`` (1,024 training rows, 3 epochs, the task's batch size and learning rate):

1. **Regimes over seeds.** For each task and K, Telly-K is trained with frozen-prefix caching
   (frozen layers run once, in eval mode) and in the paper's regime (frozen layers run every
   step in train mode, dropout on), each over several training seeds (``finetune.seeds``). The rows
   of every split are fixed once (the sample the default seed draws, the committed run's), so
   a seed changes only the training randomness: shuffle order and dropout masks. We report
   each regime's mean and standard deviation of the test metric over seeds, the per-seed
   (paired) differences, and whether the gap lies within the seed-to-seed spread.
2. **Exactness of the mechanism.** The same comparison for one seed with dropout switched off
   (a copy of the model whose config has ``hidden_dropout_prob = attention_probs_dropout_prob
   = 0``): then caching changes nothing but the batching of the frozen forward pass, so both
   runs must agree up to floating-point rounding.

Everything is written under a temporary work folder (its own MLflow store included), never
into the project's results/, models/ or checkpoints/. Finished runs are kept there as json,
so a rerun with the same ``--work-dir`` only trains what is missing.

    OMP_NUM_THREADS=1 python benchmarks/caching_quality.py [--tasks code_search clone_detection]
        [--ks 3 4 5] [--seeds 123456 234567 345678] [--work-dir /tmp/telly-caching-quality]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

REPO = Path(__file__).resolve().parents[1]
MAIN = {"code_search": "mrr", "clone_detection": "f1"}
REGIMES = {"cached": True, "paper": False}


def fixed_rows(ft, task: str, folder: Path) -> Path:
    """The rows the default seed samples from data/tasks, written as a task folder of exactly that size,
    so that other seeds train and test on the same rows (and a concurrent rebuild of data/tasks cannot
    change them mid-benchmark)."""
    from telly.finetuning.data import load_split
    from telly.jsonl import write_jsonl

    cfg = getattr(ft.tasks, task)
    for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size)):
        path = folder / task / f"{split}.jsonl"
        if not path.exists():
            write_jsonl(path, load_split(ft.tasks_dir, task, split, size, ft.data_seed, min_rows=2))
    return folder


def no_dropout_model(model: str, folder: Path) -> str:
    """A copy of the model folder whose config switches dropout off (weights and tokenizer byte-identical)."""
    if not (folder / "config.json").exists():
        shutil.copytree(model, folder, dirs_exist_ok=True)
        config = json.loads((folder / "config.json").read_text())
        config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return str(folder)


def run(params, work: Path, task: str, k: int, regime: str, seed: int, tag: str = "") -> dict:
    """One ``train_variant`` run, or its json from an earlier run of this benchmark."""
    from telly.finetuning.train import override, train_variant

    name = f"telly-{k}-{regime}-seed{seed}{tag}"
    path = work / "results" / task / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    result = train_variant(
        override(params, cache_frozen=REGIMES[regime]),
        task,
        f"telly-{k}",
        output_dir=work / "finetuned" / task / name,
        results_path=path,
        seed=seed,
    )
    print(f"{task} {name}: {MAIN[task]} {result.test[MAIN[task]]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return result.to_json()


def summarise(task: str, k: int, cached: list[dict], paper: list[dict]) -> dict:
    """Mean and sample std per regime, the paired per-seed differences, and a paired t-test."""
    from scipy.stats import ttest_rel

    metric = MAIN[task]
    c = [r["test"][metric] for r in cached]
    p = [r["test"][metric] for r in paper]
    diffs = [a - b for a, b in zip(c, p)]
    spread = max(statistics.stdev(c), statistics.stdev(p))
    return {
        "task": task,
        "k": k,
        "metric": metric,
        "cached": c,
        "paper": p,
        "cached_mean": statistics.mean(c),
        "cached_std": statistics.stdev(c),
        "paper_mean": statistics.mean(p),
        "paper_std": statistics.stdev(p),
        "diff_mean": statistics.mean(diffs),
        "diff_std": statistics.stdev(diffs),
        "diff_pct": 100 * (statistics.mean(c) / statistics.mean(p) - 1),
        "within_spread": abs(statistics.mean(diffs)) <= spread,
        "p_paired": float(ttest_rel(c, p).pvalue),
    }


def sign_test(rows: list[dict]) -> dict:
    """Across every K of a task: in how many same-seed pairs the cached run scores below the paper regime.
    Seed noise alone would put it below in about half (ties are left out, as the sign test does)."""
    from scipy.stats import binomtest

    diffs = [a - b for r in rows for a, b in zip(r["cached"], r["paper"])]
    below, above = sum(d < 0 for d in diffs), sum(d > 0 for d in diffs)
    p = binomtest(below, below + above).pvalue if below + above else 1.0
    return {"pairs": len(diffs), "below": below, "above": above, "p": float(p)}


def exactness(task: str, k: int, cached: dict, paper: dict) -> dict:
    """Largest differences between the two no-dropout runs: per-epoch losses and valid scores, test metrics."""

    def largest(a: list[float], b: list[float]) -> float:
        return max(abs(x - y) for x, y in zip(a, b))

    return {
        "task": task,
        "k": k,
        "metric": MAIN[task],
        "cached": cached["test"][MAIN[task]],
        "paper": paper["test"][MAIN[task]],
        "loss": largest([e["train_loss"] for e in cached["epochs"]], [e["train_loss"] for e in paper["epochs"]]),
        "valid": largest([e["valid_score"] for e in cached["epochs"]], [e["valid_score"] for e in paper["epochs"]]),
        "test": largest(list(cached["test"].values()), [paper["test"][n] for n in cached["test"]]),
        "best_epoch": (cached["best_epoch"], paper["best_epoch"]),
    }


def markdown(meta: dict, rows: list[dict], exact: list[dict]) -> str:
    seeds = ", ".join(map(str, meta["seeds"]))
    lines = [
        f"Measured {meta['date']} on {meta['machine']}, 1 torch thread; model `{meta['model']}`; "
        f"{meta['train_size']} training rows, {meta['epochs']} epochs per run, seeds {seeds} (same rows for "
        f"every seed); {meta['runs']} runs, {meta['trained']} of them trained by this invocation in "
        f"{meta['wall_minutes']:.1f} min (the rest read from the work folder).",
        "",
        "| task | K | metric | cached: per seed | cached mean ± std | paper regime: per seed | paper mean ± std | "
        "Δ mean (cached − paper) | Δ% | paired Δ ± std | within seed spread | paired t p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['k']} | {r['metric']} | {' / '.join(f'{v:.4f}' for v in r['cached'])} | "
            f"{r['cached_mean']:.4f} ± {r['cached_std']:.4f} | {' / '.join(f'{v:.4f}' for v in r['paper'])} | "
            f"{r['paper_mean']:.4f} ± {r['paper_std']:.4f} | {r['diff_mean']:+.4f} | {r['diff_pct']:+.1f} | "
            f"{r['diff_mean']:+.4f} ± {r['diff_std']:.4f} | {'yes' if r['within_spread'] else 'no'} | "
            f"{r['p_paired']:.2f} |"
        )
    lines.append("")
    for task in dict.fromkeys(r["task"] for r in rows):
        s = sign_test([r for r in rows if r["task"] == task])
        lines.append(
            f"{task}, all K pooled: cached below the paper regime in {s['below']} of {s['pairs']} same-seed pairs "
            f"(above in {s['above']}); two-sided sign test p = {s['p']:.3f}."
        )
    if exact:
        lines += [
            "",
            f"Dropout off (model copy with both dropout probabilities 0), seed {meta['seeds'][0]}: cached vs uncached.",
            "",
            "| task | K | metric cached / uncached | max |Δ| train loss (per epoch) | max |Δ| valid score | "
            "max |Δ| test metrics | best epoch cached / uncached |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in exact:
            lines.append(
                f"| {e['task']} | {e['k']} | {e['metric']} {e['cached']:.6f} / {e['paper']:.6f} | {e['loss']:.2e} | "
                f"{e['valid']:.2e} | {e['test']:.2e} | {e['best_epoch'][0]} / {e['best_epoch'][1]} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(MAIN), choices=list(MAIN))
    ap.add_argument("--ks", nargs="+", type=int, default=[3, 4, 5])
    ap.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="default: the first of finetune.seeds and two others"
    )
    ap.add_argument("--exact-k", type=int, default=3, help="K of the no-dropout exactness check (-1 = skip it)")
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a new temporary folder")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    os.chdir(REPO)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="telly-caching-quality-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri  # keep the project's store clean

    from telly.config import load_params

    params = load_params()
    params = params.model_copy(
        update={"tracking": params.tracking.model_copy(update={"uri": uri, "artifacts_dir": str(work / "artifacts")})}
    )
    ft = params.finetune
    seeds = args.seeds or [ft.first_seed, ft.first_seed + 111111, ft.first_seed + 222222]
    if len(seeds) < 2:
        sys.exit("--seeds: at least two seeds, to measure a spread")
    for task in args.tasks:
        fixed_rows(ft, task, work / "tasks")
    params = params.model_copy(
        update={
            "finetune": ft.model_copy(
                update={
                    "tasks_dir": work / "tasks",
                    "output_dir": work / "finetuned",
                    "results_dir": work / "results",
                    "checkpoint_dir": work / "checkpoints",
                }
            )
        }
    )
    print(f"work folder: {work}", flush=True)

    def finished() -> int:
        return len(list((work / "results").glob("*/*.json")))

    started, runs, before = time.time(), 0, finished()
    rows, exact = [], []
    for task in args.tasks:
        for k in args.ks:
            by_regime = {regime: [] for regime in REGIMES}
            for seed in seeds:
                for regime in REGIMES:  # interleaved: a slow spell of the machine hits both regimes alike
                    by_regime[regime].append(run(params, work, task, k, regime, seed))
                    runs += 1
            rows.append(summarise(task, k, by_regime["cached"], by_regime["paper"]))
            print(json.dumps({n: v for n, v in rows[-1].items() if n not in ("cached", "paper")}), flush=True)
        if args.exact_k >= 0:
            quiet = params.model_copy(
                update={
                    "finetune": params.finetune.model_copy(
                        update={"model": no_dropout_model(ft.model, work / "model-no-dropout")}
                    )
                }
            )
            pair = [run(quiet, work, task, args.exact_k, regime, seeds[0], "-nodropout") for regime in REGIMES]
            runs += 2
            exact.append(exactness(task, args.exact_k, *pair))
            print(json.dumps(exact[-1]), flush=True)

    cfg = getattr(ft.tasks, args.tasks[0])
    meta = {
        "date": date.today().isoformat(),
        "model": ft.model,
        "seeds": seeds,
        "ks": args.ks,
        "train_size": cfg.train_size,
        "epochs": cfg.epochs,
        "runs": runs,
        "trained": finished() - before,
        "wall_minutes": (time.time() - started) / 60,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "work_dir": str(work),
    }
    (work / "caching_quality.json").write_text(json.dumps({"meta": meta, "rows": rows, "exact": exact}, indent=2))
    print(markdown(meta, rows, exact))


if __name__ == "__main__":
    sys.exit(main())
