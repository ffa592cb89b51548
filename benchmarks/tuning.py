"""The tune stage's own cost: Optuna + MLflow bookkeeping per trial, and a real session's figures.

Target: bookkeeping (SQLite study, heartbeat, nested MLflow run, pruning report) well
under 5% of a trial on CPU, where one fine-tuning trial takes tens of seconds; the
outputs (JSON, CSV, fANOVA importances, five plots) in a few seconds.

Part 1 runs N trials of the tests' stand-in trainer (no training at all) in a temp folder.
Part 2 (``--task T``) summarises a finished real session from ``results/tune/T.csv``.
Prints markdown rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def durations(csv: Path):
    import pandas as pd

    frame = pd.read_csv(csv)
    return frame, pd.to_timedelta(frame["duration"]).dt.total_seconds()


def bookkeeping(n_trials: int = 20) -> None:
    """Trials of a stand-in that trains nothing: a trial's duration is all bookkeeping."""
    from telly.tuning import tune
    from tuning_fixture import LAYERS, TASK, fake_train, make_params

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        params, _ = make_params(raw, Path(tmp), n_trials=n_trials, epochs=[3])
        start = time.perf_counter()
        tune(params, TASK, train_fn=fake_train, layers=LAYERS)
        total = time.perf_counter() - start
        _, seconds = durations(params.tune.results_dir / f"{TASK}.csv")
    print(
        f"| bookkeeping per trial (stand-in trainer, {len(seconds)} trials, 3 epochs, median pruner) "
        f"| mean {seconds.mean():.2f} s, max {seconds.max():.2f} s |"
    )
    print(
        f"| the rest of the session: study + MLflow store creation, outputs (JSON, CSV, importances, plots) "
        f"| {total - seconds.sum():.1f} s |"
    )


def session(task: str) -> None:
    frame, seconds = durations(ROOT / "results/tune" / f"{task}.csv")
    for state, group in seconds.groupby(frame["state"]):
        print(f"| {task}: {state.lower()} trials | {len(group)}, mean {group.mean():.1f} s, max {group.max():.1f} s |")
    print(f"| {task}: sum of trial durations | {seconds.sum() / 60:.1f} min |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", help="summarise results/tune/<task>.csv of a finished session")
    args = parser.parse_args()
    bookkeeping()
    if args.task:
        session(args.task)
