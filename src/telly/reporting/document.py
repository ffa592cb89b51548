"""The report's Markdown: answers to the three research questions first, then the claims with
their evidence, then every table and figure of the paper regenerated from this run."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from telly import variants
from telly.config import Params
from telly.reporting import evidence as ev
from telly.reporting import peft, tables
from telly.reporting.claims import MAIN_METRIC, Claim, probe_peaks
from telly.reporting.inputs import PROPERTIES, Inputs
from telly.reporting.verdicts import INCONCLUSIVE, NOT_CHECKED, NOT_REPRODUCED, REPRODUCED
from telly.runtime import git_commit

# Verdict marks: text symbols every common font has (emoji such as ✅/❌ show as empty boxes on a
# machine without an emoji font); report.html draws them as coloured badges (html.VERDICT_CLASS).
MARK = {
    REPRODUCED: "✓ reproduced",
    NOT_REPRODUCED: "✗ not reproduced",
    INCONCLUSIVE: "? inconclusive",
    NOT_CHECKED: "– not checked",
}
STAGE_OF = {
    "rq1": "RQ1 probing",
    "rq2": "RQ2 similarity",
    "rq3": "RQ3 fine-tuning",
    "rq3-paper-regime": "RQ3 without caching",
    "tuning": "tuning",
    "baselines": "no-training baselines",
}


def _missing(inputs: Inputs, *sections: str) -> str:
    lines = [
        f"> **Not available yet** ({STAGE_OF[s]}): {inputs.missing[s]}.\n" for s in sections if s in inputs.missing
    ]
    return "\n".join(lines)


def _figure(figures: dict[str, Path | None], name: str, alt: str) -> str:
    path = figures.get(name)
    return f"![{alt}](figures/{path.name})\n" if path else ""


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def rq3_tasks(claims: list[Claim]) -> dict[str, dict[str, Any]]:
    """Per task the RQ3 evidence of the ``telly_within_base`` claim (claims.TaskEvidence.to_json)."""
    claim = next((c for c in claims if c.id == "telly_within_base"), None)
    return claim.run.details.get("tasks", {}) if claim else {}


def deepest_per_task(claims: list[Claim]) -> dict[str, int | None]:
    """Deepest Telly-K with every K' <= K non-inferior to Base, per task that learns."""
    return {t: e["deepest_k"] for t, e in rq3_tasks(claims).items() if e["per_k"]}


