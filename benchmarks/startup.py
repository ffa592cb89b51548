"""Start-up of a fine-tuning stage: from launching ``telly finetune`` to its first optimiser step.

Target: at most 2 s per stage (the pipeline runs 77 of them), ``telly --help`` under 1 s.

Builds a stand-in of the default profile in a temp folder (a 6 x 128 RoBERTa as ``pretrain``
makes, 64/16/16 rows of each task from the tests' fixtures; params.yaml otherwise), runs the
stage once to warm what a pipeline has warm (MLflow's database, the token store, the frozen-prefix
cache), then times each figure ``--repeats`` times (median wall and CPU seconds): ``python -c "import torch"`` (the
floor), ``telly --help``, launch to the first optimiser step (a torch optimiser hook, installed by a
``sitecustomize`` when torch is imported, ends the process there) and the whole stage on these tiny splits.
``--src`` (repeatable) times other checkouts' ``src`` too (a "before"), the runs interleaved; ``--forkserver`` times
the stage commands through a warm fork server too (TELLY_FORKSERVER=1). Prints Markdown rows for
docs/benchmarks.md, with the load average.

    python benchmarks/startup.py [--repeats 3] [--src /other/checkout/src --src src] [--forkserver]
"""

from __future__ import annotations

import argparse
import os
import resource
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

# On PYTHONPATH: when torch's optimiser module is imported (in the stage, or in a fork server before it forks),
# hook its first step to print the seconds since launch and end the process there.
SITECUSTOMIZE = """
import importlib.util, os, sys, time

class FirstStep:
    def find_spec(self, name, path=None, target=None):
        if name != "torch.optim.optimizer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_hook(module):
            exec_module(module)
            module.register_optimizer_step_pre_hook(first_step)

        spec.loader.exec_module = exec_and_hook
        return spec

def first_step(*args):
    if "FIRST_STEP" not in os.environ:  # read in the process that trains: a fork server's child has its client's
        return
    print(f"FIRST_STEP {time.time() - float(os.environ['LAUNCHED']):.3f}", flush=True)
    os._exit(0)

sys.meta_path.insert(0, FirstStep())
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


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system, all threads: steadier on a busy machine) and stdout."""
    env = {**env, "LAUNCHED": repr(time.time())}
    cpu, start = cpu_of_children(), time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, cpu_of_children() - cpu
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, cpu, out.stdout


def first_step_seconds(stdout: str) -> float:
    lines = [line for line in stdout.splitlines() if line.startswith("FIRST_STEP ")]
    if not lines:
        sys.exit("the stage ended without an optimiser step")
    return float(lines[0].split()[1])


def clear_outputs(root: Path) -> None:
    """The run's own outputs (so each repeat trains), keeping what a pipeline shares: caches, MLflow."""
    for name in ("models", "results", "checkpoints"):
        shutil.rmtree(root / name, ignore_errors=True)


LABELS = {
    "import torch": '`python -c "import torch"` (the floor)',
    "telly --help": "`telly --help`",
    "first step": "`telly finetune --task {task} --variant {variant}`: launch to first step",
    "whole": "the whole stage (64 train rows, 1 epoch, 16 valid / test)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--src", type=Path, action="append", help="telly sources to time (repeatable, interleaved); default: ./src"
    )
    ap.add_argument("--task", default="code_search")
    ap.add_argument("--variant", default="telly-1")
    ap.add_argument("--forkserver", action="store_true", help="also through a warm fork server (TELLY_FORKSERVER=1)")
    args = ap.parse_args()
    sources = [s.resolve() for s in args.src or [ROOT / "src"]]
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    py = sys.executable
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "site").mkdir()
        (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        ways = {}  # how a command is run -> its environment
        for src in sources:
            env = {**os.environ, "PYTHONPATH": f"{root / 'site'}{os.pathsep}{src}", "OMP_NUM_THREADS": threads}
            ways[str(src)] = {**env, "TELLY_FORKSERVER": "0"}
            if args.forkserver:
                ways[f"{src} through the fork server"] = {
                    **env, "TELLY_FORKSERVER": "1", "TELLY_FORKSERVER_DIR": str(root / "fs")
                }  # fmt: skip
        figures: dict[str, dict[str, list[tuple[float, float]]]] = {way: {key: [] for key in LABELS} for way in ways}
        params = make_project(root)
        stage = ["finetune", "--task", args.task, "--variant", args.variant, "--params", str(params)]
        for env in ways.values():  # warm: MLflow's database, token store, cache; a started fork server
            timed([py, "-m", "telly", *stage], root, env)
            clear_outputs(root)
        for _ in range(args.repeats):
            for way, env in ways.items():  # interleaved: a shared machine's load falls on each alike
                got = figures[way]
                got["import torch"].append(timed([py, "-c", "import torch"], root, env)[:2])
                got["telly --help"].append(timed([py, "-m", "telly", "--help"], root, env)[:2])
                _, cpu, stdout = timed([py, "-m", "telly", *stage], root, {**env, "FIRST_STEP": "1"})
                got["first step"].append((first_step_seconds(stdout), cpu))
                clear_outputs(root)
                got["whole"].append(timed([py, "-m", "telly", *stage], root, env)[:2])
                clear_outputs(root)
            loads.append(os.getloadavg()[0])
        if args.forkserver:
            timed([py, "-m", "telly", "forkserver", "stop"], root, ways[f"{sources[0]} through the fork server"])
    print(f"{args.task}/{args.variant}; median of {args.repeats}; 1-min load {', '.join(f'{x:.2f}' for x in loads)}")
    for way in ways:
        cpu = "CPU s of the client alone" if way.endswith("fork server") else "CPU s"
        print(f"\n{way}\n\n| figure | median wall s | median {cpu} | runs: wall / CPU s |\n|---|---|---|---|")
        for key, label in LABELS.items():
            walls, cpus = zip(*figures[way][key])
            runs = ", ".join(f"{w:.2f} / {c:.2f}" for w, c in figures[way][key])
            label = label.format(task=args.task, variant=args.variant)
            print(f"| {label} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | {runs} |")


if __name__ == "__main__":
    main()
