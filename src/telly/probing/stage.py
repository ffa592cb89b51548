"""The ``probe`` stage: one property on one model state (``run_one``), then the summary (``summarize``).

``dvc repro probe`` runs ``probe-run@<property>-<state>`` for every pair, then the
summary, which prints at which layer each property peaks with its selectivity,
draws the figures and logs everything to MLflow.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from telly.config import Params
from telly.errors import TellyError
from telly.files import write_text
from telly.jsonl import write_json
from telly.probing import controls, objectives, properties
from telly.probing.features import SPLITS, FeatureBuilder, ModelState, ast_text, lexical_arrays, read_rows
from telly.probing.objectives import ProbingTask, Split
from telly.probing.properties import ProbingProperty
from telly.probing.suite import run_suite
from telly.probing.train import TrainSettings
from telly.registry import named
from telly.runtime import set_seed

log = logging.getLogger(__name__)


def _section(params: Params):
    if params.probe is None:
        raise TellyError("params.yaml has no 'probe' section (see docs/probing.md)")
    return params.probe


def pretrained_source(params: Params) -> str:
    from telly.models.loading import DEFAULT_MODEL

    return str(getattr(params.model, "name_or_path", None) or DEFAULT_MODEL)


def model_state(params: Params, name: str) -> tuple[ModelState | None, str]:
    """The state to probe, or ``None`` and the reason it cannot be probed yet."""
    pretrained = pretrained_source(params)
    if name == "random":
        return ModelState("random", "random", "random", pretrained), ""
    if name == "pretrained":
        return ModelState("pretrained", "pretrained", pretrained, pretrained), ""
    from telly import variants
    from telly.models.extract_stage import resolve_model

    run = _section(params).finetuned
    tag = variants.model_tag(run.task, run.variant, params.finetune.first_seed)
    folder = Path(resolve_model(params, tag)[1])
    for candidate in (folder, folder / "encoder"):
        if (candidate / "config.json").exists():
            return ModelState("finetuned", tag, str(candidate), pretrained), ""
    return None, (
        f"probe.finetuned ({run.task}, {run.variant}): {folder} does not exist yet (no config.json): the fine-tuned "
        "state is skipped; run its fine-tuning stage and `dvc repro probe` again"
    )


def _pooled(reps, pooling: str) -> np.ndarray:
    return np.asarray(reps.pooled(pooling))


def build_tasks(params: Params, prop: str, builder: FeatureBuilder) -> tuple[ProbingTask, ProbingTask]:
    """The property's objective on real labels, and on its control task's labels over the same inputs."""
    p = _section(params)
    entry = properties.get(prop)
    rows = {s: read_rows(p.probing_dir, prop, s, p.max_rows[s]) for s in SPLITS}
    for split, split_rows in rows.items():
        if len(split_rows) < 2:
            raise TellyError(
                f"{p.probing_dir / prop / (split + '.jsonl')}: {len(split_rows)} row(s); a probe needs at least 2"
            )
    # labels are checked before any extraction, so a bad file costs nothing
    labels = {s: _int_labels(rows[s], entry, Path(p.probing_dir) / prop / f"{s}.jsonl") for s in SPLITS}
    module = sys.modules[__name__]
    real = named(module, entry.features, f"{prop}.features")(entry, rows, labels, builder, p.pooling)
    fake = named(controls, entry.control, f"{prop}.control")(real, p.control_seed)
    objective = named(objectives, entry.objective, f"{prop}.objective")
    return objective.of(entry, [real[s] for s in SPLITS]), objective.of(entry, [fake[s] for s in SPLITS])


# the features a property names (telly.probing.properties): its rows -> a Split per split


def token_features(entry: ProbingProperty, rows: dict, labels: dict, builder: FeatureBuilder, pooling: str) -> dict:
    """One row per source token: its last subword's hidden states, its type label and its string."""
    out = {}
    for s in SPLITS:
        ids, codes = [str(r["id"]) for r in rows[s]], [r["code"] for r in rows[s]]
        x, y, types = lexical_arrays(rows[s], builder.representations(entry.name, s, codes, ids, tokens=True))
        out[s] = Split(x, y, types=types)
    return out


def pair_features(entry: ProbingProperty, rows: dict, labels: dict, builder: FeatureBuilder, pooling: str) -> dict:
    """The pooled code and the pooled AST-only sequence of each pair."""
    out = {}
    for s in SPLITS:
        ids, codes = [str(r["id"]) for r in rows[s]], [r["code"] for r in rows[s]]
        code = _pooled(builder.representations(entry.name, s, codes, ids), pooling)
        asts = [ast_text(r) for r in rows[s]]
        out[s] = Split(code, labels[s], _pooled(builder.representations(entry.name, s, asts, ids, side="ast"), pooling))
    return out


def pooled_features(entry: ProbingProperty, rows: dict, labels: dict, builder: FeatureBuilder, pooling: str) -> dict:
    """The pooled function."""
    out = {}
    for s in SPLITS:
        ids, codes = [str(r["id"]) for r in rows[s]], [r["code"] for r in rows[s]]
        out[s] = Split(_pooled(builder.representations(entry.name, s, codes, ids), pooling), labels[s])
    return out


