"""Stage ``similarity`` (RQ2): which hidden states does fine-tuning change, and how much?

For each task, the pre-trained model and its fine-tuned checkpoint represent the same
N training functions; per hidden state we score how alike the two are (the paper's
RSA, Pearson and Spearman; debiased linear CKA; Procrustes distance), with
half-sample intervals and two baselines: a randomly initialised model (nothing
shared) and, where the finetune stage made one, a second fine-tuning seed (noise).
From each task's curve we read a suggested freeze depth K and check the paper's
claim that only the top two layers change much.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from telly import variants
from telly.config import Params, SimilarityParams
from telly.errors import TellyError
from telly.jsonl import write_json
from telly.similarity import outputs
from telly.similarity.compute import METRICS, Comparison, compute, curves
from telly.similarity.represent import folder, section
from telly.similarity.suggest import suggest_k, top_two_claim

log = logging.getLogger(__name__)


def plan(sp: SimilarityParams) -> list[Comparison]:
    """The comparisons of a run: each task's fine-tuned model, then the baselines."""
    comparisons = []
    for t in sp.tasks:  # a task's comparisons together, so its models' RSA vectors are freed soon
        first = variants.model_tag(t, sp.variant)
        comparisons.append(Comparison("finetuned", t, "pretrained", first))
        if sp.seed_variant:
            second = variants.model_tag(t, sp.seed_variant)
            comparisons.append(Comparison("seed", t, "pretrained", second))
            comparisons.append(Comparison("seed_pair", t, first, second))
    comparisons.append(Comparison("random", "all", "pretrained", "random"))
    return comparisons


def open_representations(tags: Sequence[str], sp: SimilarityParams) -> dict[str, Any]:
    """Open every model's representations and check they are comparable."""
    from telly.models.extraction import Representations

    reps = {}
    for tag in tags:
        where = folder(sp, tag)
        if not (where / "meta.json").exists():
            hint = ""
            if tag.endswith(f"-{sp.seed_variant}") and sp.seed_variant:
                hint = (
                    " The seed baseline needs the finetune stage's run of that seed, "
                    "models/finetuned/<task>/<variant>/seed<S>/ (S in finetune.seeds); "
                    "set similarity.seed_variant: null to skip it."
                )
            raise TellyError(f"{where}: no representations; run `telly similarity represent {tag}`.{hint}")
        rep = Representations.open(where)
        if sp.pooling not in rep.kinds or (sp.pooling == "mean_unmasked" and rep.meta.get("padded_to") is None):
            raise TellyError(f"{where}: no '{sp.pooling}' pooling (fixed-length for mean_unmasked); re-run represent")
        if len(rep) < sp.num_samples:
            raise TellyError(f"{where}: {len(rep)} inputs, but similarity.num_samples = {sp.num_samples}")
        reps[tag] = rep
    first_tag, first = next(iter(reps.items()))
    for tag, rep in reps.items():
        if rep.ids[: sp.num_samples] != first.ids[: sp.num_samples]:
            raise TellyError(f"{rep.folder} and {first.folder} hold different inputs; re-extract both")
        if rep.num_layers != first.num_layers:
            raise TellyError(f"{tag} has {rep.num_layers} layers, {first_tag} {first.num_layers}: not one architecture")
        if (rep.meta.get("tokens"), rep.meta.get("n_truncated")) != (
            first.meta.get("tokens"),
            first.meta.get("n_truncated"),
        ):
            raise TellyError(
                f"{rep.folder}: the inputs tokenize to {rep.meta.get('tokens')} tokens, {first_tag}'s to "
                f"{first.meta.get('tokens')}; is the pre-trained tokenizer saved with the checkpoint?"
            )
        if rep.meta["padded_to"] != first.meta["padded_to"]:
            raise TellyError(
                f"{tag} was padded to {rep.meta['padded_to']} tokens, {first_tag} to {first.meta['padded_to']}"
            )
    return reps


def summarise(rows: list[dict], sp: SimilarityParams) -> dict[str, dict[str, Any]]:
    """Per task: suggested K, the most changed hidden states, the top-two-layers verdict."""
    summary = {}
    for task, curve in curves(rows, sp.suggest_metric).items():
        verdict = top_two_claim(curve, sp.change_threshold)
        summary[task] = {
            "suggested_k": suggest_k(curve, sp.suggest_threshold),
            "most_changed": verdict.most_changed[:3],
            "changed": verdict.changed,
            "top_two_only": verdict.holds,
            "top_two_share": verdict.top_two_share,
            "verdict": verdict.describe(sp.change_threshold),
        }
    return summary


