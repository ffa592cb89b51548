"""Several tuning workers on one study, one of them killed with SIGKILL mid-trial (SQLite and PostgreSQL tests).

The victim trains slowly (its fake trial sleeps), so it is surely inside a trial when it is
killed; the survivors fail its trial once the heartbeat is stale, retry it from the state it
saved, and fill the study. :func:`check_study` asserts that no trial was lost, none was run
twice, and none is left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from telly.tuning import tune
from tuning_fixture import LAYERS, TASK, fake_train, make_params

TESTS = Path(__file__).resolve().parent

WORKER = """
import sys
from telly.config import load_params
from telly.tuning import tune
from tuning_fixture import LAYERS, TASK, fake_train
tune(load_params(sys.argv[1]), TASK, train_fn=fake_train, layers=LAYERS, storage=sys.argv[2] or None)
"""


def _ran(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_workers_and_kill_one(
    tmp_path: Path, raw_params: dict, tracking_uri: str, storage: str | None = None, *, workers: int = 3, n_trials=8
) -> tuple[optuna.Study, list[dict], int, list[str]]:
    """``workers`` processes fill one study; the first is killed in its first trial. Returns the study,
    what each worker ran (the fake trainer's log), the killed pid and the survivors' outputs."""
    params, raw = make_params(
        raw_params, tmp_path, n_trials=n_trials, pruner="none", epochs=[2], storage=storage, repeats=0
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    log = tmp_path / "ran.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TELLY_FAKE_LOG": str(log),
    }
    # The study exists before the workers start (with its reference trial 0 run).
    tune(params, TASK, train_fn=fake_train, layers=LAYERS, n_trials=1, storage=storage)

    def start(delay: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(params_file), storage or ""],
            env={**env, "TELLY_FAKE_DELAY": delay},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    victim = start("60")  # one epoch takes a minute: it is mid-trial until killed
    survivors = [start("0.2") for _ in range(workers - 1)]
    deadline = time.monotonic() + 240
    while not any(r["pid"] == victim.pid for r in _ran(log)):
        assert victim.poll() is None, victim.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the victim never started a trial"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    outputs = [w.communicate(timeout=300)[0] for w in survivors]
    for w, out in zip(survivors, outputs):
        assert w.returncode == 0, out[-3000:]
    study = optuna.load_study(study_name=TASK, storage=storage or f"sqlite:///{params.tune.results_dir / TASK}.db")
    return study, _ran(log), victim.pid, outputs


def check_study(study: optuna.Study, ran: list[dict], killed_pid: int, n_trials: int) -> None:
    trials = study.trials
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, states
    # the killed worker's trial failed (heartbeat) and was retried once, with the same settings
    (dead,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    killed_runs = [r for r in ran if r["pid"] == killed_pid]
    assert len(killed_runs) == 1 and (killed_runs[0]["variant"], killed_runs[0]["lr"]) == (
        dead.user_attrs["variant"],
        dead.params["lr"],
    )
    # the retry ran in another worker and resumed from the state the killed one saved in the shared folder
    (resumed,) = [r for r in ran if r["resumed"]]
    assert resumed["pid"] != killed_pid and resumed["state"] == killed_runs[0]["state"]
    assert len({r["pid"] for r in ran} - {killed_pid}) == 2, "both survivors ran trials"
    # nothing lost, nothing run twice: every trial a worker started is one trial of the study
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len(trials) == 1 + len(ran)  # trial 0 ran in the test process, before the workers (no log)
    assert sorted((r["variant"], r["lr"]) for r in ran) == sorted(
        (t.user_attrs["variant"], t.params["lr"]) for t in trials[1:]
    )
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # past the budget: the trial a survivor had started when another reached it, the retry (queued trials
    # run past n_trials), and a trial a survivor starts when the other took the retry first (at most 3)
    assert n_trials <= finished <= n_trials + 3, finished
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == len(trials)
