"""Gather every (property, model state) result: the peak table, the figures, MLflow.

Figures (``<out_dir>/figures/``), one pair per model state:
- ``curves-<state>.png``: a curve per property over the hidden states (layer-wise
  probes, mean and std over seeds, dashed: the control task);
- ``weights-<state>.png``: the weighted probe's mean layer weights per property,
  the chart of the paper's RQ1 figure.

MLflow: a parent run per model state, a nested run per property (per-layer curves
as stepped metrics, the weighted probe, selectivity, baseline) and, inside it, a
nested run per hidden state.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from telly.config import Params
from telly.jsonl import write_json
from telly.probing.properties import PROPERTIES
from telly.probing.stage import _section, flat_metrics, out_folder, peak_line

log = logging.getLogger(__name__)


def load_results(params: Params) -> dict[str, dict[str, dict[str, Any]]]:
    p = _section(params)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for state in p.states:
        for prop in p.properties:
            path = out_folder(params, state, prop) / "details.json"
            if path.exists():
                results.setdefault(state, {})[prop] = json.loads(path.read_text(encoding="utf-8"))
            else:
                log.warning(
                    "%s: missing; run `dvc repro probe` (or `telly probe --property %s --state %s`)", path, prop, state
                )
    return results


def _percent(result: dict[str, Any], values: list[float]) -> list[float]:
    # the paper reports some metrics in [0, 1] (syntactic accuracy); plot every property in percent
    return [100 * v for v in values] if PROPERTIES[result["property"]].fraction else values


def plot_state(state: str, results: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    done = {k: r for k, r in results.items() if "skipped" not in r}
    written = []
    if any("layer-wise" in r for r in done.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for prop, r in done.items():
            if "layer-wise" not in r:
                continue
            m = r["metric"]
            mean, std = _percent(r, r["layer-wise"][m]["mean"]), _percent(r, r["layer-wise"][m]["std"])
            layers = range(len(mean))
            line = ax.errorbar(layers, mean, yerr=std, marker="o", capsize=3, label=f"{prop} ({m})")
            ax.plot(
                layers,
                _percent(r, r["layer-wise"][f"control_{m}"]["mean"]),
                ls="--",
                color=line[0].get_color(),
                alpha=0.5,
            )
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.set_ylabel("test score (%)")
        ax.set_title(f"Layer-wise probes, {state} model (dashed: control task)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(folder / f"curves-{state}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    weighted = {k: r for k, r in done.items() if "weighted-layer-wise" in r}
    if weighted:
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / len(weighted)
        for i, (prop, r) in enumerate(weighted.items()):
            w = r["weighted-layer-wise"]["layer_weights"]
            xs = [l + (i - (len(weighted) - 1) / 2) * width for l in range(len(w["mean"]))]
            ax.bar(xs, w["mean"], width=width, yerr=w["std"], capsize=2, label=prop)
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.set_ylabel("mean layer weight")
        ax.set_title(f"Weighted-layer-wise probes: learned layer weights, {state} model")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(folder / f"weights-{state}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def _log_mlflow(params: Params, results: dict[str, dict[str, dict[str, Any]]], figures: dict[str, list[Path]]) -> None:
    import mlflow

    from telly.tracking import start_run

    p = _section(params)
    settings = p.model_dump(mode="json")
    for state, by_prop in results.items():
        with start_run(params, "probe", run_name=state, tags={"telly.model_state": state}, log_params=settings):
            for path in figures.get(state, []):
                mlflow.log_artifact(str(path), artifact_path="figures")
            for prop, r in by_prop.items():
                with start_run(
                    params,
                    "probe",
                    run_name=f"{state}/{prop}",
                    nested=True,
                    tags={"telly.model_state": state, "telly.property": prop},
                ):
                    if "skipped" in r:
                        mlflow.set_tag("skipped", r["skipped"])
                        continue
                    mlflow.log_params(
                        {
                            "metric": r["metric"],
                            "model": r.get("model", ""),
                            "n_train": r["sizes"]["train"],
                            "n_test": r["sizes"]["test"],
                        }
                    )
                    flat = flat_metrics(r)
                    scalars = {f"weighted_{k}": v for k, v in flat.get("weighted", {}).items()}
                    scalars.update({f"baseline_{k}": v for k, v in flat["baseline"].items()})
                    if "peak" in flat:
                        scalars.update({f"peak_{k}": v for k, v in flat["peak"].items()})
                    mlflow.log_metrics(scalars)
                    folder = out_folder(params, state, prop)
                    mlflow.log_artifact(str(folder / "curve.csv"))
                    mlflow.log_artifact(str(folder / "details.json"))
                    weights = r.get("weighted-layer-wise", {}).get("layer_weights", {}).get("mean", [])
                    for l, w in enumerate(weights):
                        mlflow.log_metric("layer_weight", w, step=l)
                    for l, layer_scores in flat.get("layers", {}).items():
                        for name, value in layer_scores.items():
                            mlflow.log_metric(f"layerwise_{name}", value, step=int(l))
                        with start_run(
                            params,
                            "probe",
                            run_name=f"{state}/{prop}/layer-{l}",
                            nested=True,
                            tags={"telly.model_state": state, "telly.property": prop, "telly.layer": l},
                        ):
                            mlflow.log_metrics(layer_scores)


def summarize(params: Params, *, track: bool = True) -> dict[str, Any]:
    """Write ``summary.json`` and the figures, print where each property peaks, log to MLflow."""
    p = _section(params)
    results = load_results(params)
    figures = {state: plot_state(state, by_prop, Path(p.out_dir) / "figures") for state, by_prop in results.items()}
    lines = [peak_line(state, r) for state, by_prop in results.items() for r in by_prop.values()]
    summary = {state: {prop: flat_metrics(r) for prop, r in by_prop.items()} for state, by_prop in results.items()}
    write_json(Path(p.out_dir) / "summary.json", summary)
    (Path(p.out_dir) / "summary.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("RQ1 probing: where each property peaks (layer-wise, mean ± std over seeds; selectivity = task - control)")
    for line in lines:
        print("  " + line)
    if track:
        _log_mlflow(params, results, figures)
    return summary
