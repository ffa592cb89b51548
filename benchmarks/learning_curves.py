"""Learning curves of Base against each task's no-training baseline (issue 15, item 1).

For every task and every training size, one Base run (``train_variant``, the task's settings of
``params.yaml`` with only ``train_size`` and ``epochs`` changed) and the task's baseline on the *same*
rows (``finetuning.baselines.compute``: the same train sample, the same test rows). The difference
Base - baseline is a paired bootstrap interval over the test rows (``reporting.evidence``, as the
report). The per-epoch valid score of each run is the curve over epochs.

    OMP_NUM_THREADS=1 python benchmarks/learning_curves.py --tasks code_search clone_detection \
        --sizes 1024 4000 --epochs 3 --work-dir /tmp/telly-lc

Writes ``<work>/learning_curves.json`` (resumable: a finished run is read back) and, with ``--figure``,
a plot (main metric against training rows, Base and baseline, the interval as error bars).
Everything goes under the work folder (its own MLflow store), nothing into the project's results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

REPO = Path(__file__).resolve().parents[1]


def base_run(params, work: Path, task: str, size: int, epochs: int, seed: int) -> dict:
    """One Base run at ``size`` training rows, or its json from an earlier call."""
    from telly.finetuning.examples import read_examples
    from telly.finetuning.train import override, train_variant

    path = work / "results" / task / f"base-n{size}-e{epochs}-seed{seed}.json"
    if not path.exists():
        t0 = time.perf_counter()
        train_variant(
            override(params, task, train_size=size, epochs=epochs),
            task,
            "base",
            output_dir=work / "finetuned" / task / path.stem,
            results_path=path,
            seed=seed,
        )
        print(f"{task} n={size} e={epochs}: {time.perf_counter() - t0:.0f} s", flush=True)
    result = json.loads(path.read_text())
    result["examples"] = read_examples(path)
    return result


def point(params, work: Path, task: str, size: int, epochs: int, seed: int) -> dict:
    """Base and baseline at one training size, and the paired interval of their difference."""
    from telly.finetuning import baselines
    from telly.finetuning.examples import aligned
    from telly.finetuning.train import override
    from telly.reporting import evidence as ev
    from telly.tasks import TASKS

    run = base_run(params, work, task, size, epochs, seed)
    line = baselines.compute(override(params, task, train_size=size), task)
    rows = [{**row, "id": i} for i, row in zip(line["ids"], line["examples"], strict=True)]
    stats = aligned(task, {"base": run["examples"], "baseline": rows})
    learns = ev.check_learns(task, [stats["base"]], stats["baseline"])
    metric = TASKS[task].metrics[0]
    return {
        "task": task,
        "train_size": run["settings"].get("train_size", size),
        "epochs": epochs,
        "seed": seed,
        "metric": metric,
        "base": run["test"][metric],
        "baseline": line["test"][metric],
        "difference": learns.details["interval"],
        "learns": learns.verdict == ev.REPRODUCED,
        "valid_per_epoch": [e.get("valid_score") for e in run["epochs"]],
        "train_seconds": sum(e["train_seconds"] for e in run["epochs"]),
        "test_rows": len(run["examples"]),
    }


def figure(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(p["task"] for p in points))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.0), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = sorted((p for p in points if p["task"] == task), key=lambda p: p["train_size"])
        sizes = [p["train_size"] for p in mine]
        ax.plot(sizes, [p["baseline"] for p in mine], "s--", color="grey", label="no-training baseline")
        low = [p["base"] - (p["baseline"] + p["difference"]["low"]) for p in mine]
        high = [(p["baseline"] + p["difference"]["high"]) - p["base"] for p in mine]
        ax.errorbar(sizes, [p["base"] for p in mine], yerr=[low, high], fmt="o-", capsize=3, label="Base")
        ax.set_xscale("log", base=2)
        ax.set_title(task.replace("_", " "), fontsize=9)
        ax.set_xlabel("training rows")
        ax.set_ylabel(mine[0]["metric"])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    from telly.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 1024, 4000])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--work-dir", type=Path, default=None, help="default: a new temporary folder")
    ap.add_argument(
        "--model", default=None, help="the encoder fine-tuned (default: finetune.model / model.name_or_path)"
    )
    ap.add_argument("--figure", type=Path, default=None, help="write the plot here (e.g. docs/img/learning_curves.png)")
    ap.add_argument("--figure-only", action="store_true", help="plot the points already in the work folder")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.chdir(REPO)
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="telly-learning-curves-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = work / "learning_curves.json"
    points = json.loads(out.read_text()) if out.exists() else []
    if not args.figure_only:
        uri = f"sqlite:///{work / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri  # keep the project's store clean

        from telly.config import load_params

        params = load_params()
        params = params.model_copy(
            update={
                "tracking": params.tracking.model_copy(update={"uri": uri, "artifacts_dir": str(work / "artifacts")})
            }
        )
        ft = params.finetune
        params = params.model_copy(
            update={
                "finetune": ft.model_copy(
                    update={"output_dir": work / "finetuned", "checkpoint_dir": work / "checkpoints"}
                    | ({"model": args.model} if args.model else {})
                )
            }
        )
        done = {(p["task"], p["train_size"], p["epochs"]) for p in points}
        for task in args.tasks:
            for size in args.sizes:
                if (task, size, args.epochs) in done:
                    continue
                p = point(params, work, task, size, args.epochs, ft.first_seed)
                points = [q for q in points if (q["task"], q["train_size"], q["epochs"]) != (task, size, args.epochs)]
                points.append(p)
                out.write_text(json.dumps(points, indent=1))
                d = p["difference"]
                print(
                    f"{task} n={p['train_size']}: Base {p['base']:.4g} baseline {p['baseline']:.4g} "
                    f"diff {d['estimate']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}] learns={p['learns']}",
                    flush=True,
                )
    if args.figure:
        figure(points, args.figure)
    for p in sorted(points, key=lambda p: (p["task"], p["train_size"])):
        d = p["difference"]
        print(
            f"| {p['task']} | {p['train_size']} | {p['epochs']} | {p['base']:.4g} | {p['baseline']:.4g} | "
            f"{d['estimate']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}] | {'yes' if p['learns'] else 'no'} | "
            f"{' / '.join(f'{v:.3g}' for v in p['valid_per_epoch'] if v is not None)} | {p['train_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
