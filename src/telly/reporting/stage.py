"""The ``report`` stage: read every stage's results, check the paper's claims, draw the figures,
write ``report.md`` + ``report.html`` (self-contained), ``claims.json`` and the ``dvc plots`` data."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from telly import variants
from telly.config import Params
from telly.errors import TellyError
from telly.files import atomic_path, write_text
from telly.jsonl import write_json
from telly.reporting import document, figures
from telly.reporting.claims import MAIN_METRIC, Claim, check_claims
from telly.reporting.html import to_html
from telly.reporting.inputs import Inputs, read_inputs
from telly.reporting.paper import load_paper

log = logging.getLogger(__name__)


def draw(inputs: Inputs, paper: dict[str, Any], folder: Path) -> dict[str, Path | None]:
    for old in folder.glob("*.png"):
        old.unlink()  # a figure whose inputs are gone must not linger
    return {
        "probe_curves": figures.probe_curves(inputs, folder / "rq1-probe-curves.png"),
        "layer_weights": figures.layer_weights(inputs, paper, folder / "rq1-layer-weights.png"),
        "similarity": figures.similarity(inputs, paper, folder / "rq2-similarity.png"),
        "quality_vs_cost": figures.quality_vs_cost(inputs, paper, folder / "rq3-quality-vs-cost.png"),
    }


def plots_data(inputs: Inputs, folder: Path) -> list[Path]:
    """``plots/rq3-<task>.csv`` for ``dvc plots``: per K (-1 = Base) the reductions and the metric vs Base,
    suffixed ``_cached`` / ``_uncached`` by regime."""
    from telly.finetuning.table import task_table

    written = []
    for old in folder.glob("rq3-*.csv"):
        old.unlink()
    for task in MAIN_METRIC:
        frames = {}
        for regime in inputs.regimes:
            runs = regime.runs.get(task, [])
            if any(r["variant"] == variants.BASE for r in runs):
                frames[regime.cached] = task_table(task, runs)
        if not frames:
            continue
        rows: dict[int, dict[str, Any]] = {}
        for cached, df in frames.items():
            suffix = "_cached" if cached else "_uncached"
            for r in df.to_dict("records"):
                k = variants.k_of(r["variant"])
                k = -1 if k is None else k
                row = rows.setdefault(k, {"k": k, "params_reduction_pct": round(r["params_reduction_pct"], 3)})
                row[f"epoch_reduction_pct{suffix}"] = round(r["epoch_reduction_pct"], 3)
                row[f"convergence_reduction_pct{suffix}"] = round(r["convergence_reduction_pct"], 3)
                row[f"metric_vs_base_pct{suffix}"] = round(r[f"{MAIN_METRIC[task]}_vs_base_pct"], 3)
        import pandas as pd

        path = folder / f"rq3-{task}.csv"
        with atomic_path(path) as tmp:
            pd.DataFrame([rows[k] for k in sorted(rows)]).to_csv(tmp, index=False)
        written.append(path)
    return written


def dvc_metrics(claims: list[Claim]) -> dict[str, Any]:
    """Numbers only, for ``dvc metrics diff``: 1 = reproduced, 0 = not, null = inconclusive or not checked;
    deepest non-inferior K per task."""
    return {
        "claims": {c.id: None if c.run.holds is None else int(c.run.holds) for c in claims},
        "deepest_k_within_base": document.deepest_per_task(claims),
    }


def claims_json(claims: list[Claim]) -> dict[str, Any]:
    return {
        c.id: {
            "claim": c.text,
            "rq": c.rq,
            "this_run": c.run.verdict,
            "firm": c.firm,
            "firmness": c.firmness,
            **({"caveat": c.caveat} if c.caveat else {}),
            "evidence": c.run.evidence,
            **({"per_task": c.run.details["tasks"]} if "tasks" in c.run.details else {}),
            "paper": c.paper.verdict,
            "paper_evidence": c.paper.evidence,
        }
        for c in claims
    }


def run(params: Params) -> Path:
    """Write the report under ``report.out_dir``; sections whose inputs are missing say what to run."""
    if params.report is None:
        raise TellyError("params.yaml has no 'report' section (see docs/report.md)")
    settings = params.report
    out = Path(settings.out_dir)
    paper = load_paper(settings.paper_numbers)
    inputs = read_inputs(params)
    claims = check_claims(inputs, settings, paper)
    drawn = draw(inputs, paper, out / "figures")
    plots_data(inputs, out / "plots")
    markdown = document.build(inputs, claims, paper, params, drawn)
    write_text(out / "report.md", markdown)
    write_text(out / "report.html", to_html(markdown, out))
    write_json(out / "claims.json", claims_json(claims))
    write_json(out / "metrics.json", dvc_metrics(claims))
    for c in claims:
        print(f"{c.run.verdict:>15}  {c.text}  (paper's numbers: {c.paper.verdict})")
    if inputs.missing:
        print("missing inputs: " + "; ".join(f"{k}: {v}" for k, v in inputs.missing.items()))
    print(f"report: {out / 'report.md'} and {out / 'report.html'}")
    if settings.track:
        _log_mlflow(params, out, claims, inputs)
    return out / "report.md"


def _log_mlflow(params: Params, out: Path, claims: list[Claim], inputs: Inputs) -> None:
    import mlflow

    from telly.tracking import start_run

    with start_run(
        params,
        "report",
        log_params=params.report.model_dump(mode="json"),
        tags={"telly.missing_inputs": ",".join(inputs.missing) or "none"},
    ):
        # 1 = reproduced, 0 = not reproduced; a claim not checked has no metric
        mlflow.log_metrics({f"claim.{c.id}": float(c.run.holds) for c in claims if c.run.holds is not None})
        mlflow.log_artifacts(str(out), artifact_path="report")
