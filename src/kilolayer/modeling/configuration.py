"""KiloConfig: one serializable description of a deep BERT or GPT.

The residual scheme is a string resolved by the registry in ``schemes.py``. Its constants
(α, β) are stored explicitly: derived from the depth only when not given, so a model loaded
later keeps exactly the constants it was trained with.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib

from transformers import GenerationConfig, PretrainedConfig
from transformers.activations import ACT2FN

from .schemes import DYT_ALPHA_INIT, SCHEMES, scheme_class

ARCHS = ("gpt", "bert", "encdec")
NORMS = ("layernorm", "rmsnorm", "dyt")
# The schemes' stored constants, each with the range it must lie in (a scheme's default_constants names its own).
SCHEME_CONSTANTS = {
    "alpha": (lambda value: value > 0, "> 0"),
    "beta": (lambda value: value > 0, "> 0"),
    "post_ln_fraction": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "branch_exponent": (lambda value: value >= 0, ">= 0"),
}
POSITIONS = ("learned", "rotary")
ENCDEC_FIELDS = ("num_encoder_layers", "num_decoder_layers", "decoder_constants", "decoder_start_token_id")
# Keys transformers itself passes to a config besides its fields (config.json, from_pretrained, Trainer, older
# versions' attributes); anything else given to KiloConfig is a typo and raises.
PRETRAINED_CONFIG_KEYS = frozenset(
    {
        "model_type", "auto_map", "num_labels", "torch_dtype", "name_or_path", "output_attentions", "attn_implementation",
        "experts_implementation", "per_layer_config", "rope_scaling", "rope_theta", "is_decoder", "add_cross_attention",
        "tie_encoder_decoder", "cross_attention_hidden_size", "pruned_heads", "tokenizer_class", "prefix", "sep_token_id",
        "task_specific_params", "finetuning_task", "torchscript", "use_return_dict", "tf_legacy_loss", "use_bfloat16",
    }
)  # fmt: skip


class KiloConfig(PretrainedConfig):
    """Configuration of a kilolayer model.

    arch: "gpt" (causal), "bert" (bidirectional) or "encdec" (encoder-decoder, ``encdec.py``). A layer
    is an attention sublayer plus an FFN sublayer; ``num_layers`` is N in the scheme equations. ``alpha`` is the residual scale α of
    the schemes ``x ← LN(α·x + G(x))``; ``beta`` is the init gain of the scaled projections
    (DeepNorm's β, Sub-LN's γ, T-Fixup's 0.67·N^{-1/4}); ``post_ln_fraction`` is Mix-LN's share of
    Post-LN layers; ``branch_exponent`` is a in ``x + N^{-a}·G(LN(x))``. Each stays None for schemes
    that do not use it. ``dyt_alpha`` is the initial α of ``norm: dyt`` (γ·tanh(α·x) + β).

    Encoder-decoder: ``num_encoder_layers`` (N) + ``num_decoder_layers`` (M) = ``num_layers``, the
    total depth (either count may be left out: N = ⌈L/2⌉ by default, the other is the rest; both
    given set ``num_layers``). The scheme constants above are the encoder's; ``decoder_constants``
    holds the decoder's by name. Both are derived from (N, M) jointly when not given (DeepNorm's and
    Upscale LN's encoder-decoder α, β; Magneto's γ) and stored like the others.
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
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    decoder_constants: dict | None = None
    decoder_start_token_id: int | None = None
    initializer_range: float = 0.02
    use_bias: bool = True
    tie_word_embeddings: bool = True
    use_cache: bool = True
    # fused_loss: training steps fuse the LM loss with the vocabulary projection and return logits=None
    # (modeling/losses.py); kilolayer's trainer turns it on, plain HF use keeps the logits.
    fused_loss: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        self._reject_unknown_keys(kwargs)
        self._validate_and_complete()
        super().__post_init__(**kwargs)

    def _reject_unknown_keys(self, kwargs: dict) -> None:
        """A keyword that is neither a KiloConfig field nor one transformers passes (``num_layer=3``) is a TypeError."""
        fields = {field.name for field in dataclasses.fields(self)}
        known = fields | set(self.attribute_map) | PRETRAINED_CONFIG_KEYS | set(GenerationConfig().to_dict())
        for key in kwargs:
            if key not in known and not key.startswith("_"):
                close = difflib.get_close_matches(key, sorted(fields), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise TypeError(f"KiloConfig got an unknown keyword {key!r}{hint}")

    def _validate_and_complete(self) -> None:
        """Check every field, then fill the defaults that depend on others (never overwriting)."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.hidden_act not in ACT2FN:
            close = difflib.get_close_matches(str(self.hidden_act), sorted(ACT2FN), n=3)
            raise ValueError(f"hidden_act {self.hidden_act!r} is not an activation transformers knows; use one of {', '.join(close or ['gelu', 'gelu_new', 'relu', 'silu'])}")
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
        self.is_encoder_decoder = self.arch == "encdec"
        if self.is_encoder_decoder:
            self._split_layers()
            defaults, decoder_defaults = scheme.default_encdec_constants(self.num_encoder_layers, self.num_decoder_layers)
            self.decoder_constants = self._checked_decoder_constants(decoder_defaults)
            if self.decoder_start_token_id is None:
                self.decoder_start_token_id = self.pad_token_id  # T5's convention
        else:
            encdec_only = [name for name in ENCDEC_FIELDS if getattr(self, name) is not None]
            if encdec_only:
                raise ValueError(f"{', '.join(encdec_only)} only apply to arch encdec; remove them or set arch: encdec")
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
            self.embedding_norm = self.arch != "gpt"  # BERT's and BART's embedding LayerNorm

    def _split_layers(self) -> None:
        """N + M = num_layers: both given set num_layers; one given leaves the rest to the other; none: N = ⌈L/2⌉."""
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        encoder, decoder = self.num_encoder_layers, self.num_decoder_layers
        if encoder is not None and decoder is not None:
            self.num_layers = encoder + decoder
            return
        if encoder is None and decoder is None:
            encoder = (self.num_layers + 1) // 2
        encoder = encoder if encoder is not None else self.num_layers - decoder
        decoder = decoder if decoder is not None else self.num_layers - encoder
        if encoder < 1 or decoder < 1:
            raise ValueError(
                f"an encoder-decoder of num_layers={self.num_layers} leaves no layer to one stack "
                f"(num_encoder_layers={encoder}, num_decoder_layers={decoder}); give both counts"
            )
        self.num_encoder_layers, self.num_decoder_layers = encoder, decoder

    def _checked_decoder_constants(self, defaults: dict[str, float]) -> dict[str, float]:
        """The decoder's constants: the given ones (checked by name and range), the rest derived."""
        given = dict(self.decoder_constants or {})
        for name, value in given.items():
            if name not in defaults:
                raise ValueError(
                    f"scheme {self.scheme!r} takes no {name} in decoder_constants "
                    f"(it takes: {', '.join(defaults) or 'none'}); remove it"
                )
            in_range, range_text = SCHEME_CONSTANTS[name]
            if not in_range(value):
                raise ValueError(f"decoder_constants {name} must be {range_text}, got {value!r}")
        return {**defaults, **given}

    def stack_config(self, stack: str) -> "KiloConfig":
        """The view of an encoder-decoder config one stack is built from: its depth as ``num_layers``, its
        constants, and arch "bert" (the bidirectional encoder) or "gpt" (the causal decoder), so that blocks,
        schemes and init rules read it like the config of any other stack."""
        view = copy.copy(self)
        view.is_encoder_decoder = False
        if stack == "encoder":
            view.arch, view.num_layers = "bert", self.num_encoder_layers
        elif stack == "decoder":
            view.arch, view.num_layers = "gpt", self.num_decoder_layers
            for name, value in self.decoder_constants.items():
                setattr(view, name, value)
        else:
            raise ValueError(f"stack must be encoder or decoder, got {stack!r}")
        return view

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
        depth = str(self.num_layers)
        if self.is_encoder_decoder:
            depth = f"{self.num_encoder_layers}+{self.num_decoder_layers}"
            decoder = ", ".join(f"{name}={value:.4g}" for name, value in self.decoder_constants.items())
            constants = f"encoder {constants}; decoder {decoder}" if constants else ""
        return (
            f"{self.arch} {depth}x{self.hidden_size} heads={self.num_heads} ffn={self.ffn_size} "
            f"vocab={self.vocab_size} scheme={self.scheme}" + (f" ({constants})" if constants else "")
        )


__all__ = ["KiloConfig", "SCHEMES"]