def answers(inputs: Inputs, claims: list[Claim], params: Params) -> str:
    by_id = {c.id: c for c in claims}
    s = params.report
    out = ["## Answers to the three research questions\n"]
    peaks, how = probe_peaks(inputs)
    if peaks:
        where = ", ".join(f"{p} h{peaks[p]}" for p in PROPERTIES if p in peaks)
        out.append(
            f"**RQ1 — what do the layers encode?** Peaks ({how}): {where}. "
            f"Lexical below syntactic: {MARK[by_id['lexical_below_syntactic'].run.verdict]}; "
            f"syntactic below structural: {MARK[by_id['syntactic_below_structural'].run.verdict]}; "
            f"semantic spread over all layers: {MARK[by_id['semantic_spread'].run.verdict]}.\n"
        )
    else:
        out.append(f"**RQ1 — what do the layers encode?** {inputs.missing.get('rq1', 'no probe results')}.\n")
    if inputs.similarity is not None:
        sug = inputs.similarity.suggested
        ks = (
            ", ".join(
                f"{t} {'Base' if v.get('suggested_k') is None else 'K = ' + str(v['suggested_k'])}"
                for t, v in sug.items()
            )
            or "–"
        )
        out.append(
            f"**RQ2 — what does fine-tuning change?** Lower layers preserved "
            f"({inputs.similarity.metric} ≥ {s.preserve_threshold} on the bottom {s.lower_layers_fraction:.0%}): "
            f"{MARK[by_id['lower_layers_preserved'].run.verdict]}; the top two layers change most: "
            f"{MARK[by_id['top_two_change_most'].run.verdict]}. Freeze depth suggested by the curves: {ks}.\n"
        )
    else:
        out.append(f"**RQ2 — what does fine-tuning change?** {inputs.missing.get('rq2', 'no similarity results')}.\n")
    if inputs.regimes:
        parts = []
        for task, e in rq3_tasks(claims).items():
            if e["learns"] is not None and e["learns"]["verdict"] != REPRODUCED:
                parts.append(f"{task}: **Base does not beat its no-training baseline**: no verdict")
            elif not e["per_k"]:
                parts.append(f"{task}: not checked ({e['evidence']})")
            elif e["deepest_k"] is None:
                parts.append(f"{task}: no Telly-K non-inferior to Base ({MARK[e['verdict']]})")
            else:
                k = e["deepest_k"]
                row = _row(inputs.regimes[0].runs[task], variants.name(k))
                parts.append(
                    f"{task}: non-inferior up to {variants.label(variants.name(k))} ({tables.millions(row['paper_params_m'])} M trainable, "
                    f"{-row['params_reduction_pct']:+.0f}% parameters and {-row['epoch_reduction_pct']:+.0f}% "
                    f"epoch time vs Base; {MARK[e['verdict']]})"
                )
        out.append(
            f"**RQ3 — can the bottom layers be frozen?** Telly-K within {s.within_base_tolerance:.0%} of Base "
            "(non-inferiority, paired two-level bootstrap interval over seeds and rows): "
            + "; ".join(parts)
            + f". Claim: {MARK[by_id['telly_within_base'].run.verdict]}.\n"
        )
    else:
        out.append(f"**RQ3 — can the bottom layers be frozen?** {inputs.missing.get('rq3', 'no runs')}.\n")
    firm = [c.id for c in claims if c.firm]
    loose = [c.id for c in claims if not c.firm and c.run.verdict != NOT_CHECKED]
    out.append(
        "**Which answers are firm.** Firm (the verdict survives the noise this run measures: probe seeds, "
        f"similarity intervals, paired two-level bootstrap intervals over seeds and rows): {', '.join(firm) or 'none'}. "
        f"Not firm: {', '.join(loose) or 'none'} (see the claims table).\n"
    )
    return "\n".join(out)


