"""Studies over several models: the same stages, one model at a time, outputs side by side.

The default model (``study.default``, ``model.name_or_path``) runs the root pipeline, its outputs at the
repository root. Every other model of ``study.models`` runs the stages of ``studies/dvc.yaml`` through
``telly --model <tag> ...``: its params are params.yaml with ``study.settings`` laid over it, the model set to
the tag's, and every output path below moved under ``<study.dir>/<tag>/`` (docs/studies.md).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from telly.config import ConfigError, Params, overlay, parse_params, read_params_file

# Every params key that names something a stage writes (the one list): a study model's copy of each lives under
# <study.dir>/<tag>/, so no file of one model can overwrite another's. Inputs shared by every model (the corpus,
# the task sets) stay where they are.
OUTPUT_PATHS = (
    "pretrain.out_dir",
    "pretrain.checkpoint_dir",
    "pretrain.metrics",
    "extract.out_dir",
    "similarity.representations_dir",
    "similarity.out_dir",
    "probe.representations_dir",
    "probe.out_dir",
    "finetune.output_dir",
    "finetune.results_dir",
    "finetune.baselines_dir",
    "finetune.checkpoint_dir",
    "finetune.cache_dir",
    "finetune.peft.results_dir",
    "tune.results_dir",
    "tune.work_dir",
    "report.out_dir",
    "report.paper_regime.results_dir",
)
MODEL_TAG_KEY = "telly.model"  # the MLflow tag every run of a model's study carries


def _get(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


def relocate(raw: dict[str, Any], folder: Path, tag: str, source: str) -> dict[str, Any]:
    """``raw`` with every output path of :data:`OUTPUT_PATHS` under ``folder`` and the MLflow experiments
    suffixed with ``tag``. An absolute output path is refused: it would be shared by every model."""
    out = copy.deepcopy(raw)
    for key in OUTPUT_PATHS:
        value = _get(out, key)
        if value is None:
            continue
        if Path(str(value)).is_absolute():
            raise ConfigError(
                f"{source}: {key} = {value!r} is absolute; a study over several models needs output paths relative "
                f"to the repository root (each model's copy goes under {folder}/)"
            )
        _set(out, key, str(folder / str(value)))
    if isinstance(out.get("tracking"), dict):
        out["tracking"]["experiment_prefix"] = f"{out['tracking']['experiment_prefix']}-{tag}"
    return out


def model_params(path: str | Path, tag: str) -> Params:
    """The params of model ``tag`` of the study in ``path`` (``study.default``: the root pipeline's own)."""
    raw = read_params_file(path)
    params = parse_params(raw, str(path))
    study = params.study
    if study is None:
        raise ConfigError(f"{path}: --model {tag!r} needs a `study` section listing the models (docs/studies.md)")
    if tag == study.default:
        return params
    if tag not in study.models:
        known = ", ".join([study.default, *study.models])
        raise ConfigError(f"{path}: study.models has no model {tag!r} (known: {known})")
    source = f"{path} (study model {tag})"
    raw = relocate(overlay(raw, study.settings), study.dir / tag, tag, source)
    raw["model"] = {**raw["model"], "name_or_path": study.models[tag]}
    if isinstance(raw.get("finetune"), dict):
        raw["finetune"]["model"] = None  # the study's model, never the root's override
    return parse_params(raw, source).model_copy(update={"study_model": tag})


def all_models(path: str | Path) -> list[tuple[str, Params]]:
    """Every model of the study, the default first: (tag, its params)."""
    params = parse_params(read_params_file(path), str(path))
    if params.study is None:
        return [(params.model_tag, params)]
    return [(params.study.default, params), *((tag, model_params(path, tag)) for tag in params.study.models)]


def output_paths(params: Params) -> dict[str, Path]:
    """Where a model's params put each output (key -> path): the no-collision check of the tests."""
    raw = params.model_dump(mode="json")
    found = {key: _get(raw, key) for key in OUTPUT_PATHS}
    return {key: Path(value) for key, value in found.items() if value is not None}
