"""The ``extract`` stage: representations of the configured datasets for each model tag.

Model tags name folders under ``extract.out_dir`` (docs/architecture.md):
``pretrained`` is ``model.name_or_path``; ``random`` is that architecture randomly
initialised; ``finetuned-<task>-<variant>`` is ``<finetune.output_dir>/<task>/<variant>``.
Any other value is taken as a model folder or hub id, with ``tag`` naming the output.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from telly.config import ExtractDataset, Params
from telly.errors import TellyError
from telly.jsonl import iter_jsonl

log = logging.getLogger(__name__)


def resolve_model(params: Params, model: str, tag: str | None = None) -> tuple[str, str]:
    """(tag, name_or_path) for a model tag (:func:`telly.variants.parse_tag`) or a model folder / hub id."""
    from telly import variants

    configured = _section(params, "model").name_or_path
    if model == "pretrained":
        return tag or "pretrained", configured
    if model == "random":
        return tag or "random", f"random:{configured}"
    if model.startswith("finetuned-"):
        parsed = variants.parse_tag(model)
        finetune = _section(params, "finetune")
        seed = parsed.seed if parsed.seed is not None else finetune.first_seed  # no seed suffix: the first seed's run
        return tag or model, str(variants.run_dir(finetune.output_dir, parsed.task, parsed.variant, seed))
    return tag or Path(model.rstrip("/")).name, model


def _section(params: Params, name: str) -> Any:
    section = getattr(params, name)
    if section is None:
        raise TellyError(f"params: the `{name}` section is missing (see params.yaml in the repository)")
    return section


def read_inputs(spec: ExtractDataset) -> tuple[list[str], list[str]]:
    """The first ``limit`` rows' texts and ids (the row number where the file has no ids)."""
    texts, ids = [], []
    for n, row in enumerate(iter_jsonl(spec.input, required=(spec.field,))):
        if spec.limit is not None and n >= spec.limit:
            break
        texts.append(str(row[spec.field]))
        ids.append(str(row.get(spec.id_field, n)))
    if not texts:
        raise TellyError(f"{spec.input}: no rows to extract representations from")
    return texts, ids


def run(
    params: Params,
    *,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    tag: str | None = None,
    adhoc: ExtractDataset | None = None,
) -> list[Path]:
    """Extract every (model, dataset) pair asked for; ``adhoc`` is a dataset not in params."""
    import torch

    from telly.models.extraction import extract
    from telly.models.loading import load_encoder
    from telly.runtime import device as pick_device

    cfg = _section(params, "extract")
    model_cfg = _section(params, "model")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if adhoc is not None:
        if not datasets or len(datasets) != 1:
            raise TellyError("--input needs exactly one --dataset name for the output folder")
        specs = {datasets[0]: adhoc}
    else:
        unknown = [d for d in datasets or [] if d not in cfg.datasets]
        if unknown:
            raise TellyError(
                f"extract.datasets has no {', '.join(map(repr, unknown))}; known: {', '.join(cfg.datasets)}"
            )
        specs = {d: cfg.datasets[d] for d in (datasets or cfg.datasets)}
    if tag is not None and len(models or cfg.models) != 1:
        raise TellyError("--tag names one model's output folder; give exactly one --model with it")

    written = []
    for model in models or cfg.models:
        model_tag, name_or_path = resolve_model(params, model, tag)
        encoder = load_encoder(name_or_path, device=pick_device(model_cfg.device), seed=model_cfg.seed)
        for name, spec in specs.items():
            texts, ids = read_inputs(spec)
            out = Path(cfg.out_dir) / model_tag / name
            extract(
                encoder,
                texts,
                ids,
                out,
                kinds=spec.kinds,
                batch_size=cfg.batch_size,
                max_length=spec.max_length,
                mode=spec.mode,
                token_examples=spec.token_examples,
                bf16=model_cfg.bf16,
                meta={"model": model_tag, "dataset": name, "input": str(spec.input), "field": spec.field},
            )
            written.append(out)
    return written
