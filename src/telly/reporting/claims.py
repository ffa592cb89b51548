"""The paper's claims, each checked on this run's results and on the published numbers."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from telly import variants
from telly.config import ReportParams
from telly.errors import TellyError
from telly.finetuning import examples as E
from telly.probing.properties import PROPERTIES
from telly.reporting import evidence as ev
from telly.reporting import verdicts as vd
from telly.reporting.inputs import Inputs
from telly.reporting.paper import paper_variant_metrics
from telly.tasks import TASKS

MAIN_METRIC = {name: task.main_metric for name, task in TASKS.items()}  # the paper's headline metric per task


@dataclass
class Claim:
    id: str
    text: str
    rq: str
    run: vd.Verdict
    paper: vd.Verdict
    firm: bool = False  # this run's verdict survives the noise it can measure (seeds, intervals)
    firmness: str = ""  # why (not) firm, for the report
    caveat: str = ""  # what the verdict does not say (e.g. a claim that is vacuous here), shown beside it


def seed_peaks(inputs: Inputs, state: str = "pretrained") -> dict[str, list[int]]:
    """Peak hidden state of each probe seed's layer-wise curve, per property (empty without per-seed curves)."""
    if inputs.probing is None:
        return {}
    out = {}
    for prop, d in inputs.probing.details.get(state, {}).items():
        curves = (d.get("layer-wise") or {}).get(f"per_seed_{d.get('metric')}")
        if curves:
            out[prop] = [max(range(len(c)), key=c.__getitem__) for c in curves]
    return out


def firm_peaks(claim: Claim, per_seed: dict[str, list[int]], lower: str, higher: str) -> Claim:
    """A peak order is firm when every probe seed's own peaks give the same verdict."""
    if claim.run.verdict == vd.NOT_CHECKED:
        return claim
    if lower not in per_seed or higher not in per_seed:
        claim.firmness = "no per-seed probe curves: stability across seeds unknown"
        return claim
    seeds = [
        vd.peaks_lower({lower: a, higher: b}, lower, higher, how="").verdict
        for a, b in zip(per_seed[lower], per_seed[higher])
    ]
    claim.firm = all(v == claim.run.verdict for v in seeds)
    claim.firmness = f"per probe seed: {lower} h{per_seed[lower]}, {higher} h{per_seed[higher]}: " + (
        "same verdict for every seed" if claim.firm else "the seeds disagree"
    )
    return claim


def firm_similarity(claim: Claim, inputs: Inputs, rule) -> Claim:
    """A similarity verdict is firm when the rule gives the same verdict on the intervals' low and high curves."""
    sim = inputs.similarity
    if claim.run.verdict == vd.NOT_CHECKED or sim is None:
        return claim
    ends = {}
    for end, curves in (("low", sim.low), ("high", sim.high)):
        usable = {t: c for t, c in curves.items() if c and all(x is not None for x in c)}
        if len(usable) != len(sim.curves):
            claim.firmness = "no similarity intervals: firmness unknown"
            return claim
        ends[end] = rule(usable).verdict
    claim.firm = all(v == claim.run.verdict for v in ends.values())
    claim.firmness = (
        "same verdict at both ends of the similarity intervals"
        if claim.firm
        else (f"the intervals' ends disagree (low: {ends['low']}, high: {ends['high']})")
    )
    return claim


def vacuous_top_two(claim: Claim, inputs: Inputs) -> Claim:
    """The caveat of the top-two-layers claim: vacuous on the tasks where no hidden state falls below the change
    threshold (``top_two_layers_claim`` of suggested_k.json), so "the top two change most" says little there."""
    suggested = inputs.similarity.suggested if inputs.similarity else {}
    vacuous = {t: v for t, v in suggested.items() if str(v.get("top_two_layers_claim", "")).startswith("vacuous")}
    if not vacuous:
        return claim
    lowest = ", ".join(f"{t} {min(v['curve']):.2f}" for t, v in vacuous.items() if v.get("curve"))
    claim.caveat = (
        f"vacuous on {len(vacuous)} of {len(suggested)} tasks ({', '.join(vacuous)}): no hidden state falls below "
        f"the change threshold, so no layer changes much (lowest similarity: {lowest or 'unknown'})"
    )
    return claim


def firm_rq3(claim: Claim) -> Claim:
    """RQ3 rests on paired two-level intervals (seeds, then rows): firm when their verdict is reproduced or not
    reproduced (not inconclusive, not checked); the row-only intervals alone never make it firm."""
    claim.firm = claim.run.verdict in (vd.REPRODUCED, vd.NOT_REPRODUCED)
    claim.firmness = (
        "decided by paired two-level bootstrap intervals (seeds, then rows)"
        if claim.firm
        else "inconclusive or not checked under the two-level intervals (seeds, then rows): see the per-task evidence"
    )
    return claim


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
        if "weighted-layer-wise" in d and PROPERTIES[p].paper  # the claims compare the paper's properties only
    }


