"""kilolayer: very deep BERT and GPT (1,000 layers and more) with the depth-stabilization scheme as one switch."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .modeling import (
    SCHEMES,
    KiloConfig,
    KiloForCausalLM,
    KiloForMaskedLM,
    KiloForSequenceClassification,
    KiloModel,
)

__version__ = "0.1.0"

AUTO_CLASSES = {
    "AutoModel": (AutoModel, KiloModel),
    "AutoModelForCausalLM": (AutoModelForCausalLM, KiloForCausalLM),
    "AutoModelForMaskedLM": (AutoModelForMaskedLM, KiloForMaskedLM),
    "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, KiloForSequenceClassification),
}

# Registered here, not in modeling/: the exported copy of modeling/ must not register "kilolayer" again.
AutoConfig.register(KiloConfig.model_type, KiloConfig, exist_ok=True)
KiloConfig.register_for_auto_class()
for auto_name, (auto_class, model_class) in AUTO_CLASSES.items():
    auto_class.register(KiloConfig, model_class, exist_ok=True)
    model_class.register_for_auto_class(auto_name)

__all__ = [
    "SCHEMES",
    "KiloConfig",
    "KiloForCausalLM",
    "KiloForMaskedLM",
    "KiloForSequenceClassification",
    "KiloModel",
    "__version__",
]