def _int_labels(rows: list[dict[str, Any]], entry: ProbingProperty, path: Path) -> np.ndarray | None:
    """Integer labels of a split, or a TellyError naming the file and the first bad rows."""
    if entry.labels == "classes":
        allowed = range(entry.n_classes)
        bad = [r["id"] for r in rows if not (isinstance(r["label"], int) and r["label"] in allowed)]
        if bad:
            raise TellyError(
                f"{path}: rows {bad[:3]}: label must be an integer class {allowed.start}..{allowed.stop - 1}"
            )
        return np.asarray([r["label"] for r in rows], dtype=np.int64)
    if entry.labels == "clone_classes":  # any label type
        return np.unique([str(r["label"]) for r in rows], return_inverse=True)[1].astype(np.int64)
    return None  # tokens: the features read them


# ------------------------------------------------------------------ outputs


def out_folder(params: Params, state: str, prop: str) -> Path:
    return Path(_section(params).out_dir) / state / prop


CURVE_COLUMNS = ("layer", "score", "score_std", "control", "selectivity", "selectivity_std", "weight", "weight_std")


def curve_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer rows for ``dvc plots``: layer-wise score, control, selectivity, and the mix weight."""
    m = result["metric"]
    layer = result.get("layer-wise")
    weights = result.get("weighted-layer-wise", {}).get("layer_weights")
    rows = []
    for l in range(result["n_hidden_states"]):
        row: dict[str, Any] = {"layer": l}
        if layer:
            row.update(
                score=layer[m]["mean"][l],
                score_std=layer[m]["std"][l],
                control=layer[f"control_{m}"]["mean"][l],
                selectivity=layer[f"selectivity_{m}"]["mean"][l],
                selectivity_std=layer[f"selectivity_{m}"]["std"][l],
            )
        if weights:
            row.update(weight=weights["mean"][l], weight_std=weights["std"][l])
        rows.append(row)
    return rows


def flat_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars for ``dvc metrics``: the peak layer, the weighted probe, baselines, and every layer."""
    if "skipped" in result:
        return {"skipped": result["skipped"]}
    m = result["metric"]
    out: dict[str, Any] = {"metric": m, "baseline": result["baseline"]}
    if "peak" in result:
        out["peak"] = result["peak"]
        out["layers"] = {}
        for l in range(result["n_hidden_states"]):
            out["layers"][str(l)] = {
                name: result["layer-wise"][name]["mean"][l]
                for name in result["layer-wise"]
                if isinstance(result["layer-wise"][name], dict) and "mean" in result["layer-wise"][name]
            }
    if "weighted-layer-wise" in result:
        w = result["weighted-layer-wise"]
        out["weighted"] = {
            **{name: w[name]["mean"][0] for name in w if isinstance(w[name], dict) and name != "layer_weights"},
            f"{m}_std": w[m]["std"][0],
            "peak_weight_layer": result["weighted_peak_layer"],
        }
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def write_outputs(folder: Path, result: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "details.json", result)
    write_json(folder / "metrics.json", flat_metrics(result))
    _write_csv(folder / "curve.csv", [] if "skipped" in result else curve_rows(result))


def peak_line(state: str, result: dict[str, Any]) -> str:
    prop = result["property"]
    if "skipped" in result:
        return f"{prop:<10} {state:<10} skipped: {result['skipped']}"
    m = result["metric"]
    parts = [f"{prop:<10} {state:<10}"]
    if "peak" in result:
        pk = result["peak"]
        parts.append(
            f"peaks at layer {pk['layer']}: {m} {pk[m]:.3f} ± {pk['std']:.3f}, selectivity {pk['selectivity']:+.3f}"
        )
    if "weighted-layer-wise" in result:
        w = result["weighted-layer-wise"]
        parts.append(
            f"| weighted {m} {w[m]['mean'][0]:.3f} (selectivity {w[f'selectivity_{m}']['mean'][0]:+.3f}), "
            f"largest weight on layer {result['weighted_peak_layer']}"
        )
    parts.append(f"| majority {m} {result['baseline'][m]:.3f}")
    return " ".join(parts)


# -------------------------------------------------------------------- stage


def run_one(params: Params, prop: str, state_name: str) -> dict[str, Any]:
    """Probe one property on one model state and write its outputs."""
    p = _section(params)
    if prop not in p.properties or state_name not in p.states:
        raise TellyError(
            f"probe: property {prop!r} / state {state_name!r} not in probe.properties {p.properties} "
            f"/ probe.states {p.states}"
        )
    folder = out_folder(params, state_name, prop)
    state, reason = model_state(params, state_name)
    if state is None:
        log.warning(reason)
        result = {"property": prop, "state": state_name, "skipped": reason}
        write_outputs(folder, result)
        print(peak_line(state_name, result))
        return result

    set_seed(params.seed)
    builder = FeatureBuilder(
        state, p.representations_dir, max_length=p.max_length, batch_size=p.extract_batch_size, seed=params.seed
    )
    task, control = build_tasks(params, prop, builder)
    settings = TrainSettings(
        epochs=p.epochs,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        head=p.head,
        mlp_hidden=p.mlp_hidden,
    )
    result = run_suite(prop, task, control, settings, p.seeds, p.probe_types)
    result.update(state=state_name, model=state.source, model_tag=state.tag, pooling=p.pooling)
    write_outputs(folder, result)
    print(peak_line(state_name, result))
    return result