def _row(runs: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    task = runs[0]["task"]
    df = tables.task_table(task, runs)
    return df[df["variant"] == variant].to_dict("records")[0]


def claims_section(claims: list[Claim]) -> str:
    rows = [
        [
            c.text + (f" (**caveat**: {_escape(c.caveat)})" if c.caveat else ""),
            c.rq,
            MARK[c.run.verdict],
            "yes" if c.firm else ("–" if c.run.verdict == NOT_CHECKED else f"no: {_escape(c.firmness)}"),
            _escape(c.run.evidence),
            f"{MARK[c.paper.verdict]}: {_escape(c.paper.evidence)}",
        ]
        for c in claims
    ]
    return (
        "## The paper's claims, checked on this run\n\n"
        "Each claim is an explicit rule (see *How the claims are checked* below); the last column applies the "
        "same rule to the paper's published numbers.\n\n"
        + tables.table(["claim", "RQ", "this run", "firm", "evidence (this run)", "paper's numbers, same rule"], rows)
    )


def token_overlap_line(inputs: Inputs) -> str:
    """What the probing sets score with no model at all (token overlap on the test split), beside the probes."""
    if not inputs.token_overlap:
        return ""
    parts = [
        f"{prop}: " + ", ".join(f"{name.replace('_map_at_r', '')} MAP@R {value:.2f}" for name, value in scores.items())
        for prop, scores in inputs.token_overlap.items()
    ]
    return "*No model* (token overlap on the test split, `data/tasks/metrics.json`): " + "; ".join(parts) + ".\n"


def rq1_section(inputs: Inputs, paper: dict[str, Any], figures: dict[str, Path | None]) -> str:
    out = ["## RQ1: probing — which properties each layer encodes\n", _missing(inputs, "rq1")]
    if inputs.probing is not None:
        out += [
            "### Probe scores (weighted-layer-wise probe, the paper's table)\n",
            "Mean ± std over probe seeds; *sel.* = selectivity (task minus control task, same probe). "
            "Syntactic accuracy is in [0, 1], the other scores in percent, as in the paper.\n",
            tables.probe_scores(inputs.probing, paper),
            token_overlap_line(inputs),
            "### Layer-wise probes (one probe per hidden state)\n",
            tables.probe_peaks(inputs.probing),
            _figure(figures, "probe_curves", "layer-wise probe curves"),
        ]
        if inputs.probing.skipped:
            out.append(
                "Skipped by the probe stage: "
                + "; ".join(f"`{k}`: {v}" for k, v in inputs.probing.skipped.items())
                + "\n"
            )
    out += [
        "### Layer weights of the weighted-layer-wise probes\n",
        "Weight x (L + 1) against relative depth, so that this run's model and the paper's 12-layer UniXcoder "
        "share the axes (1 = uniform; dashed = paper).\n",
        _figure(figures, "layer_weights", "layer weights"),
    ]
    if inputs.probing is not None:
        out.append(tables.layer_weight_table(inputs.probing))
    return "\n".join(filter(None, out))


def rq2_section(inputs: Inputs, paper: dict[str, Any], figures: dict[str, Path | None]) -> str:
    out = [
        "## RQ2: representational similarity — what fine-tuning changes, layer by layer\n",
        _missing(inputs, "rq2"),
        _figure(figures, "similarity", "similarity per hidden state"),
    ]
    sim = inputs.similarity
    if sim is not None:
        out += [
            f"### This run: {sim.metric}, pre-trained vs fine-tuned (Base), per hidden state\n",
            "Brackets: half-sample interval (docs/similarity.md); *random init* = pre-trained vs a randomly "
            "initialised model (the floor).\n",
            tables.similarity_table(sim),
        ]
    out += [f"### Paper: {paper['rq2']['measure']}\n", tables.paper_similarity_table(paper)]
    return "\n".join(filter(None, out))


def _interval_text(i: dict[str, Any]) -> str:
    out = f"{i['estimate']:+.4g} [{i['low']:+.4g}, {i['high']:+.4g}] ({i['level']:.0%} {i['method']}, {i['rows']} rows"
    out += f", seeds {i['seeds'][0]} vs {i['seeds'][1]})"
    if i.get("rows_only"):
        out += f"; rows only [{i['rows_only']['low']:+.4g}, {i['rows_only']['high']:+.4g}]"
    return out


def truncated_line(baseline: dict[str, Any]) -> str:
    """The share of test rows (and codebase codes) whose tokens the model's input cuts, per text field."""
    shares = baseline["truncated"]
    settings = baseline.get("settings", {})
    parts = [f"{field} {share:.1%}" for field, share in shares.get("test", {}).items()]
    parts += [f"codebase {field} {share:.1%}" for field, share in shares.get("codebase", {}).items()]
    lengths = f"{settings.get('max_source_length', '?')} / {settings.get('max_target_length', '?')} tokens"
    return f"*Inputs the model cuts* (share of test rows longer than the model reads, {lengths}): {', '.join(parts)}.\n"


def learning_curve_line(task: str, points: list[dict[str, Any]]) -> str:
    """Base against the baseline at each training size (benchmarks/learning_curves.py): whether more rows help."""
    parts = [
        f"{p['train_size']:,} rows: {tables.num(p['base'], 4)} vs {tables.num(p['baseline'], 4)}, "
        f"difference {p['difference']['estimate']:+.3g} [{p['difference']['low']:+.3g}, {p['difference']['high']:+.3g}]"
        for p in points
    ]
    first = points[0]
    return (
        f"*Learning curve* (Base, seed {first['seed']}, {first['epochs']} epochs, against the baseline on the same "
        f"rows; {MAIN_METRIC[task]}; docs/finetuning.md): " + "; ".join(parts) + ".\n"
    )


def baseline_lines(task: str, inputs: Inputs, evidence: dict[str, Any] | None) -> list[str]:
    """Base against each no-training baseline of ``task``: the equal-input one (the RQ3 gate) and the others."""
    baseline = inputs.baselines.get(task)
    main = MAIN_METRIC[task]
    if baseline is None:
        return [f"*No-training baseline*: {inputs.missing.get('baselines', 'not run')}.\n"]
    learns = (evidence or {}).get("learns")
    line = f"*No-training baseline* ({baseline.get('method', '?')}): {main} {tables.num(baseline['test'][main], 4)}"
    full = baseline.get("full_input", {}).get("test", {}).get(main)
    if full is not None:
        line += f" (on the whole inputs, beyond the model's truncation: {tables.num(full, 4)})"
    if learns:
        line += f"; Base − baseline {_interval_text(learns['interval'])}: " + (
            "Base beats it."
            if learns["verdict"] == REPRODUCED
            else "**Base does not beat its no-training baseline: no RQ3 verdict is drawn.**"
        )
    out = [line + "\n"]
    if learns and learns["verdict"] != REPRODUCED and inputs.learning_curves.get(task):
        out.append(learning_curve_line(task, inputs.learning_curves[task]))
    if baseline.get("truncated"):
        out.append(truncated_line(baseline))
    other = (evidence or {}).get("pretrained")
    pre = inputs.pretrained_baselines.get(task)
    if pre is not None:
        line = f"*Pre-trained model without fine-tuning* ({pre.get('method', '?')}): {main} "
        line += tables.num(pre["test"][main], 4)
        if other:
            line += f"; Base − it {_interval_text(other['interval'])}: " + (
                "Base beats it." if other["verdict"] == REPRODUCED else "**Base does not beat it.**"
            )
        out.append(line + "\n")
    return out


def rq3_evidence(task: str, inputs: Inputs, evidence: dict[str, Any] | None) -> str:
    """The task's no-training baselines beside Base, each Telly-K's intervals and verdict, and the power."""
    out = baseline_lines(task, inputs, evidence)
    main = MAIN_METRIC[task]
    if evidence and evidence["per_k"]:
        rows = [
            [
                variants.label(variants.name(k)),
                f"{v['interval']['estimate']:+.2f}",
                f"[{v['interval']['low']:+.2f}, {v['interval']['high']:+.2f}]",
                f"[{v['interval']['rows_only']['low']:+.2f}, {v['interval']['rows_only']['high']:+.2f}]"
                if v["interval"].get("rows_only")
                else "–",
                f"{v['power']['mde']:.2f}" if v.get("power") else "–",
                MARK[v["verdict"]] + (" (needed)" if int(k) <= evidence["needed_k"] else ""),
            ]
            for k, v in evidence["per_k"].items()
        ]
        out.append(
            f"Non-inferiority of each Telly-K to Base on {main} "
            f"(margin {next(iter(evidence['per_k'].values()))['margin_pct']:+.0f}%): "
            "relative difference in percent, paired over the test rows; the verdict reads the two-level interval "
            "(each side's seeds, then the rows), the row-only interval (seeds averaged per row) is beside it; "
            "*detectable* = the smallest difference this design detects with 80% power.\n"
        )
        out.append(
            tables.table(["variant", "Δ% vs Base", "two-level interval", "rows only", "detectable %", "verdict"], rows)
        )
        needed = str(evidence["needed_k"])
        if needed in evidence["per_k"] and evidence["per_k"][needed].get("power"):
            out.append(f"Power at K = {needed}: {ev.power_text(evidence['per_k'][needed]['power'])}.\n")
    elif evidence:
        out.append(f"RQ3 verdict: {MARK[evidence['verdict']]}: {_escape(evidence['evidence'])}\n")
        if evidence.get("design_power"):
            out.append(
                f"Power of this design at K = {evidence['needed_k']} (Telly-K against Base, though no verdict is "
                f"drawn): {ev.power_text(evidence['design_power'])}.\n"
            )
    return "\n".join(out)


def rq3_section(
    inputs: Inputs, paper: dict[str, Any], figures: dict[str, Path | None], claims: list[Claim] | None = None
) -> str:
    out = [
        "## RQ3: Telly-K — freezing the embeddings and the bottom K layers\n",
        "Columns as the paper's section 3.3: trainable parameters (the paper's convention), epoch time (training "
        "only), epochs and time to convergence (docs/finetuning.md: first epoch within the tolerance of the best "
        "valid score; with caching, the cache build is included), test metrics; ↓% = reduction against Base, "
        "Δ% = change of the main metric against Base.\n",
        _missing(inputs, "rq3", "rq3-paper-regime"),
        _figure(figures, "quality_vs_cost", "quality vs cost"),
    ]
    evidence = rq3_tasks(claims or [])
    for task in MAIN_METRIC:
        out.append(f"### {task}\n")
        if inputs.regimes and inputs.regimes[0].runs.get(task):
            out.append(rq3_evidence(task, inputs, evidence.get(task)))
        for regime in inputs.regimes:
            runs = regime.runs.get(task)
            if not runs:
                out.append(f"*{regime.label}*: no runs of this task yet.\n")
            elif not any(r["variant"] == variants.BASE for r in runs):
                out.append(f"*{regime.label}*: no Base run yet (`dvc repro finetune-run`), so no ratios.\n")
            else:
                baseline = inputs.baselines.get(task) if regime is inputs.regimes[0] else None
                out += [f"**This run, {regime.label}**\n", tables.telly_table(task, runs, baseline)]
        out += [f"**Paper: {paper['rq3'][task]['title']}**\n", tables.paper_telly_table(task, paper)]
    return "\n".join(filter(None, out))


def tuning_section(inputs: Inputs, params: Params, claims: list[Claim]) -> str:
    suggested = inputs.similarity.suggested if inputs.similarity else {}
    deepest = deepest_per_task(claims)
    base_lr = {t: getattr(params.finetune.tasks, t).learning_rate for t in MAIN_METRIC} if params.finetune else {}
    return "\n".join(
        filter(
            None,
            [
                "## Tuning: the freeze depth and learning rate Optuna chose, beside the similarity's suggestion\n",
                _missing(inputs, "tuning"),
                tables.tuning_table(inputs.tuning, suggested, deepest, base_lr, params.report.within_base_tolerance),
                tables.tuning_agreement(inputs.tuning, suggested, deepest),
            ],
        )
    )


def method_section(params: Params) -> str:
    s = params.report
    return f"""## How the claims are checked

- **Peaks** (RQ1): a property's peak is the hidden state where its layer-wise probe scores best on the
  pre-trained model (mean over seeds); without layer-wise probes, the largest weight of the weighted
  probe. The paper published only the weighted probe, so its peaks are its largest layer weights.
- **Semantic spread** (RQ1): normalised entropy of the weighted probe's layer weights (1 = even over all
  hidden states); reproduced when semantic has the highest of the four properties.
- **Lower layers preserved** (RQ2): every task keeps `{s.similarity_metric}` ≥ {s.preserve_threshold} on hidden
  states 0..floor({s.lower_layers_fraction} x L).
- **Top two change most** (RQ2): for every task, the two least similar hidden states are L-1 and L.
- **Telly-K within {s.within_base_tolerance:.0%} of Base** (RQ3), a non-inferiority test on the task's main
  test metric ({", ".join(f"{t}: {m}" for t, m in MAIN_METRIC.items())}): the relative difference
  100 x (Telly-K / Base - 1) gets a {s.ci_level:.0%} paired two-level bootstrap interval: each variant's seeds
  drawn with replacement, then the test rows, once for both sides ({s.bootstrap_resamples} resamples, percentile;
  docs/report.md); the row-only interval (seeds averaged per row; scipy, BCa) is shown beside it. Reproduced
  when the two-level interval's lower end is ≥ -{s.within_base_tolerance:.0%}, not reproduced when its upper
  end is < -{s.within_base_tolerance:.0%}, else inconclusive, with the smallest difference the design detects
  at 80% power ((z_(1-α/2) + z_0.8) x the two-level standard error) and the rows and seeds a
  ±{s.within_base_tolerance:.0%} margin would need. Every Telly-K for K = 0..ceil({s.within_base_min_depth} x L) - 1
  must have runs and be reproduced.
  A task enters only when Base beats its no-training baseline (interval of Base - baseline above 0);
  a degenerate metric (Base at 0, every variant identical) is not checked. The paper's numbers, without
  per-example scores, get the point rule (≥ (1 - {s.within_base_tolerance}) x Base). Runs with caching are used
  when both regimes exist.

Settings: `report` in params.yaml. The paper's numbers: `src/telly/reporting/paper_numbers.yaml`
(from telly-paper.md, i.e. the replication repository's result files).
"""


def pretraining_line(params: Params) -> str:
    """The pre-training recipe of the model studied, when it is the embedded one (results/pretrain/metrics.json)."""
    if params.pretrain is None or params.model is None:
        return ""
    if Path(params.model.name_or_path) != Path(params.pretrain.out_dir):
        return ""
    path = Path(params.pretrain.metrics)
    if not path.exists():
        return f"\nThe model was pre-trained here (`telly pretrain`), but `{path}` is missing: recipe unknown.\n"
    import json

    m = json.loads(path.read_text(encoding="utf-8"))
    weights = m.get("objective_weights") or {"mlm": 1.0}  # runs before the UniXcoder-style recipe: MLM only
    recipe = ", ".join(f"{name} {share:g}" for name, share in weights.items() if share)
    figures = [f"masked-token accuracy {100 * m['masked_token_accuracy']:.1f}%"] if "masked_token_accuracy" in m else []
    if "next_token_accuracy" in m:
        figures.append(f"next-token accuracy {100 * m['next_token_accuracy']:.1f}%")
    if "retrieval_mrr" in m:
        figures.append(f"comment-to-code MRR {m['retrieval_mrr']:.3f}")
    first = m.get("mlm_first_steps", 0)
    start = f"masked-LM on plain code alone for the first {first} steps, then " if first else ""
    return (
        f"\nPre-training recipe of this model (`telly pretrain`, docs/models.md): {start}objectives {recipe}, "
        f"comment + flattened AST in {100 * m.get('ast_share', 0):.0f}% of their language-modelling steps; "
        f"{m.get('steps', '?')} steps. "
        f"Held out: {'; '.join(figures) or 'no figures'}.\n"
    )


def build(
    inputs: Inputs, claims: list[Claim], paper: dict[str, Any], params: Params, figures: dict[str, Path | None]
) -> str:
    arch = next(
        (r["settings"].get("architecture") for reg in inputs.regimes for runs in reg.runs.values() for r in runs), None
    )
    model = params.model.name_or_path if params.model else "?"
    header = (
        f"# Telly study report\n\nRegenerated by `telly report` from this pipeline's results on "
        f"{date.today().isoformat()} (git `{git_commit()[:10]}`); model `{model}`"
        + (f" ({arch})" if arch else "")
        + f"; the paper's model: {paper['model']['name']} "
        f"({paper['model']['layers']} layers). Hidden state 0 = embeddings, h = output of layer h.\n"
    )
    parts = [
        header + pretraining_line(params),
        answers(inputs, claims, params),
        claims_section(claims),
        rq1_section(inputs, paper, figures),
        rq2_section(inputs, paper, figures),
        rq3_section(inputs, paper, figures, claims),
        peft.section(params, Path(params.report.out_dir) / "figures", rq3_tasks(claims or [])),  # reporting/peft.py
        tuning_section(inputs, params, claims),
        method_section(params),
    ]
    return "\n\n".join(p.strip("\n") for p in parts) + "\n"
