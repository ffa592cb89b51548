"""From a similarity curve to a freeze depth, and the paper's "top two layers" claim.

Hidden state h (0 = embedding output, h = output of layer h) is what Telly-K
freezes when h <= K: Telly-K freezes the embeddings and layers 1..K, so hidden
states 0..K are exactly the pre-trained ones. If fine-tuning leaves hidden states
0..K nearly unchanged anyway, freezing them should cost little. The rule:

    suggested K = the deepest k in 0..L-1 such that every hidden state 0..k keeps
                  similarity >= threshold;  None (Base) when even h = 0 falls below.

K is capped at L - 1 because Telly-K always trains at least the top layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from telly.errors import TellyError


def suggest_k(curve: Sequence[float], threshold: float) -> int | None:
    """Deepest freeze depth whose hidden states 0..K all stay at or above ``threshold``."""
    if len(curve) < 2:
        raise TellyError(f"suggest_k: need L + 1 >= 2 hidden states, got {len(curve)}")
    top = len(curve) - 2  # L - 1
    k = None
    for h, value in enumerate(curve[: top + 1]):
        if not np.isfinite(value) or value < threshold:
            break
        k = h
    return k


@dataclass(frozen=True)
class TopTwoVerdict:
    """Whether "only the top two layers change much" holds for one curve."""

    holds: bool
    changed: list[int]  # hidden states with similarity below the threshold
    most_changed: list[int]  # hidden states ordered from least to most similar
    top_two_share: float  # share of sum(1 - similarity) that falls on the top two

    def describe(self, threshold: float) -> str:
        if not self.changed:
            return f"vacuous (no hidden state below {threshold}: nothing changes much)"
        if self.holds:
            return f"holds (only h{', h'.join(map(str, self.changed))} below {threshold})"
        extra = [h for h in self.changed if h < len(self.most_changed) - 2]
        return f"does not hold (h{', h'.join(map(str, extra))} also below {threshold})"


def top_two_claim(curve: Sequence[float], threshold: float) -> TopTwoVerdict:
    """The claim holds when some hidden state falls below ``threshold`` and all such are the top two."""
    values = np.asarray(curve, dtype=np.float64)
    n = values.size  # L + 1
    if n < 3:
        raise TellyError(f"top_two_claim: need at least 3 hidden states, got {n}")
    changed = [int(h) for h in np.flatnonzero(values < threshold)]
    change = np.clip(1.0 - values, 0.0, None)
    total = float(change.sum())
    share = float(change[-2:].sum() / total) if total > 0 else float("nan")
    holds = bool(changed) and all(h >= n - 2 for h in changed)
    most = [int(h) for h in np.argsort(values, kind="stable")]
    return TopTwoVerdict(holds, changed, most, share)
