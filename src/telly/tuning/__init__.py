"""Optuna studies of freeze depth K and learning rate, one per task (docs/tuning.md).

- ``space``: the search space (K in {Base, 0..L-1} as k = -1..L-1, log-uniform learning rate);
- ``study``: storage (SQLite by default, any database URL for workers), sampler, pruner, budget;
- ``objective``: one trial = one fine-tuning run, pruned per epoch, a nested MLflow run;
- ``report``: best settings, Pareto front, importances, plots;
- ``run``: the stage, :func:`tune`.
"""

from telly.tuning.run import tune

__all__ = ["tune"]
