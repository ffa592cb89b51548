"""The paper's claims, each checked on this run's results and on the published numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from telly.config import ReportParams
from telly.finetuning.table import METRICS
from telly.reporting import verdicts as vd
from telly.reporting.inputs import Inputs, Regime
from telly.reporting.paper import paper_variant_metrics

MAIN_METRIC = {task: names[0] for task, names in METRICS.items()}  # the paper's headline metric per task


@dataclass
class Claim:
    id: str
    text: str
    rq: str
    run: vd.Verdict
    paper: vd.Verdict


# ------------------------------------------------------------------ this run's numbers


def probe_peaks(inputs: Inputs, state: str = "pretrained") -> tuple[dict[str, int], str]:
    """Peak hidden state per property: the layer-wise probe's best layer, else the largest layer weight."""
    if inputs.probing is None:
        return {}, "layer-wise probe"
    found = inputs.probing.details.get(state, {})
    if all("peak" in d for d in found.values()):
        return {p: d["peak"]["layer"] for p, d in found.items()}, f"best layer of the layer-wise probes, {state} model"
    return (
        {p: d["weighted_peak_layer"] for p, d in found.items() if "weighted_peak_layer" in d},
        f"largest weight of the weighted-layer-wise probes, {state} model",
    )


def probe_weights(inputs: Inputs, state: str = "pretrained") -> dict[str, list[float]]:
    if inputs.probing is None:
        return {}
    return {
        p: d["weighted-layer-wise"]["layer_weights"]["mean"]
        for p, d in inputs.probing.details.get(state, {}).items()
        if "weighted-layer-wise" in d
    }


def similarity_curves(inputs: Inputs) -> dict[str, list[float]]:
    if inputs.similarity is None:
        return {}
    return {t: v for t, v in inputs.similarity.curves.items() if all(x is not None for x in v)}


def variant_k(variant: str) -> int | None:
    return None if variant == "base" else int(variant.split("-")[1])


def num_layers(runs: list[dict[str, Any]]) -> int | None:
    for r in runs:
        m = re.search(r"-L(\d+)-", str(r.get("settings", {}).get("architecture", "")))
        if m:
            return int(m.group(1))
    return None


def task_metrics(regime: Regime | None, task: str) -> dict[int | None, float]:
    if regime is None:
        return {}
    return {variant_k(r["variant"]): r["test"][MAIN_METRIC[task]] for r in regime.runs.get(task, [])}


# ------------------------------------------------------------------ the claims


def check_claims(inputs: Inputs, settings: ReportParams, paper: dict[str, Any]) -> list[Claim]:
    paper_weights = {p: w["pretrained"] for p, w in paper["rq1"]["layer_weights"].items()}
    paper_peaks = {p: max(range(len(w)), key=w.__getitem__) for p, w in paper_weights.items()}
    paper_how = "largest layer weight, pre-trained UniXcoder (no layer-wise results published)"
    peaks, how = probe_peaks(inputs)
    paper_curves = paper["rq2"]["similarity"]
    curves = similarity_curves(inputs)
    main = inputs.regimes[0] if inputs.regimes else None
    layers_paper = paper["model"]["layers"]

    def within(metrics_of, layers):
        verdicts = {}
        for task in MAIN_METRIC:
            metrics = metrics_of(task)
            verdicts[task] = (
                vd.within_base(metrics, layers, settings.within_base_tolerance, settings.within_base_min_depth)
                if layers and metrics
                else vd.not_checked("no runs")
            )
        return vd.all_tasks(verdicts)

    run_layers = num_layers([r for runs in main.runs.values() for r in runs]) if main else None
    sim_why = "; ".join(filter(None, [inputs.missing.get("rq2")]))
    return [
        Claim(
            "lexical_below_syntactic",
            "Lexical properties peak in lower layers than syntactic ones",
            "RQ1",
            vd.peaks_lower(peaks, "lexical", "syntactic", how=how),
            vd.peaks_lower(paper_peaks, "lexical", "syntactic", how=paper_how),
        ),
        Claim(
            "syntactic_below_structural",
            "Syntactic properties peak in lower layers than structural ones",
            "RQ1",
            vd.peaks_lower(peaks, "syntactic", "structural", how=how),
            vd.peaks_lower(paper_peaks, "syntactic", "structural", how=paper_how),
        ),
        Claim(
            "semantic_spread",
            "Semantic information is spread over all layers",
            "RQ1",
            vd.semantic_spread(probe_weights(inputs)),
            vd.semantic_spread(paper_weights),
        ),
        Claim(
            "lower_layers_preserved",
            "Fine-tuning preserves the lower layers",
            "RQ2",
            vd.lower_layers_preserved(curves, settings.lower_layers_fraction, settings.preserve_threshold)
            if curves
            else vd.not_checked(sim_why or "no similarity curves"),
            vd.lower_layers_preserved(paper_curves, settings.lower_layers_fraction, settings.preserve_threshold),
        ),
        Claim(
            "top_two_change_most",
            "The top two layers change most in fine-tuning",
            "RQ2",
            vd.top_two_change_most(curves) if curves else vd.not_checked(sim_why or "no similarity curves"),
            vd.top_two_change_most(paper_curves),
        ),
        Claim(
            "telly_within_base",
            f"Telly-K stays within {settings.within_base_tolerance:.0%} of Base while freezing "
            f"the bottom {settings.within_base_min_depth:.0%} of the layers",
            "RQ3",
            within(lambda t: task_metrics(main, t), run_layers),
            within(lambda t: paper_variant_metrics(paper, t, MAIN_METRIC[t]), layers_paper),
        ),
    ]
