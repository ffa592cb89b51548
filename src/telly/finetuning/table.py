"""One table per task, as the paper's section 3.3: cost and quality of every variant, with ratios to Base.

"↓%" columns are reductions against Base (100 x (1 - variant / Base)); "Δ% vs Base"
is the change of the task's main metric (100 x (variant / Base - 1), positive = better).
Time to convergence follows the run's convergence rule (docs/finetuning.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from telly import tasks, variants
from telly.config import Params
from telly.errors import TellyError
from telly.files import atomic_path, write_text
from telly.jsonl import write_json

log = logging.getLogger(__name__)


def clock(seconds: float) -> str:
    """12.3s, 4m05s or 1h02m03s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def load_runs(folder: Path) -> list[dict]:
    """Every run json of one task: ``<variant>/seed<S>.json`` (one per seed); a folder without any holds one run
    per variant, ``<variant>.json`` (the paper-regime runs, results from before seeds). Sorted by variant, then
    seed; each with ``results_path`` (where it was read). The two layouts never mix: stale ``<variant>.json``
    files beside seed runs are ignored."""
    runs = []
    folder = Path(folder)
    for path in sorted(folder.glob("*/seed*.json")) or sorted(folder.glob("*.json")):
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TellyError(f"{path}: not valid JSON ({err.msg})") from None
        runs.append({**run, "results_path": str(path)})
    return sorted(runs, key=lambda r: (variants.sort_key(r["variant"]), r.get("settings", {}).get("seed", 0)))


def task_table(task: str, runs: list[dict]) -> pd.DataFrame:
    """The numeric table, one row per variant: the mean over its seeds (``seeds`` = how many), each test metric's
    standard deviation over seeds in ``<metric>_std`` (0 with one seed), ratios of the means against Base."""
    spec = tasks.get(task)
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    if variants.BASE not in by_variant:
        raise TellyError(f"{task}: no Base run among {sorted(by_variant)}; ratios need one")

    def mean(group: list[dict], get) -> float:
        return float(np.mean([get(r) for r in group]))

    base = by_variant[variants.BASE]
    b = {
        key: mean(base, lambda r, key=key: r["cost"][key])
        for key in ("paper_params", "epoch_seconds", "time_to_convergence")
    }
    base_main = mean(base, lambda r: r["test"][spec.main_metric])
    rows = []
    for variant, group in by_variant.items():
        cost = {
            key: mean(group, lambda r, key=key: r["cost"][key])
            for key in group[0]["cost"]
            if _numeric(group[0]["cost"][key])
        }
        test = {m: [r["test"][m] for r in group] for m in spec.metrics}
        rows.append(
            {
                "variant": variant,
                "seeds": len(group),
                "paper_params_m": cost["paper_params"] / 1e6,
                "params_reduction_pct": 100 * (1 - cost["paper_params"] / b["paper_params"]),
                "trainable_params_m": cost["trainable_params"] / 1e6,
                "epoch_seconds": cost["epoch_seconds"],
                "epoch_reduction_pct": 100 * (1 - cost["epoch_seconds"] / b["epoch_seconds"]),
                "epochs_to_convergence": cost["epochs_to_convergence"],
                "convergence_seconds": cost["time_to_convergence"],
                "convergence_reduction_pct": 100 * (1 - cost["time_to_convergence"] / b["time_to_convergence"]),
                "cache_seconds": cost["cache_seconds"],
                "peak_memory_mb": cost["peak_memory_mb"],
                **{m: float(np.mean(v)) for m, v in test.items()},
                **{f"{m}_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for m, v in test.items()},
                f"{spec.main_metric}_vs_base_pct": 100 * (float(np.mean(test[spec.main_metric])) / base_main - 1)
                if base_main
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def mean_std(row: dict, metric: str) -> str:
    """``0.512 ± 0.013`` over seeds, or the one value of a single seed."""
    if row.get("seeds", 1) > 1:
        return f"{row[metric]:.4g} ± {row[f'{metric}_std']:.2g}"
    return f"{row[metric]:.4g}"


def to_markdown(task: str, df: pd.DataFrame) -> str:
    main = tasks.get(task).main_metric
    header = [
        "Variant",
        "Train params (M)",
        "↓%",
        "Trainable (M)",
        "Epoch time",
        "↓%",
        "#Ep→conv",
        "Conv. time",
        "↓%",
        "Peak mem (MB)",
        "Seeds",
        *tasks.get(task).metrics,
        f"{main} Δ% vs Base",
    ]
    lines = [f"#### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in df.to_dict("records"):
        cells = [
            variants.label(r["variant"]),
            f"{r['paper_params_m']:.2f}",
            f"{r['params_reduction_pct']:.1f}",
            f"{r['trainable_params_m']:.2f}",
            clock(r["epoch_seconds"]),
            f"{r['epoch_reduction_pct']:.1f}",
            str(r["epochs_to_convergence"]),
            clock(r["convergence_seconds"]),
            f"{r['convergence_reduction_pct']:.1f}",
            f"{r['peak_memory_mb']:.0f}",
            str(r["seeds"]),
            *(mean_std(r, m) for m in tasks.get(task).metrics),
            f"{r[f'{main}_vs_base_pct']:+.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(task: str, runs_dir: Path, out_dir: Path, keep: set[tuple[str, int]] | None = None) -> pd.DataFrame:
    """Read ``runs_dir/*.json`` (only the ``keep`` (variant, seed) runs, when given) and write
    ``out_dir/<task>.{csv,md,json}``."""
    runs = load_runs(runs_dir)
    if keep is not None:
        runs = [r for r in runs if (r["variant"], r.get("settings", {}).get("seed")) in keep]
    if not runs:
        raise TellyError(f"{runs_dir}: no run results (run `dvc repro finetune-run` first)")
    df = task_table(task, runs)
    with atomic_path(out_dir / f"{task}.csv") as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    write_text(out_dir / f"{task}.md", to_markdown(task, df))
    write_json(out_dir / f"{task}.json", {r["variant"]: r for r in json.loads(df.to_json(orient="records"))})
    return df


def run_table(params: Params, task: str) -> None:
    """``telly finetune --task T --table``: aggregate the task's runs into tables/<task>.{csv,md,json}."""
    if params.finetune is None:
        raise TellyError("params: the finetune section is missing")
    results = params.finetune.results_dir
    df = write_table(task, results / task, results / "tables", keep=params.finetune.runs_of(task))
    log.info("%s: table of %d variants in %s", task, len(df), results / "tables")
