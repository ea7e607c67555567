"""The model core. A closed world: imports only torch, transformers and its siblings, so that
``save_pretrained`` can ship these files for ``trust_remote_code`` loading."""

from .configuration import KiloConfig
from .modeling import (
    KiloForCausalLM,
    KiloForMaskedLM,
    KiloForSequenceClassification,
    KiloModel,
    KiloPreTrainedModel,
)
from .encdec import KiloForConditionalGeneration
from .schemes import SCHEMES

__all__ = [
    "SCHEMES",
    "KiloConfig",
    "KiloForCausalLM",
    "KiloForConditionalGeneration",
    "KiloForMaskedLM",
    "KiloForSequenceClassification",
    "KiloModel",
    "KiloPreTrainedModel",
]
