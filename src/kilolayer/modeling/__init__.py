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

# The model each arch pretrains (the trainer, ``kilolayer info``, the study's parameter budgets).
PRETRAINING_CLASSES = {"gpt": KiloForCausalLM, "bert": KiloForMaskedLM, "encdec": KiloForConditionalGeneration}

__all__ = [
    "PRETRAINING_CLASSES",
    "SCHEMES",
    "KiloConfig",
    "KiloForCausalLM",
    "KiloForConditionalGeneration",
    "KiloForMaskedLM",
    "KiloForSequenceClassification",
    "KiloModel",
    "KiloPreTrainedModel",
]
