"""Parameter-efficient fine-tuning methods beside Telly-K (beyond the paper; docs/finetuning.md).

A registry, as ``peft`` itself keeps one per method: each family says how it is applied to the
encoder and what it makes trainable. LoRA and (IA)3 come from Hugging Face ``peft`` (no
hand-written adapters); BitFit has no ``peft`` implementation, so it is a freezing rule
(:func:`telly.models.freezing.freeze_except_biases`).

Each method names a role (``attention``, ``linear``, ``ia3``); the module names that fill it are
the architecture family's (``Adapter.peft_targets`` in telly.models.architectures). For RoBERTa:

- ``lora-r<r>``: LoRA of rank r on every attention query and value projection (``peft``'s
  default targets), ``lora_alpha`` and ``lora_dropout`` from the params;
- ``lora-all-r<r>``: LoRA on every linear layer of the transformer layers (query, key, value,
  attention output, intermediate, output; not the unused pooler);
- ``ia3``: (IA)3 learned scaling vectors on ``peft``'s default targets: key, value and
  ``output.dense`` (which, matched by suffix, is the attention output projection as well as the
  feed-forward one; both scale their input, as ``peft``'s feed-forward modules do);
- ``bitfit``: every bias of the embeddings and the transformer layers (LayerNorm biases too).

Everything else is frozen: embeddings (so the LM head tied to them too), pooler, weights. The
task heads add no parameters (finetuning/heads.py), so a method's trainable parameters are its
adapters (BitFit: the biases) and nothing else.

Combined with Telly-K (``telly-<K>+<method>``), the method touches layers K..L-1 only: the
embeddings and layers 0..K-1 stay exactly as pre-trained, so frozen-prefix caching is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telly import variants
from telly.errors import TellyError
from telly.models.architectures import find_encoder
from telly.models.freezing import ParamCount, count_parameters, freeze_except_biases

ADAPTER_DIR = "adapter"  # <output_dir>/<task>/<variant>/adapter: the peft save_pretrained folder


@dataclass(frozen=True)
class LoraSettings:
    """Settings shared by the LoRA families (``finetune.peft`` in params)."""

    alpha: float = 16.0
    dropout: float = 0.1


@dataclass(frozen=True)
class Method:
    """One family: ``targets`` names the role in ``Adapter.peft_targets`` whose module-name suffixes it
    goes on (None: a freezing rule, BitFit), ``feedforward`` whether peft gets the family's
    feed-forward modules among them, ``config`` builds its peft config."""

    family: str
    adds: str  # what it trains, for the docs and the report
    targets: str | None = None
    feedforward: bool = False
    config: Callable[..., Any] | None = None


def _lora_config(method: Method, rank: int, targets: list[str], feedforward: list[str], lora: LoraSettings) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, bias="none")


def _ia3_config(
    method: Method, rank: int | None, targets: list[str], feedforward: list[str], lora: LoraSettings
) -> Any:
    from peft import IA3Config

    return IA3Config(target_modules=targets, feedforward_modules=feedforward)


# registry: what each PEFT family applies (keys = telly.variants.PEFT_FAMILIES)
METHODS: dict[str, Method] = {
    "lora": Method("lora", "LoRA A, B (r x d each) on attention query and value", "attention", False, _lora_config),
    "lora-all": Method(
        "lora-all",
        "LoRA A, B on query, key, value, attention output, intermediate and output projections",
        "linear",
        False,
        _lora_config,
    ),
    "ia3": Method(
        "ia3",
        "(IA)3 scaling vectors on key, value (outputs) and the output projections (inputs)",
        "ia3",
        True,
        _ia3_config,
    ),
    "bitfit": Method("bitfit", "the biases of the embeddings and the transformer layers"),
}


def apply(model: Any, variant: str | variants.Variant, lora: LoraSettings | None = None) -> tuple[Any, ParamCount]:
    """Apply ``variant``'s method to ``model`` (the encoder, after :func:`freeze_bottom`) in place.

    Returns the ``peft.PeftModel`` that wraps it (None for BitFit; use it to ``save_pretrained``
    the adapters) and the parameter count: ``trainable`` = adapters (+ biases for BitFit),
    ``paper`` = the same (nothing of the pooler trains), ``total`` = the model without adapters,
    so ``reduction`` compares with Base. The layers an adapter goes to are K..L-1 (all for K None).
    """
    v = variants.parse(variant) if isinstance(variant, str) else variant
    if v.method is None:
        raise TellyError(f"variant {v.name!r} has no parameter-efficient method")
    method = METHODS[v.method]
    encoder, adapter = find_encoder(model)
    variants.parse(v.name, len(adapter.layers(encoder)))  # K in range
    k = v.k or 0
    total = count_parameters(model)
    if method.targets is None:
        freeze_except_biases(model, v.k)
        trainable = count_parameters(model, trainable_only=True)
        return None, ParamCount(trainable=trainable, paper=trainable, total=total)

    from peft import get_peft_model

    targets = target_modules(model, getattr(adapter.peft_targets, method.targets), k)
    inputs = adapter.peft_targets.feedforward if method.feedforward else ()
    feedforward = [t for t in targets if any(t.endswith(f".{f}") for f in inputs)]
    config = method.config(method, v.rank, targets, feedforward, lora or LoraSettings())
    adapted = get_peft_model(model, config)  # injects the adapters into ``model`` itself, freezes the rest
    trainable = count_parameters(model, trainable_only=True)
    return adapted, ParamCount(trainable=trainable, paper=trainable, total=total)


def target_modules(model: Any, suffixes: tuple[str, ...], k: int = 0) -> list[str]:
    """Full names of the linear modules of layers k..L-1 whose names end in one of ``suffixes`` (peft's
    suffix rule). Named one by one, so the pooler and layers below K never match, whatever the layout."""
    import torch.nn as nn

    encoder, adapter = find_encoder(model)
    above = {id(layer) for layer in adapter.layers(encoder)[k:]}
    names = []
    for name, module in model.named_modules():
        if id(module) in above:
            for sub, child in module.named_modules():
                full = f"{name}.{sub}"
                if isinstance(child, nn.Linear) and any(full.endswith(f".{s}") for s in suffixes):
                    names.append(full)
    if not names:
        raise TellyError(f"{type(model).__name__}: no linear module named *{'/'.join(suffixes)} in layers {k}..")
    return names


def save_adapter(adapted: Any, folder: str | Path) -> None:
    """The adapters alone, in peft's ``save_pretrained`` layout (adapter_config.json + safetensors)."""
    adapted.save_pretrained(str(folder), safe_serialization=True)


def merged(adapted: Any) -> Any:
    """The encoder with the adapters folded into its weights (a plain ``transformers`` model again)."""
    return adapted.merge_and_unload()


def load_adapter(model: Any, folder: str | Path) -> Any:
    """``model`` (the encoder the run started from) with the saved adapters of ``folder``, for evaluation."""
    from peft import PeftModel

    if not (Path(folder) / "adapter_config.json").exists():
        raise TellyError(f"{folder}: no adapter_config.json (not a peft save_pretrained folder)")
    adapted = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    return adapted


def describe(model_config: Any, variant: str, lora: LoraSettings | None = None) -> ParamCount:
    """The count of ``variant`` on a randomly initialised model of ``model_config`` (a ``transformers``
    config: no download), for the docs and the closed-form tests."""
    import torch
    from transformers import AutoModel

    from telly.models.freezing import freeze_bottom

    torch.manual_seed(0)
    with torch.device("meta"):  # shapes only: UniXcoder-sized in milliseconds, no memory
        model = AutoModel.from_config(model_config)
    v = variants.parse(variant)
    base = freeze_bottom(model, v.k)
    if v.method is None:
        return base
    return apply(model, v, lora)[1]