def similarity_curves(inputs: Inputs) -> dict[str, list[float]]:
    if inputs.similarity is None:
        return {}
    return {t: v for t, v in inputs.similarity.curves.items() if all(x is not None for x in v)}


def num_layers(runs: list[dict[str, Any]]) -> int | None:
    for r in runs:
        m = re.search(r"-L(\d+)-", str(r.get("settings", {}).get("architecture", "")))
        if m:
            return int(m.group(1))
    return None


# ------------------------------------------------------------------ RQ3 evidence


@dataclass
class TaskEvidence:
    """One task's RQ3 evidence: does Base learn (vs its baseline), and is each Telly-K non-inferior to Base."""

    task: str
    verdict: vd.Verdict  # the task's verdict on the claim
    learns: vd.Verdict | None = None  # Base vs the no-training baseline (None: no baseline result)
    pretrained: vd.Verdict | None = None  # Base vs the pre-trained model without fine-tuning, where it applies
    per_k: dict[int, vd.Verdict] = field(default_factory=dict)  # K -> non-inferiority verdict
    deepest_k: int | None = None  # deepest K with every K' <= K non-inferior (reproduced)
    needed_k: int | None = None
    # where no verdict is drawn: what the design (seeds x rows) would detect at K = needed_k all the same
    design_power: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.verdict,
            "evidence": self.verdict.evidence,
            "learns": None if self.learns is None else {"verdict": self.learns.verdict, **self.learns.details},
            "pretrained": None
            if self.pretrained is None
            else {"verdict": self.pretrained.verdict, **self.pretrained.details},
            "per_k": {str(k): {"verdict": v.verdict, **v.details} for k, v in self.per_k.items()},
            "deepest_k": self.deepest_k,
            "needed_k": self.needed_k,
            "design_power": self.design_power,
        }


def per_seed_statistics(
    task: str, runs: list[dict[str, Any]], baseline: dict[str, Any] | None, pretrained: dict[str, Any] | None = None
) -> tuple:
    """``({K: [stats per seed]}, baseline stats or None, pre-trained model stats or None)`` on the same test
    rows; runs without per-example rows are left out."""
    named = {f"{r['variant']}/seed{r.get('settings', {}).get('seed', i)}": r for i, r in enumerate(runs)}
    rows = {n: r["examples"] for n, r in named.items() if r.get("examples")}
    for name, result in (("baseline", baseline), ("pre-trained model", pretrained)):
        if result is not None and result.get("examples"):
            rows[name] = result["examples"]
    if not rows:
        return {}, None, None
    stats = E.aligned(task, rows)
    by_k: dict[int | None, list[np.ndarray]] = {}
    for name, r in named.items():
        if name in stats:
            by_k.setdefault(variants.k_of(r["variant"]), []).append(stats[name])
    return by_k, stats.get("baseline"), stats.get("pre-trained model")


def _per_k_text(needed: dict[int, vd.Verdict], need: int, tolerance: float) -> str:
    text = "; ".join(
        f"K={k}: {v.details['interval']['estimate']:+.1f}% [{v.details['interval']['low']:+.1f}, "
        f"{v.details['interval']['high']:+.1f}] {v.verdict}"
        for k, v in needed.items()
    )
    return text + f" (needs K = 0..{need} within {tolerance:.0%}; two-level intervals over seeds and rows)"


