"""Run any supported encoder layer by layer under a 4-D (UniLM / prefix-LM) attention mask.

Fine-tuning needs three things from an encoder that Hugging Face models expose differently
per family: the embeddings, one transformer layer under a given ``[B, 1, T, T]`` boolean mask
(True = may attend), and the word-embedding matrix (the tied LM head). Frozen-prefix caching
splits the stack at layer K (embeddings + layers 0..K-1 once, layers K..L-1 every step), so
these are called directly rather than through ``model(...)``.

The native ``forward`` of some families mishandles a 4-D mask: MPNet adds a boolean mask to
its scores (True + score), so future tokens leak into earlier positions without an error.
Each adapter therefore builds the mask in the form its layers want. ``check_prefix_mask``
proves it on the loaded model: a change at a later position must leave every earlier
position's output unchanged; a model that fails is refused (``ArchitectureError``).

The adapter is the one owner of a family's layout: its embeddings, layer list, the shared modules
every layer uses (frozen with the prefix by Telly-K, fingerprinted by the cache), the module names
the PEFT methods target, and whether beam search can decode it incrementally. Freezing, BitFit,
caching, PEFT and decoding all ask it (:func:`find_encoder` finds it inside a task model).

Families: BERT, RoBERTa (UniXcoder, CodeBERT), MPNet (relative position bias), DeBERTa-v2
(disentangled relative attention, optional conv layer), ModernBERT (rotary positions,
alternating global / sliding-window layers, final norm). Anything else is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from telly.errors import TellyError


class ArchitectureError(TellyError):
    """An encoder telly cannot run layer by layer, or one whose attention ignores the prefix-LM mask."""


def _out(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple) else result


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` -> 0 where allowed, the dtype's minimum where not."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass(frozen=True)
class PeftTargets:
    """Module-name suffixes inside one transformer layer, as ``peft`` matches them, per PEFT role."""

    attention: tuple[str, ...]  # LoRA: the attention query and value projections
    linear: tuple[str, ...]  # LoRA-all: every linear layer of a transformer layer
    ia3: tuple[str, ...]  # (IA)3: key and value (outputs scaled), output projections (inputs scaled)
    feedforward: tuple[str, ...]  # those of ``ia3`` that scale their input (peft's feed-forward modules)


class Adapter:
    """BERT and RoBERTa: ``model.embeddings``, ``model.encoder.layer[i](hidden, mask)``."""

    family = "bert"
    # peft's defaults for BERT and RoBERTa; ``output.dense`` matches the attention output projection too
    peft_targets = PeftTargets(
        attention=("query", "value"),
        linear=("query", "key", "value", "dense"),
        ia3=("key", "value", "output.dense"),
        feedforward=("output.dense",),
    )
    # the layers' self-attention takes ``cache=`` (keys/values via ``cache.update``), as beam search drives it
    incremental = True

    def fits(self, module: nn.Module) -> bool:
        """Whether ``module`` is laid out as this family's encoder (not a ``*For...`` model wrapping one)."""
        return hasattr(module, "embeddings") and isinstance(
            getattr(getattr(module, "encoder", None), "layer", None), nn.ModuleList
        )

    def embeddings_module(self, model: nn.Module) -> nn.Module:
        return model.embeddings

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.encoder.layer

    def shared_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules besides the embeddings that the layers use (position biases): frozen state too."""
        return []

    def frozen_modules(self, model: nn.Module, k: int) -> list[nn.Module]:
        """Everything hidden state k is computed from, in a fixed order: the embeddings, layers
        0..k-1 and (k >= 1) the shared modules. Telly-K freezes them; the cache fingerprints them."""
        return [self.embeddings_module(model), *self.layers(model)[:k], *(self.shared_modules(model) if k else [])]

    def word_embeddings(self, model: nn.Module) -> nn.Embedding:
        return model.embeddings.word_embeddings

    def hidden_size(self, model: nn.Module) -> int:
        return model.config.hidden_size

    def embed(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model.embeddings(input_ids=ids)

    def layer_mask(self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> Any:
        from transformers.masking_utils import create_bidirectional_mask

        if mask.dim() == 4 and getattr(model.config, "_attn_implementation", "sdpa") == "eager":
            # eager attention adds the mask to its scores: a boolean one would add 0/1 and block nothing
            return _additive(mask, hidden.dtype)
        return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)

    def run_layers(
        self, model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, start: int, stop: int | None
    ) -> torch.Tensor:
        """Layers ``start..stop-1`` (``stop=None``: to the top, with any final norm)."""
        attn = self.layer_mask(model, hidden, mask)
        for layer in self.layers(model)[start:stop]:
            hidden = _out(layer(hidden, attn))
        return hidden

    def forward(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last hidden state under ``mask``."""
        return self.run_layers(model, self.embed(model, ids, mask), mask, 0, None)


