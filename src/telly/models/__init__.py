"""Models: load any encoder, freeze its bottom K layers (Telly-K), extract layer-wise
representations, and pre-train the small embedded code model.

See docs/architecture.md ("Models API") and docs/models.md.
"""

from telly.models.extraction import KINDS, Representations, extract
from telly.models.freezing import (
    ParamCount,
    count_parameters,
    encoder_layers,
    find_encoder,
    freeze_bottom,
    freeze_except_biases,
)
from telly.models.loading import (
    DEFAULT_MODEL,
    MODE_TOKENS,
    RANDOM,
    Encoder,
    ModelLoadError,
    encode,
    load_encoder,
    pad,
    tokenize,
)

__all__ = [
    "DEFAULT_MODEL",
    "MODE_TOKENS",
    "RANDOM",
    "Encoder",
    "KINDS",
    "Representations",
    "extract",
    "ModelLoadError",
    "ParamCount",
    "count_parameters",
    "encode",
    "encoder_layers",
    "find_encoder",
    "freeze_bottom",
    "freeze_except_biases",
    "load_encoder",
    "pad",
    "tokenize",
]
