"""Telly-K: freeze the embeddings and the bottom K transformer layers.

telly-paper.md section 3.1: Telly-K sets ``requires_grad=False`` on the embeddings (word,
position, token type, LayerNorm) and on layers ``0 .. K-1``; everything above, the task
head and (in the paper's runs) the unused pooler stay trainable. Base freezes nothing.
A family whose layers share a module (MPNet's relative attention bias, DeBERTa-v2's relative
embeddings) has it frozen too for K >= 1: hidden state K depends on it, so the frozen-prefix
cache stays exact. Which modules those are is the architecture adapter's to say
(telly.models.architectures), for every family.

Two parameter counts come back, because the paper reports a different one from what
actually trains (section 3.2): its notebook also freezes the pooler before counting
Telly-K, but counts the whole model (pooler included) for Base. So with UniXcoder
Base = 125.93M and Telly-K = (12 - K) x 7,087,872 (plus any task head).

BitFit (beyond the paper, telly.models.peft_methods) is a freezing rule too: only the biases
of the embeddings and the transformer layers train (:func:`freeze_except_biases`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telly.errors import TellyError
from telly.models.architectures import find_encoder


@dataclass(frozen=True)
class ParamCount:
    trainable: int  # parameters with requires_grad after freezing (what the optimiser updates)
    paper: int  # the paper's convention: Base = all; Telly-K = trainable minus the pooler
    total: int  # all parameters of the model given

    @property
    def reduction(self) -> float:
        """The paper's "↓%" against the same model's Base count: 1 - paper / total."""
        return 1 - self.paper / self.total


def count_parameters(module: Any, *, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights once), like the paper's ``count_parameters``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def encoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of transformer layers (layer i makes hidden state i + 1), from the adapter."""
    encoder, adapter = find_encoder(model)
    return adapter.layers(encoder)


def freeze_bottom(model: Any, k: int | None) -> ParamCount:
    """Telly-K on ``model`` (an encoder or a task model wrapping one); ``k=None`` is Base.

    What is frozen is the adapter's :meth:`~telly.models.architectures.Adapter.frozen_modules`:
    the embeddings, layers 0..K-1 and, for K >= 1, the modules every layer shares (MPNet's relative
    attention bias, DeBERTa-v2's relative embeddings), exactly what the frozen-prefix cache is computed from.
    Any earlier freezing is undone first, so calling it twice gives the same state.
    """
    encoder, adapter = find_encoder(model)
    n_layers = len(adapter.layers(encoder))
    if k is not None and not (isinstance(k, int) and 0 <= k < n_layers):
        raise TellyError(
            f"Telly-K: K = {k!r} is out of range; valid values are 0..{n_layers - 1} for this "
            f"{n_layers}-layer model (or none for Base, full fine-tuning)"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    total = count_parameters(model)
    if k is None:
        return ParamCount(trainable=total, paper=total, total=total)

    for module in adapter.frozen_modules(encoder, k):
        for p in module.parameters():
            p.requires_grad_(False)
    trainable = count_parameters(model, trainable_only=True)
    pooler = getattr(encoder, "pooler", None)
    pooler_params = count_parameters(pooler, trainable_only=True) if pooler is not None else 0
    return ParamCount(trainable=trainable, paper=trainable - pooler_params, total=total)


def freeze_except_biases(model: Any, k: int | None = None) -> ParamCount:
    """BitFit on ``model``: every parameter frozen but the biases (LayerNorm biases included) of the
    embeddings and of every transformer layer; with ``k``, only those of layers k..L-1 (Telly-K below
    them, so the frozen prefix stays cacheable). The pooler (unused by the heads) and the family's
    shared modules stay frozen."""
    encoder, adapter = find_encoder(model)
    layers = adapter.layers(encoder)
    if k is not None and not (isinstance(k, int) and 0 <= k < len(layers)):
        raise TellyError(f"BitFit: K = {k!r} is out of range; valid values are 0..{len(layers) - 1} (or none)")
    total = count_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [*layers[k:]] if k is not None else [adapter.embeddings_module(encoder), *layers]
    for module in trained:
        for name, p in module.named_parameters():
            if name == "bias" or name.endswith(".bias"):
                p.requires_grad_(True)
    trainable = count_parameters(model, trainable_only=True)
    return ParamCount(trainable=trainable, paper=trainable, total=total)