class RobertaAdapter(Adapter):
    family = "roberta"


class MPNetAdapter(Adapter):
    """MPNet: additive float mask (its layers add the mask to the scores) and the shared relative
    position bias, computed once per sequence length."""

    family = "mpnet"
    peft_targets = PeftTargets(
        attention=("attn.q", "attn.v"),
        linear=("attn.q", "attn.k", "attn.v", "attn.o", "dense"),
        ia3=("attn.k", "attn.v", "attn.o", "output.dense"),
        feedforward=("attn.o", "output.dense"),
    )
    incremental = False

    def shared_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.encoder.relative_attention_bias]

    def run_layers(self, model, hidden, mask, start, stop):
        attn = _additive(mask, hidden.dtype)
        bias = model.encoder.compute_position_bias(hidden)
        for layer in self.layers(model)[start:stop]:
            hidden = _out(layer(hidden, attn, position_bias=bias))
        return hidden


class DebertaV2Adapter(Adapter):
    """DeBERTa-v2/v3: boolean mask, relative positions and embeddings passed to every layer,
    the optional conv layer after layer 0, padded positions zeroed in the embeddings."""

    family = "deberta-v2"
    peft_targets = PeftTargets(  # peft's defaults for DeBERTa-v2
        attention=("query_proj", "value_proj"),
        linear=("query_proj", "key_proj", "value_proj", "pos_key_proj", "pos_query_proj", "dense"),
        ia3=("key_proj", "value_proj", "output.dense"),
        feedforward=("output.dense",),
    )
    incremental = False

    def shared_modules(self, model: nn.Module) -> list[nn.Module]:
        """The relative embeddings and their norm (every layer), the conv layer (after layer 0)."""
        encoder = model.encoder
        found = (getattr(encoder, name, None) for name in ("rel_embeddings", "LayerNorm", "conv"))
        return [m for m in found if m is not None]

    def embed(self, model, ids, mask):
        real = mask[:, 0].any(-2)  # [B, T]: positions some query may see, i.e. not padding
        return model.embeddings(input_ids=ids, mask=real)

    def run_layers(self, model, hidden, mask, start, stop):
        encoder = model.encoder
        relative_pos = encoder.get_rel_pos(hidden)
        rel_embeddings = encoder.get_rel_embedding()
        first = hidden
        for i, layer in enumerate(self.layers(model)[start:stop], start=start):
            hidden = _out(layer(hidden, mask, relative_pos=relative_pos, rel_embeddings=rel_embeddings))
            if i == 0 and encoder.conv is not None:
                hidden = encoder.conv(first, hidden, mask[:, 0].any(-2).long())
        return hidden

    def word_embeddings(self, model):
        if getattr(model.config, "embedding_size", model.config.hidden_size) != model.config.hidden_size:
            raise ArchitectureError(
                f"{type(model).__name__}: embedding_size {model.config.embedding_size} != hidden_size "
                f"{model.config.hidden_size}; the tied LM head needs them equal"
            )
        return model.embeddings.word_embeddings


