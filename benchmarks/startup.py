"""Start-up of a fine-tuning stage: from launching ``telly finetune`` to its first optimiser step.

Target: at most 2 s per stage (the pipeline runs 77 of them), ``telly --help`` under 1 s.

Builds a stand-in of the default profile in a temp folder (a 6 x 128 RoBERTa as ``pretrain``
makes, 64/16/16 rows of each task from the tests' fixtures; params.yaml otherwise), runs the
stage once to warm what a pipeline has warm (MLflow's database, the token store, the frozen-prefix
cache), then times each figure ``--repeats`` times (median): ``python -c "import torch"`` (the
floor), ``telly --help``, launch to the first optimiser step (a torch optimiser hook ends the
process there) and the whole stage on these tiny splits. ``--src`` times another checkout's
``src`` (a "before"). Prints Markdown rows for docs/benchmarks.md, with the load average.

    python benchmarks/startup.py [--repeats 3] [--src /path/to/other/src] [--task code_search --variant telly-1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# Runs ``telly`` and ends the process at the first optimiser step, printing the seconds since launch.
FIRST_STEP = """
import os, runpy, sys, time
import torch.optim.optimizer as optimizer

def first_step(*args):
    print(f"FIRST_STEP {time.time() - float(os.environ['LAUNCHED']):.3f}", flush=True)
    os._exit(0)

optimizer.register_optimizer_step_pre_hook(first_step)
sys.argv = ["telly", *sys.argv[1:]]
runpy.run_module("telly", run_name="__main__")
"""


def make_project(root: Path) -> Path:
    """A default-shaped model, small task splits and params.yaml pointing at them; returns the params file."""
    from finetune_fixture import task_rows
    from model_fixture import make_tiny_roberta
    from telly.jsonl import write_jsonl

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    model = make_tiny_roberta(root / "model", max_length=256, layers=6, hidden=128)
    finetune = raw["finetune"]
    for task in finetune["task_names"]:
        for split, n in (("train", 64), ("valid", 16), ("test", 16)):
            write_jsonl(root / "tasks" / task / f"{split}.jsonl", task_rows(task, n))
        finetune["tasks"][task].update(train_size=64, valid_size=16, test_size=16, epochs=1)
    finetune.update(model=str(model), tasks_dir=str(root / "tasks"), device="cpu")
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    env = {**env, "LAUNCHED": repr(time.time())}
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout


def first_step_seconds(stdout: str) -> float:
    lines = [line for line in stdout.splitlines() if line.startswith("FIRST_STEP ")]
    if not lines:
        sys.exit("the stage ended without an optimiser step")
    return float(lines[0].split()[1])


def clear_outputs(root: Path) -> None:
    """The run's own outputs (so each repeat trains), keeping what a pipeline shares: caches, MLflow."""
    for name in ("models", "results", "checkpoints"):
        shutil.rmtree(root / name, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the telly sources to time")
    ap.add_argument("--task", default="code_search")
    ap.add_argument("--variant", default="telly-1")
    args = ap.parse_args()
    env = {
        **os.environ,
        "PYTHONPATH": str(args.src.resolve()),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = make_project(root)
        stage = ["finetune", "--task", args.task, "--variant", args.variant, "--params", str(params)]
        timed([py, "-m", "telly", *stage], root, env)  # warm: MLflow's database, token store, hidden cache
        clear_outputs(root)
        figures: dict[str, list[float]] = {"import torch": [], "telly --help": [], "first step": [], "whole": []}
        for _ in range(args.repeats):
            figures["import torch"].append(timed([py, "-c", "import torch"], root, env)[0])
            figures["telly --help"].append(timed([py, "-m", "telly", "--help"], root, env)[0])
            figures["first step"].append(first_step_seconds(timed([py, "-c", FIRST_STEP, *stage], root, env)[1]))
            clear_outputs(root)
            figures["whole"].append(timed([py, "-m", "telly", *stage], root, env)[0])
            clear_outputs(root)
    load = os.getloadavg()
    print(f"src: {args.src}; {args.task}/{args.variant}; median of {args.repeats}; load {load[0]:.2f} {load[1]:.2f}")
    labels = {
        "import torch": '`python -c "import torch"` (the floor)',
        "telly --help": "`telly --help`",
        "first step": f"`telly finetune --task {args.task} --variant {args.variant}`: launch to first step",
        "whole": "the whole stage (64 train rows, 1 epoch, 16 valid / test)",
    }
    print("| figure | median s | runs |\n|---|---|---|")
    for key, values in figures.items():
        print(f"| {labels[key]} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