def task_evidence(
    task: str,
    runs: list[dict[str, Any]],
    baseline: dict[str, Any] | None,
    num_layers: int | None,
    settings: ReportParams,
    pretrained: dict[str, Any] | None = None,
) -> TaskEvidence:
    """The non-inferiority of every Telly-K up to ceil(min_depth x L) - 1 against Base, on a task where Base
    beats its no-training baseline; every K in 0..need must have runs."""
    conf = {"level": settings.ci_level, "resamples": settings.bootstrap_resamples, "seed": settings.bootstrap_seed}
    try:
        by_k, base_line, model_line = per_seed_statistics(task, runs, baseline, pretrained)
    except TellyError as err:
        return TaskEvidence(task, vd.not_checked(str(err)))
    if None not in by_k or num_layers is None:
        return TaskEvidence(task, vd.not_checked("needs Base runs with per-example test scores (rerun finetune)"))
    need = max(math.ceil(settings.within_base_min_depth * num_layers) - 1, 0)
    out = TaskEvidence(task, vd.not_checked(""), needed_k=need)
    if model_line is not None:
        out.pretrained = ev.check_learns(task, by_k[None], model_line, **conf, what="the pre-trained model")
    if base_line is None:
        out.verdict = vd.not_checked("no no-training baseline with per-example scores: run `dvc repro baseline`")
        return out
    out.learns = ev.check_learns(task, by_k[None], base_line, **conf)
    if out.learns.verdict != vd.REPRODUCED:
        out.verdict = vd.not_checked(f"Base does not beat its no-training baseline: {out.learns.evidence}")
        if need in by_k:  # how a user sizes a bigger run of this task: the design's power, verdict or not
            interval = ev.relative_difference(task, by_k[None], by_k[need], **conf)
            power = ev.power(interval, 100.0 * settings.within_base_tolerance)
            out.design_power = power if math.isfinite(power["mde"]) else None
        return out
    have = sorted(k for k in by_k if k is not None)
    missing = [k for k in range(need + 1) if k not in by_k]
    if missing:
        out.verdict = vd.not_checked(
            f"needs Telly-K runs for every K = 0..{need}; missing K = {missing} (have K = {have})"
        )
        return out
    # degenerate when nothing separates any two variants run (not only the needed ones)
    why = ev.degenerate(task, by_k[None], [by_k[k] for k in have])
    if why:
        out.verdict = vd.not_checked(why)
        return out
    for k in have:
        interval = ev.relative_difference(task, by_k[None], by_k[k], **conf)
        out.per_k[k] = ev.non_inferiority(interval, settings.within_base_tolerance, f"Telly-{k} vs Base")
    for k in have:
        if out.per_k[k].verdict != vd.REPRODUCED:
            break
        out.deepest_k = k
    needed = {k: out.per_k[k] for k in range(need + 1)}
    text = _per_k_text(needed, need, settings.within_base_tolerance)
    if any(v.verdict == vd.NOT_REPRODUCED for v in needed.values()):
        out.verdict = vd.Verdict(vd.NOT_REPRODUCED, text)
    elif all(v.verdict == vd.REPRODUCED for v in needed.values()):
        out.verdict = vd.Verdict(vd.REPRODUCED, text)
    else:
        widest = max(v.details["power"]["mde"] for v in needed.values())
        out.verdict = vd.Verdict(vd.INCONCLUSIVE, text + f"; detectable difference (80% power) up to {widest:.1f}%")
    return out


def rq3_evidence(inputs: Inputs, settings: ReportParams) -> dict[str, TaskEvidence]:
    main = inputs.regimes[0] if inputs.regimes else None
    if main is None:
        return {}
    layers = num_layers([r for runs in main.runs.values() for r in runs])
    return {
        task: task_evidence(
            task, runs, inputs.baselines.get(task), layers, settings, inputs.pretrained_baselines.get(task)
        )
        for task, runs in main.runs.items()
        if task in MAIN_METRIC
    }


# ------------------------------------------------------------------ the claims


def check_claims(inputs: Inputs, settings: ReportParams, paper: dict[str, Any]) -> list[Claim]:
    paper_weights = {p: w["pretrained"] for p, w in paper["rq1"]["layer_weights"].items()}
    paper_peaks = {p: max(range(len(w)), key=w.__getitem__) for p, w in paper_weights.items()}
    paper_how = "largest layer weight, pre-trained UniXcoder (no layer-wise results published)"
    peaks, how = probe_peaks(inputs)
    paper_curves = paper["rq2"]["similarity"]
    curves = similarity_curves(inputs)
    layers_paper = paper["model"]["layers"]

    def within(metrics_of, layers):  # the paper's numbers: a point rule (no per-example scores published)
        verdicts = {}
        for task in MAIN_METRIC:
            metrics = metrics_of(task)
            verdicts[task] = (
                vd.within_base(metrics, layers, settings.within_base_tolerance, settings.within_base_min_depth)
                if layers and metrics
                else vd.not_checked("no runs")
            )
        return vd.all_tasks(verdicts)

    evidence = rq3_evidence(inputs, settings)
    run_within = vd.all_tasks({t: e.verdict for t, e in evidence.items()})
    run_within.details["tasks"] = {t: e.to_json() for t, e in evidence.items()}
    sim_why = "; ".join(filter(None, [inputs.missing.get("rq2")]))
    per_seed = seed_peaks(inputs)
    preserved = lambda cs: vd.lower_layers_preserved(cs, settings.lower_layers_fraction, settings.preserve_threshold)  # noqa: E731
    claims = [
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
            run_within if evidence else vd.not_checked(inputs.missing.get("rq3", "no runs")),
            within(lambda t: paper_variant_metrics(paper, t, MAIN_METRIC[t]), layers_paper),
        ),
    ]
    by_id = {c.id: c for c in claims}
    firm_peaks(by_id["lexical_below_syntactic"], per_seed, "lexical", "syntactic")
    firm_peaks(by_id["syntactic_below_structural"], per_seed, "syntactic", "structural")
    by_id["semantic_spread"].firmness = "layer weights: mean over probe seeds (no per-seed rule applied)"
    firm_similarity(by_id["lower_layers_preserved"], inputs, preserved)
    firm_similarity(by_id["top_two_change_most"], inputs, vd.top_two_change_most)
    vacuous_top_two(by_id["top_two_change_most"], inputs)
    firm_rq3(by_id["telly_within_base"])
    return claims