class ModernBertAdapter(Adapter):
    """ModernBERT: rotary positions per layer type, sliding-window layers (the prefix-LM mask
    and the window both apply), additive mask, final norm after the last layer."""

    family = "modernbert"
    peft_targets = PeftTargets(  # one fused query/key/value projection: LoRA and (IA)3 take all three
        attention=("attn.Wqkv",),
        linear=("attn.Wqkv", "attn.Wo", "mlp.Wi", "mlp.Wo"),
        ia3=("attn.Wqkv", "attn.Wo", "mlp.Wo"),
        feedforward=("attn.Wo", "mlp.Wo"),
    )
    incremental = False

    def fits(self, module):
        return hasattr(module, "embeddings") and isinstance(getattr(module, "layers", None), nn.ModuleList)

    def layers(self, model):
        return model.layers

    def word_embeddings(self, model):
        return model.embeddings.tok_embeddings

    def embed(self, model, ids, mask):
        return model.embeddings(input_ids=ids)

    def run_layers(self, model, hidden, mask, start, stop):
        width = hidden.shape[1]
        positions = torch.arange(width, device=hidden.device)
        window = (positions[:, None] - positions[None, :]).abs() <= model.config.sliding_window
        masks = {
            "full_attention": _additive(mask, hidden.dtype),
            "sliding_attention": _additive(mask & window, hidden.dtype),
        }
        position_ids = positions[None, :]
        rotary = {t: model.rotary_emb(hidden, position_ids, t) for t in set(model.config.layer_types)}
        layers = self.layers(model)
        for layer in layers[start:stop]:
            kind = layer.attention_type
            hidden = _out(layer(hidden, attention_mask=masks[kind], position_embeddings=rotary[kind]))
        if stop is None or stop >= len(layers):
            hidden = model.final_norm(hidden)
        return hidden


# registry: architecture family (config.model_type) -> how to run it layer by layer
ADAPTERS: dict[str, Adapter] = {
    "bert": Adapter(),
    "roberta": RobertaAdapter(),
    "xlm-roberta": RobertaAdapter(),
    "mpnet": MPNetAdapter(),
    "deberta-v2": DebertaV2Adapter(),
    "modernbert": ModernBertAdapter(),
}


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family, or an ``ArchitectureError`` naming it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ArchitectureError(
            f"{type(model).__name__} (model_type {model_type!r}) is not supported for fine-tuning: "
            f"telly runs {', '.join(sorted(ADAPTERS))} encoders layer by layer (src/telly/models/architectures.py)"
        )
    return ADAPTERS[model_type]


def find_encoder(model: nn.Module) -> tuple[nn.Module, Adapter]:
    """The encoder inside ``model`` and its adapter: ``model`` itself, or the first submodule of a
    supported family laid out as its adapter expects (the encoder of a task model or of a ``*For...`` model)."""
    for module in model.modules():  # ``model`` first
        adapter = ADAPTERS.get(getattr(getattr(module, "config", None), "model_type", None))
        if adapter is not None and adapter.fits(module):
            return module, adapter
    if getattr(model, "config", None) is not None:
        adapter_for(model)  # an unsupported family: refused by name
    raise ArchitectureError(
        f"{type(model).__name__}: found no encoder inside it of a supported family "
        f"({', '.join(sorted(ADAPTERS))}) with its embeddings and layer list (src/telly/models/architectures.py)"
    )


@torch.no_grad()
def check_prefix_mask(model: nn.Module, adapter: Adapter | None = None, *, width: int = 10, prefix: int = 4) -> None:
    """Refuse a model whose attention lets a later token move an earlier position's output.

    One sequence with a bidirectional prefix and a causal rest, run twice with only the token at
    position ``width - 3`` changed: every earlier position must come out the same (to float
    rounding), and that position itself must move (so the check is not vacuous)."""
    from telly.finetuning.data import attention_mask

    adapter = adapter or adapter_for(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = adapter.word_embeddings(model).num_embeddings
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(5, vocab, (1, width), generator=generator)
        changed = ids.clone()
        at = width - 3
        changed[0, at] = 5 + (int(ids[0, at]) - 5 + 1 + vocab // 2) % (vocab - 5)
        mask = attention_mask(torch.tensor([width]), torch.tensor([prefix]), width).to(device)
        before = adapter.forward(model, ids.to(device), mask).float()
        after = adapter.forward(model, changed.to(device), mask).float()
    finally:
        model.train(was_training)
    scale = before.abs().max().clamp_min(1e-6)
    leak = ((after[0, :at] - before[0, :at]).abs().max() / scale).item()
    moved = ((after[0, at] - before[0, at]).abs().max() / scale).item()
    name = f"{type(model).__name__} ({adapter.family})"
    if leak > 1e-4:
        raise ArchitectureError(
            f"{name}: the attention ignores the prefix-LM mask -- changing token {at} moved earlier positions "
            f"by {leak:.2g} (relative); refusing to fine-tune it (future tokens would leak)"
        )
    if moved <= 1e-6:
        raise ArchitectureError(f"{name}: changing token {at} did not change its own output; cannot run this model")
