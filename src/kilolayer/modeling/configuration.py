"""KiloConfig: one serializable description of a deep BERT or GPT.

The residual scheme is a string resolved by the registry in ``schemes.py``. Its constants
(α, β) are stored explicitly: derived from the depth only when not given, so a model loaded
later keeps exactly the constants it was trained with.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .schemes import SCHEMES, scheme_class

ARCHS = ("gpt", "bert")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rotary")


class KiloConfig(PretrainedConfig):
    """Configuration of a kilolayer model.

    arch: "gpt" (causal) or "bert" (bidirectional). A layer is an attention sublayer plus an FFN
    sublayer; ``num_layers`` is N in the scheme equations. ``alpha`` is the residual scale α of
    the schemes ``x ← LN(α·x + G(x))``; ``beta`` is the init gain of the scaled projections
    (DeepNorm's β, Sub-LN's γ). Both stay None for schemes that do not use them.
    """

    model_type = "kilolayer"
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "num_attention_heads": "num_heads",
        "max_position_embeddings": "max_positions",
        "intermediate_size": "ffn_size",
    }

    arch: str = "gpt"
    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    ffn_size: int | None = None
    vocab_size: int = 50257
    max_positions: int = 1024
    position_embedding: str = "learned"
    rotary_base: float = 10000.0
    type_vocab_size: int | None = None
    embedding_norm: bool | None = None
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    scheme: str = "pre_ln"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    alpha: float | None = None
    beta: float | None = None
    initializer_range: float = 0.02
    use_bias: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        self._validate_and_complete()
        super().__post_init__(**kwargs)

    def _validate_and_complete(self) -> None:
        """Check every field, then fill the defaults that depend on others (never overwriting)."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        for name in ("num_layers", "hidden_size", "num_heads", "vocab_size", "max_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}); "
                f"choose a divisor of {self.hidden_size}"
            )
        if self.position_embedding == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("rotary positions need an even head size (hidden_size / num_heads)")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.position_embedding not in POSITIONS:
            raise ValueError(
                f"position_embedding must be one of {', '.join(POSITIONS)}, got {self.position_embedding!r}"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        scheme = scheme_class(self.scheme)  # raises with the list of known schemes
        defaults = scheme.default_constants(self.num_layers)
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, defaults.get(name))
            elif name not in defaults:
                raise ValueError(f"scheme {self.scheme!r} takes no {name}; remove it from the config")
            elif not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.ffn_size is None:
            self.ffn_size = 4 * self.hidden_size
        elif self.ffn_size < 1:
            raise ValueError(f"ffn_size must be a positive integer, got {self.ffn_size!r}")
        if self.type_vocab_size is None:
            self.type_vocab_size = 2 if self.arch == "bert" else 0
        if self.embedding_norm is None:
            self.embedding_norm = self.arch == "bert"

    @property
    def is_causal(self) -> bool:
        return self.arch == "gpt"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def summary(self) -> str:
        """One line for logs and model cards."""
        constants = ", ".join(f"{k}={getattr(self, k):.4g}" for k in ("alpha", "beta") if getattr(self, k))
        return (
            f"{self.arch} {self.num_layers}x{self.hidden_size} heads={self.num_heads} ffn={self.ffn_size} "
            f"vocab={self.vocab_size} scheme={self.scheme}" + (f" ({constants})" if constants else "")
        )


__all__ = ["KiloConfig", "SCHEMES"]
