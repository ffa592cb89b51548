"""The paper's qualitative claims as explicit rules, checked on this run and on the published numbers.

Each rule is a pure function of plain numbers (curves, peaks, metrics per K), so the same
rule says whether the paper's own numbers support the claim and whether this run does.
A verdict is ``reproduced``, ``not reproduced``, ``inconclusive`` (an interval that spans the
margin: :mod:`telly.reporting.evidence`) or ``not checked`` (inputs missing, or a degenerate
metric), always with the numbers that decided it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REPRODUCED, NOT_REPRODUCED, NOT_CHECKED = "reproduced", "not reproduced", "not checked"
INCONCLUSIVE = "inconclusive"


@dataclass
class Verdict:
    verdict: str
    evidence: str
    details: dict = field(default_factory=dict)

    @property
    def holds(self) -> bool | None:
        return {REPRODUCED: True, NOT_REPRODUCED: False}.get(self.verdict)


def not_checked(why: str) -> Verdict:
    return Verdict(NOT_CHECKED, why)


def _decide(ok: bool, evidence: str, **details) -> Verdict:
    return Verdict(REPRODUCED if ok else NOT_REPRODUCED, evidence, details)


# ------------------------------------------------------------------ RQ1: where properties live


def peaks_lower(peaks: Mapping[str, int], lower: str, higher: str, *, how: str) -> Verdict:
    """``lower`` peaks at a strictly lower hidden state than ``higher``."""
    if lower not in peaks or higher not in peaks:
        return not_checked(f"needs {lower} and {higher} probe results ({how}); have {sorted(peaks)}")
    a, b = peaks[lower], peaks[higher]
    return _decide(a < b, f"{lower} peaks at h{a}, {higher} at h{b} ({how})", lower=a, higher=b)


def spread_entropy(weights: Sequence[float]) -> float:
    """Normalised entropy of layer weights: 1 = spread evenly over all hidden states, 0 = one state."""
    total = sum(weights)
    p = [w / total for w in weights if w > 0]
    return -sum(x * math.log(x) for x in p) / math.log(len(weights))


def semantic_spread(weights: Mapping[str, Sequence[float]]) -> Verdict:
    """Semantic information is spread over the layers: its weights are the most even of all properties."""
    if "semantic" not in weights or len(weights) < 2:
        return not_checked(f"needs weighted-layer-wise probes of semantic and another property; have {sorted(weights)}")
    spread = {p: spread_entropy(w) for p, w in weights.items()}
    widest = all(spread["semantic"] > s for p, s in spread.items() if p != "semantic")  # a tie is no evidence
    text = ", ".join(f"{p} {s:.4f}" for p, s in spread.items())
    return _decide(widest, f"normalised entropy of the layer weights (1 = even): {text}", spread=spread)


# ------------------------------------------------------------------ RQ2: what fine-tuning changes


def lower_states(num_layers: int, fraction: float) -> int:
    """Top index of the 'lower layers': hidden states 0..floor(fraction x L)."""
    return math.floor(fraction * num_layers)


def lower_layers_preserved(curves: Mapping[str, Sequence[float]], fraction: float, threshold: float) -> Verdict:
    """Every task keeps similarity >= threshold on hidden states 0..floor(fraction x L)."""
    if not curves:
        return not_checked("needs the similarity curves (RQ2)")
    worst = {}
    for task, curve in curves.items():
        top = lower_states(len(curve) - 1, fraction)
        h = min(range(top + 1), key=lambda i: curve[i])
        worst[task] = (h, curve[h], top)
    text = "; ".join(f"{t}: lowest h{h} = {v:.3f} among h0..h{top}" for t, (h, v, top) in worst.items())
    ok = all(v >= threshold for _, v, _ in worst.values())
    return _decide(ok, f"{text} (threshold {threshold})", worst={t: v for t, (_, v, _) in worst.items()})


def top_two_change_most(curves: Mapping[str, Sequence[float]]) -> Verdict:
    """For every task the two least similar hidden states are the top two (L-1 and L)."""
    if not curves:
        return not_checked("needs the similarity curves (RQ2)")
    parts, per_task = [], {}
    for task, curve in curves.items():
        top = len(curve) - 1
        changed = sorted(range(len(curve)), key=lambda h: curve[h])[:2]
        total = sum(1 - s for s in curve)
        share = (2 - curve[top] - curve[top - 1]) / total if total > 0 else float("nan")
        per_task[task] = set(changed) == {top, top - 1}
        parts.append(f"{task}: most changed h{changed[0]}, h{changed[1]}; top two carry {share:.0%} of Σ(1 - s)")
    return _decide(all(per_task.values()), "; ".join(parts), per_task=per_task)


# ------------------------------------------------------------------ RQ3: Telly-K vs Base


def deepest_within(metrics: Mapping[int | None, float], tolerance: float) -> tuple[int | None, list[int]]:
    """Largest run K with every run K' <= K keeping ``metric >= (1 - tolerance) x Base``; and the Ks that fail."""
    base = metrics[None]
    bar = base - tolerance * abs(base)
    ks = sorted(k for k in metrics if k is not None)
    failing = [k for k in ks if metrics[k] < bar]
    deepest = None
    for k in ks:
        if metrics[k] < bar:
            break
        deepest = k
    return deepest, failing


def within_base(metrics: Mapping[int | None, float], num_layers: int, tolerance: float, min_depth: float) -> Verdict:
    """Telly-K keeps Base quality (within ``tolerance``) for every K up to ceil(min_depth x L) - 1."""
    if None not in metrics or len(metrics) < 2:
        return not_checked(f"needs Base and at least one Telly-K run; have {sorted(metrics, key=str)}")
    need = max(math.ceil(min_depth * num_layers) - 1, 0)
    deepest, failing = deepest_within(metrics, tolerance)
    ran = sorted(k for k in metrics if k is not None)
    text = (
        f"within {tolerance:.0%} of Base up to K = {deepest if deepest is not None else 'none'} "
        f"(ran K = {_ks(ran)}, outside: {_ks(failing) if failing else 'none'}; needs K = 0..{need})"
    )
    details = {"deepest_k": deepest, "needed_k": need, "failing": failing}
    if any(k <= need for k in failing):
        return Verdict(NOT_REPRODUCED, text, details)
    if not any(k >= need for k in ran):
        return Verdict(NOT_CHECKED, text + f": no run with K >= {need}", details)
    return Verdict(REPRODUCED, text, details)


def _ks(ks: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0..2, 5'."""
    spans: list[list[int]] = []
    for k in ks:
        if spans and k == spans[-1][1] + 1:
            spans[-1][1] = k
        else:
            spans.append([k, k])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans)


def all_tasks(verdicts: Mapping[str, Verdict]) -> Verdict:
    """One verdict from per-task verdicts, over the checked tasks: not reproduced when one is not,
    reproduced when every one is, else inconclusive."""
    checked = {t: v for t, v in verdicts.items() if v.verdict != NOT_CHECKED}
    text = "; ".join(f"{t}: {v.evidence} ({v.verdict})" for t, v in verdicts.items())
    details = {"per_task": {t: v.verdict for t, v in verdicts.items()}}
    if not checked:
        return Verdict(NOT_CHECKED, text or "no task results", details)
    if any(v.verdict == NOT_REPRODUCED for v in checked.values()):
        return Verdict(NOT_REPRODUCED, text, details)
    if all(v.verdict == REPRODUCED for v in checked.values()):
        return Verdict(REPRODUCED, text, details)
    return Verdict(INCONCLUSIVE, text, details)
