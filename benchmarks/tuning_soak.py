"""Soak run: tuning workers on one PostgreSQL study and MLflow server, one worker killed again and again.

Starts the team services (``telly services up``) in a temp folder, creates one study, then
runs ``--workers`` worker processes that share it until it has ``--trials`` finished trials.
Every ``--kill-every`` seconds one running worker, picked at random, is killed with SIGKILL
and a new one takes its place (as a supervisor or a preemptible machine would), and every
``--restart-db-every`` seconds PostgreSQL is stopped and started again under the running
workers (``--db-down`` seconds down): shorter than the outage limit (``tune.grace_seconds``
here), the workers ride it out; a worker that exits anyway (exit 75) is restarted. The trainer
is the tests' stand-in (``tests/tuning_fixture.py``: a fake fine-tuning run that sleeps per
epoch), so the run measures the fault handling, not training.

At the end it checks what the Done-when of issue 17 asks: every trial COMPLETE, PRUNED or
FAIL-then-retried, none RUNNING or WAITING, no trial run twice or lost (each run the fake
trainer logged is exactly one trial), and prints a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

WORKER = """
import sys
from telly.config import load_params
from telly.tuning import tune
from tuning_fixture import LAYERS, TASK, fake_train
tune(load_params(sys.argv[1]), TASK, train_fn=fake_train, layers=LAYERS)  # storage: $TELLY_TUNE_STORAGE
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--trials", type=int, default=90, help="finished trials the study must reach")
    parser.add_argument("--kill-every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds per fake epoch")
    parser.add_argument("--restart-db-every", type=float, default=60.0, help="seconds between database restarts")
    parser.add_argument("--db-down", type=float, default=2.0, help="seconds the database stays down")
    parser.add_argument("--grace", type=float, default=10.0, help="tune.grace_seconds (also the outage limit)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import optuna
    from optuna.trial import TrialState

    from telly.services import Services, _system_user
    from telly.tuning import tune
    from telly.tuning.study import counts
    from tuning_fixture import LAYERS, TASK, fake_train, make_params

    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="telly-soak-"))
    folder.chmod(0o755)  # PostgreSQL's system user enters it
    services = Services(folder / "services")
    started = time.monotonic()
    try:
        state = services.up()
        storage = services.database_url("optuna")
        os.environ.update(services.client_env(state))  # the MLflow login, as `source services.env` gives it
        raw_params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params, raw = make_params(
            raw_params,
            folder,
            n_trials=args.trials,
            epochs=[3],
            pruner="median",
            storage=storage,
            max_failed_trials=50,
            grace_seconds=args.grace,
            repeats=0,  # the study-creating session runs trial 0 alone, outside the log
        )
        params_file = folder / "params.yaml"
        params_file.write_text(yaml.safe_dump(raw))
        log = folder / "ran.jsonl"
        env = {
            **os.environ,
            "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "TELLY_FAKE_LOG": str(log),
            "TELLY_FAKE_DELAY": str(args.delay),
            "TELLY_TUNE_STORAGE": storage,  # the environment, not argv: it holds the password
        }
        tune(params, TASK, train_fn=fake_train, layers=LAYERS, n_trials=1, storage=storage)  # creates the study

        def start() -> subprocess.Popen:
            return subprocess.Popen(
                [sys.executable, "-c", WORKER, str(params_file)],
                env=env,
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        workers = [start() for _ in range(args.workers)]
        kills, replaced, failed_exits, restarts = 0, 0, Counter(), 0
        next_kill = time.monotonic() + args.kill_every
        next_restart = time.monotonic() + args.restart_db_every
        while any(w.poll() is None for w in workers):
            time.sleep(0.2)
            for i, w in enumerate(workers):
                if w.poll() is not None and w.returncode != 0 and w.returncode != -signal.SIGKILL:
                    failed_exits[w.returncode] += 1
                    workers[i] = start()
            if time.monotonic() >= next_restart and any(w.poll() is None for w in workers):
                services.stop_postgres()
                time.sleep(args.db_down)
                services.start_postgres(state, _system_user())
                restarts += 1
                next_restart = time.monotonic() + args.restart_db_every
            alive = [w for w in workers if w.poll() is None]
            if time.monotonic() >= next_kill and alive:
                study = optuna.load_study(study_name=TASK, storage=storage)
                finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
                next_kill = time.monotonic() + args.kill_every
                if finished >= args.trials:
                    continue  # the study is done: let the workers settle and exit
                victim = rng.choice(alive)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
                workers[workers.index(victim)] = start()
                replaced += 1
        wall = time.monotonic() - started

        study = optuna.load_study(study_name=TASK, storage=storage)
        trials = study.trials
        c = counts(study)
        ran = [json.loads(line) for line in log.read_text().splitlines()]
        retried = [t for t in trials if t.system_attrs.get("failed_trial") is not None]
        resumed = sum(r["resumed"] for r in ran)
        problems = []
        if c["running"] or c["waiting"]:
            problems.append(f"{c['running']} running, {c['waiting']} waiting")
        if c["fail"]:
            problems.append(f"{c['fail']} failed and not retried")
        if [t.number for t in trials] != list(range(len(trials))):
            problems.append("trial numbers are not 0..n-1")
        # A worker may be killed anywhere, also before its trial reached the trainer: then the trial has no
        # run in the log. No run without its own trial (nothing run twice), no finished trial without a run.
        runs = Counter((r["variant"], r["lr"]) for r in ran)
        started = Counter((t.user_attrs.get("variant"), t.params.get("lr")) for t in trials[1:])
        finished = Counter(
            (t.user_attrs.get("variant"), t.params.get("lr"))
            for t in trials[1:]
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        )
        if runs - started:
            problems.append(f"runs without a trial of their own: {dict(runs - started)}")
        if finished - runs:
            problems.append(f"finished trials the trainer never ran: {dict(finished - runs)}")
        before_training = sum(t.user_attrs.get("variant") is None for t in trials)
        load = os.getloadavg()[0]
        print(
            f"| {args.workers} workers, {args.trials} trials, 3 fake epochs x {args.delay} s, SIGKILL every "
            f"{args.kill_every:g} s, database restart every {args.restart_db_every:g} s ({args.db_down:g} s down, grace "
            f"{args.grace:g} s) | {kills} kills, {restarts} restarts | {len(trials)} trials: {c['complete']} complete, "
            f"{c['pruned']} pruned, {c['interrupted']} failed-then-retried ({len(retried)} retries, {resumed} "
            f"resumed from saved state, {before_training} killed before training), {c['fail']} failed, "
            f"{c['running']} running, {c['waiting']} waiting | "
            f"{wall:.0f} s, load {load:.1f} | {'OK' if not problems else '; '.join(problems)} |"
        )
        if failed_exits:
            print(f"(workers that exited with an error and were restarted, by exit code: {dict(failed_exits)})")
        sys.exit(1 if problems else 0)
    finally:
        services.down()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