def report(summary: dict[str, dict[str, Any]], sp: SimilarityParams, num_layers: int) -> str:
    lines = [
        f"RQ2 on {sp.num_samples} inputs, {sp.pooling} pooling, {sp.suggest_metric}; "
        f"hidden state 0 = embeddings, {num_layers} = top"
    ]
    for task, s in summary.items():
        k = s["suggested_k"]
        lines.append(
            f"  {task:20s} most changed: h{', h'.join(map(str, s['most_changed']))}; "
            f"top two hold {s['top_two_share']:.0%} of the change; "
            f"'only the top two layers change much': {s['verdict']}; "
            f"suggested K = {'Base (freeze nothing)' if k is None else k}"
        )
    holds = [t for t, s in summary.items() if s["top_two_only"]]
    lines.append(
        f"  the paper's claim holds for {len(holds)} of {len(summary)} tasks"
        + (f": {', '.join(holds)}" if holds else "")
    )
    return "\n".join(lines)


def run(params: Params, out: Path | None = None) -> dict[str, dict[str, Any]]:
    sp = section(params)
    out = Path(sp.out_dir) if out is None else out
    comparisons = plan(sp)
    tags = list(dict.fromkeys(tag for c in comparisons for tag in (c.a, c.b)))
    reps = open_representations(tags, sp)
    num_layers = reps["pretrained"].num_layers
    n = sp.num_samples

    def layer(tag: str, h: int) -> np.ndarray:
        return np.asarray(reps[tag].pooled(sp.pooling)[:n, h, :], dtype=np.float32)

    rows = compute(
        layer,
        comparisons,
        num_layers + 1,
        num_samples=n,
        block_rows=sp.block_rows,
        rsa_rounds=sp.rsa_bootstrap_rounds,
        rounds=sp.bootstrap_rounds,
        ci_level=sp.ci_level,
        seed=sp.seed,
    )
    summary = summarise(rows, sp)
    write(rows, summary, sp, out)
    text = report(summary, sp, num_layers)
    print(text)
    log_to_mlflow(params, rows, summary, out)
    return summary


def write(rows: list[dict], summary: dict[str, dict[str, Any]], sp: SimilarityParams, out: Path) -> None:
    outputs.write_table(rows, out)
    outputs.write_plots_data(rows, out)
    outputs.figure(rows, out / "similarity.png", threshold=sp.suggest_threshold, threshold_metric=sp.suggest_metric)
    write_json(out / "metrics.json", outputs.metrics(rows, summary))
    curve = curves(rows, sp.suggest_metric)
    write_json(
        out / "suggested_k.json",
        {
            task: {
                "suggested_k": s["suggested_k"],
                "rule": f"deepest K in 0..L-1 with {sp.suggest_metric} >= {sp.suggest_threshold} "
                "at every hidden state 0..K; null = Base",
                "metric": sp.suggest_metric,
                "threshold": sp.suggest_threshold,
                "curve": [outputs.clean(v) for v in curve[task]],
                "most_changed": s["most_changed"],
                "top_two_layers_claim": s["verdict"],
            }
            for task, s in summary.items()
        },
    )


def log_to_mlflow(params: Params, rows: list[dict], summary: dict[str, dict[str, Any]], out: Path) -> None:
    import mlflow

    from telly.tracking import start_run

    with start_run(params, "similarity", log_params=params.similarity.model_dump()):
        for metric in METRICS:
            for task, curve in curves(rows, metric).items():
                for h, value in enumerate(curve):
                    if np.isfinite(value):
                        mlflow.log_metric(f"{metric}.{task}", value, step=h)  # step = hidden state
        for task, s in summary.items():
            if s["suggested_k"] is not None:
                mlflow.log_metric(f"suggested_k.{task}", s["suggested_k"])
            mlflow.log_metric(f"top_two_share.{task}", s["top_two_share"])
        mlflow.log_artifacts(str(out), artifact_path="similarity")
