"""Probe models on frozen, cached hidden states ``x`` of shape ``[batch, L+1, H]``.

Two probe types, as the paper (telly-paper.md section 1.1):

- **layer-wise**: one independent head per hidden state l = 0..L. Hidden state l of
  the full encoder is exactly the output of the encoder truncated at layer l, so all
  L+1 probes read the same cache and are trained side by side as one stacked module
  (every parameter has a leading "head" axis; the per-head losses are summed, and as
  the heads share no parameter each one trains exactly as if it were alone).
- **weighted-layer-wise**: a learned softmax scalar mix over all L+1 hidden states
  (ELMo / Tenney et al.), then one head. Its mix weights are the paper's reported
  "layer weights" (one global vector, so their mean over inputs is the vector itself).

A head is linear by default (the paper's H x C classifier or H x H mapper) or a
one-hidden-layer MLP, the upper-bound option of the probing literature.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class StackedHeads(nn.Module):
    """``n_heads`` independent heads; input ``[B, n_heads, H]``, output ``[B, n_heads, out]``."""

    def __init__(
        self,
        n_heads: int,
        hidden: int,
        out: int,
        *,
        kind: str = "linear",
        mlp_hidden: int = 256,
        orthogonal: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"probe head kind {kind!r} is not one of 'linear', 'mlp'")
        dims = [hidden, out] if kind == "linear" else [hidden, mlp_hidden, out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims, dims[1:]):
            w = torch.empty(n_heads, d_in, d_out)
            for k in range(n_heads):
                if orthogonal and d_in == d_out:
                    # a retrieval mapper starts as a random rotation: cosine geometry of the layer intact
                    nn.init.orthogonal_(w[k])
                else:
                    nn.init.uniform_(w[k], -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(n_heads, d_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i:
                x = torch.relu(x)
            x = torch.einsum("bkh,kho->bko", x, w) + b
        return x


class LayerwiseProbe(nn.Module):
    """L+1 independent probes, head l reading hidden state l."""

    def __init__(self, n_states: int, hidden: int, out: int, **head_kw) -> None:
        super().__init__()
        self.heads = StackedHeads(n_states, hidden, out, **head_kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x)


class WeightedLayerProbe(nn.Module):
    """One probe on ``sum_l softmax(s)_l * h_l``; ``layer_weights()`` gives softmax(s)."""

    def __init__(self, n_states: int, hidden: int, out: int, **head_kw) -> None:
        super().__init__()
        # leading axis 1 = one head, so checkpointing treats it like the layer-wise probe
        self.mix_logits = nn.Parameter(torch.zeros(1, n_states))
        self.heads = StackedHeads(1, hidden, out, **head_kw)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.mix_logits[0], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("blh,l->bh", x, self.layer_weights())
        return self.heads(mixed[:, None, :])


def build_probe(probe_type: str, n_states: int, hidden: int, out: int, **head_kw) -> nn.Module:
    if probe_type == "layer-wise":
        return LayerwiseProbe(n_states, hidden, out, **head_kw)
    if probe_type == "weighted-layer-wise":
        return WeightedLayerProbe(n_states, hidden, out, **head_kw)
    raise ValueError(f"probe type {probe_type!r} is not one of 'layer-wise', 'weighted-layer-wise'")
