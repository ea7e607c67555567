"""kilolayer: very deep BERT and GPT (1,000 layers and more) with the depth-stabilization scheme as one switch.

``import kilolayer`` is instant: torch and transformers load only when a model class is first used
(``kilolayer.KiloConfig`` …) or when transformers is imported, and at that moment kilolayer registers
``KiloConfig`` and the ``Kilo*`` models with transformers' Auto classes. The ``kilolayer`` command
relies on this to answer ``--help`` at once and to choose its threads before torch starts.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

MODEL_NAMES = (
    "SCHEMES", "KiloConfig", "KiloForCausalLM", "KiloForMaskedLM", "KiloForSequenceClassification", "KiloModel",
    "KiloForConditionalGeneration",
)
__all__ = [*MODEL_NAMES, "__version__"]

_registered = False


def register_auto_classes() -> None:
    """Register KiloConfig and the Kilo* models with AutoConfig / AutoModel* (idempotent).

    Done here, not in modeling/: the exported copy of modeling/ must not register "kilolayer" again.
    """
    global _registered
    if _registered:
        return
    _registered = True
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    from . import modeling

    auto_classes = {
        "AutoModel": (AutoModel, modeling.KiloModel),
        "AutoModelForCausalLM": (AutoModelForCausalLM, modeling.KiloForCausalLM),
        "AutoModelForMaskedLM": (AutoModelForMaskedLM, modeling.KiloForMaskedLM),
        "AutoModelForSequenceClassification": (AutoModelForSequenceClassification, modeling.KiloForSequenceClassification),
        "AutoModelForSeq2SeqLM": (AutoModelForSeq2SeqLM, modeling.KiloForConditionalGeneration),
    }
    AutoConfig.register(modeling.KiloConfig.model_type, modeling.KiloConfig, exist_ok=True)
    modeling.KiloConfig.register_for_auto_class()
    for auto_name, (auto_class, model_class) in auto_classes.items():
        auto_class.register(modeling.KiloConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_name)


def __getattr__(name: str):
    """``kilolayer.KiloConfig`` and friends, imported on first use."""
    if name in MODEL_NAMES:
        from . import modeling

        register_auto_classes()
        return getattr(modeling, name)
    raise AttributeError(f"module 'kilolayer' has no attribute {name!r}")


class _RegisterWhenLoaded(importlib.abc.MetaPathFinder):
    """Registers the Auto classes right after transformers or kilolayer.modeling finishes importing."""

    WATCHED = ("transformers", "kilolayer.modeling")

    def find_spec(self, name, path, target=None):
        if name not in self.WATCHED:
            return None
        self.uninstall()  # let the normal finders produce the spec
        try:
            spec = importlib.util.find_spec(name)
        finally:
            if not _registered:
                sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            # After transformers: register (which imports kilolayer.modeling) unless kilolayer.modeling is the
            # module mid-import that pulled transformers in; its own completion registers.
            if name == "kilolayer.modeling" or "kilolayer.modeling" not in sys.modules:
                self.uninstall()
                register_auto_classes()

        spec.loader.exec_module = exec_module
        return spec

    def uninstall(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


if "transformers" in sys.modules:
    register_auto_classes()
else:
    sys.meta_path.insert(0, _RegisterWhenLoaded())
