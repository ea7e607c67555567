"""KiloConfig: one serializable description of a deep BERT or GPT.

The residual scheme is a string resolved by the registry in ``schemes.py``. Its constants
(α, β) are stored explicitly: derived from the depth only when not given, so a model loaded
later keeps exactly the constants it was trained with.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .schemes import DYT_ALPHA_INIT, SCHEMES, scheme_class

ARCHS = ("gpt", "bert")
NORMS = ("layernorm", "rmsnorm", "dyt")
# The schemes' stored constants, each with the range it must lie in (a scheme's default_constants names its own).
SCHEME_CONSTANTS = {
    "alpha": (lambda value: value > 0, "> 0"),
    "beta": (lambda value: value > 0, "> 0"),
    "post_ln_fraction": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "branch_exponent": (lambda value: value >= 0, ">= 0"),
}
POSITIONS = ("learned", "rotary")


class KiloConfig(PretrainedConfig):
    """Configuration of a kilolayer model.

    arch: "gpt" (causal) or "bert" (bidirectional). A layer is an attention sublayer plus an FFN
    sublayer; ``num_layers`` is N in the scheme equations. ``alpha`` is the residual scale α of
    the schemes ``x ← LN(α·x + G(x))``; ``beta`` is the init gain of the scaled projections
    (DeepNorm's β, Sub-LN's γ, T-Fixup's 0.67·N^{-1/4}); ``post_ln_fraction`` is Mix-LN's share of
    Post-LN layers; ``branch_exponent`` is a in ``x + N^{-a}·G(LN(x))``. Each stays None for schemes
    that do not use it. ``dyt_alpha`` is the initial α of ``norm: dyt`` (γ·tanh(α·x) + β).
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
    post_ln_fraction: float | None = None
    branch_exponent: float | None = None
    dyt_alpha: float | None = None
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
        for name, (in_range, range_text) in SCHEME_CONSTANTS.items():
            value = getattr(self, name)
            if value is None:
                setattr(self, name, defaults.get(name))
            elif name not in defaults:
                raise ValueError(f"scheme {self.scheme!r} takes no {name}; remove it from the config")
            elif not in_range(value):
                raise ValueError(f"{name} must be {range_text}, got {value!r}")
        if self.norm != "dyt" and self.dyt_alpha is not None:
            raise ValueError(f"dyt_alpha is the initial α of norm: dyt, but norm is {self.norm!r}; remove dyt_alpha")
        if self.norm == "dyt":
            self.dyt_alpha = DYT_ALPHA_INIT if self.dyt_alpha is None else self.dyt_alpha
            if not self.dyt_alpha > 0:
                raise ValueError(f"dyt_alpha must be > 0, got {self.dyt_alpha!r}")
        if self.ffn_size is None:
            self.ffn_size = 4 * self.hidden_size
        elif self.ffn_size < 1:
            raise ValueError(f"ffn_size must be a positive integer, got {self.ffn_size!r}")
        if self.type_vocab_size is None:
            self.type_vocab_size = 2 if self.arch == "bert" else 0
        if self.embedding_norm is None:
            self.embedding_norm = self.arch == "bert"

    def scheme_constants(self) -> dict[str, float]:
        """The constants this model's scheme uses (α, β, ...), by name."""
        return {name: getattr(self, name) for name in SCHEME_CONSTANTS if getattr(self, name) is not None}

    @property
    def is_causal(self) -> bool:
        return self.arch == "gpt"

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def summary(self) -> str:
        """One line for logs and model cards."""
        constants = ", ".join(f"{name}={value:.4g}" for name, value in self.scheme_constants().items())
        return (
            f"{self.arch} {self.num_layers}x{self.hidden_size} heads={self.num_heads} ffn={self.ffn_size} "
            f"vocab={self.vocab_size} scheme={self.scheme}" + (f" ({constants})" if constants else "")
        )


__all__ = ["KiloConfig", "SCHEMES"]
