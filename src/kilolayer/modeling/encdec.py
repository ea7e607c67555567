"""The encoder-decoder family (arch "encdec"): N encoder blocks, M decoder blocks, one vocabulary.

An encoder block is the BERT block (bidirectional self-attention, FFN). A decoder block has three
sublayers: causal self-attention, cross-attention over the encoder's output, FFN. Every sublayer of
both stacks is joined to its residual stream by the config's scheme, each stack with its own
constants (``KiloConfig.stack_config``): the encoder's α, β are the config's, the decoder's are
``decoder_constants`` (DeepNet's encoder-decoder values for DeepNorm, see ``schemes.py``).

Under ``generate()`` the encoder runs once; the decoder's self-attention keys and values grow in the
cache's self-attention part, and each layer's cross-attention keys and values are computed from the
encoder output at the first step and read back from the cache's cross-attention part afterwards.
Read top to bottom: cross-attention, decoder block, the two stacks, the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from .configuration import KiloConfig
from .layers import FeedForward, RotaryEmbedding, SelfAttention, tag_roles
from .losses import LogitsWorkspace, linear_cross_entropy
from .modeling import (
    CACHE_FIELD,
    KiloBlock,
    KiloPreTrainedModel,
    check_cache_position,
    gc_paused,
    output_tuple_or_dict,
    plain_linear,
    token_loss,
    training_step,
)
from .schemes import build_norm, scheme_class


class CrossAttention(nn.Module):
    """Multi-head attention of the decoder stream (queries) over the encoder output (keys, values).

    Roles for the init rules: Q and K as in self-attention (gain 1 under DeepNorm), V and the output
    projection scaled like every residual branch. No positions: the encoder output carries its own.
    """

    def __init__(self, config, layer_index: int, inner_norm: bool):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.layer_index = layer_index
        self.dropout = config.attention_dropout
        hidden = config.hidden_size
        self.query = tag_roles(nn.Linear(hidden, hidden, bias=config.use_bias), "q")
        self.key_value = tag_roles(nn.Linear(hidden, 2 * hidden, bias=config.use_bias), "k", "v")
        self.inner_norm = build_norm(config) if inner_norm else nn.Identity()
        self.out = tag_roles(nn.Linear(hidden, hidden, bias=config.use_bias), "attn_out")
        self.out_dropout = nn.Dropout(config.hidden_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, hidden) → (B, heads, T, head)."""
        return x.view(*x.shape[:2], self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, x, encoder_hidden, encoder_mask, cache: EncoderDecoderCache | None = None):
        q = self._heads(self.query(x))
        if cache is not None and cache.is_updated.get(self.layer_index):
            layer = cache.cross_attention_cache.layers[self.layer_index]
            k, v = layer.keys, layer.values
        else:
            k, v = (self._heads(part) for part in self.key_value(encoder_hidden).chunk(2, dim=-1))
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, self.layer_index)
                cache.is_updated[self.layer_index] = True
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=encoder_mask, dropout_p=self.dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(x.shape)
        return self.out_dropout(self.out(self.inner_norm(attended)))


class KiloDecoderBlock(GradientCheckpointingLayer):
    """x ← R_self(x, causal self-attention); x ← R_cross(x, cross-attention); x ← R_ffn(x, FFN)."""

    def __init__(self, config: KiloConfig, layer_index: int):
        super().__init__()
        scheme = scheme_class(config.scheme)
        layer_number = layer_index + 1
        self.attention = SelfAttention(config, layer_index, inner_norm=scheme.inner_norm)
        self.attention_residual = scheme(config, layer_number=layer_number)
        self.cross_attention = CrossAttention(config, layer_index, inner_norm=scheme.inner_norm)
        self.cross_attention_residual = scheme(config, layer_number=layer_number)
        self.ffn = FeedForward(config, inner_norm=scheme.inner_norm)
        self.ffn_residual = scheme(config, layer_number=layer_number)

    def forward(self, hidden, encoder_hidden, mask=None, is_causal=True, encoder_mask=None, rotary=None, cache=None):
        self_cache = cache.self_attention_cache if cache is not None else None
        hidden = self.attention_residual(hidden, lambda h: self.attention(h, mask, is_causal, rotary, self_cache))
        hidden = self.cross_attention_residual(
            hidden, lambda h: self.cross_attention(h, encoder_hidden, encoder_mask, cache)
        )
        return self.ffn_residual(hidden, self.ffn)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """SDPA's boolean key mask (B, 1, 1, S) from a (B, S) 0/1 mask; None when nothing is padded (the fast path)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask[:, None, None, :].bool()


class KiloStack(nn.Module):
    """What both stacks share: positions, embedding norm and dropout, the blocks, the final norm.

    ``config`` is the stack's view (``KiloConfig.stack_config``); every projection is tagged with it so
    that the init rules use this stack's depth and constants.
    """

    block_class: type[nn.Module] = KiloBlock

    def __init__(self, config: KiloConfig):
        super().__init__()
        self.stack_config = config
        self.embed_positions = (
            nn.Embedding(config.max_positions, config.hidden_size) if config.position_embedding == "learned" else None
        )
        self.rotary = RotaryEmbedding(config) if config.position_embedding == "rotary" else None
        self.embed_norm = build_norm(config) if config.embedding_norm else nn.Identity()
        self.embed_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(self.block_class(config, i) for i in range(config.num_layers))
        self.final_norm = build_norm(config) if scheme_class(config.scheme).final_norm else nn.Identity()
        for module in self.modules():
            if hasattr(module, "init_roles"):
                module.stack_config = config

    def embed(self, inputs_embeds: torch.Tensor, past_length: int = 0):
        """(hidden, rotary tables) for tokens at positions past_length, past_length + 1, ..."""
        length = inputs_embeds.shape[1]
        if past_length + length > self.stack_config.max_positions and self.embed_positions is not None:
            raise ValueError(
                f"{past_length + length} tokens exceed the {self.stack_config.max_positions} learned positions "
                f"(max_positions); shorten the input"
            )
        position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
        hidden = inputs_embeds
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        hidden = self.embed_dropout(self.embed_norm(hidden))
        rotary = self.rotary(position_ids, hidden.dtype) if self.rotary is not None else None
        return hidden, rotary


class KiloEncoder(KiloStack):
    """Token embeddings (shared with the decoder and the LM head) → N bidirectional blocks → final norm."""

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutput:
        """``attention_mask`` (B, S), 1 = real token. This is what ``generate()`` calls once per prompt."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if output_attentions:
            raise ValueError("the encoder-decoder does not return attention weights; drop output_attentions")
        hidden, rotary = self.embed(self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds)
        mask = padding_mask(attention_mask)
        all_hidden = [hidden] if output_hidden_states else None
        for block in self.layers:
            hidden = block(hidden, mask=mask, is_causal=False, rotary=rotary)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.final_norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        output = BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(all_hidden) if all_hidden else None)
        return output if return_dict is not False else output.to_tuple()


class KiloDecoder(KiloStack):
    """M causal blocks with cross-attention over the encoder output → final norm."""

    block_class = KiloDecoderBlock

    def forward(self, inputs_embeds, encoder_hidden, encoder_attention_mask=None, cache=None, output_hidden_states=False):
        """(last hidden state, all hidden states or None). Decoder inputs are right-padded, if at all:
        causal attention never looks right, so a target's padding needs no mask (its labels are -100)."""
        past_length = cache.get_seq_length() if cache is not None else 0
        hidden, rotary = self.embed(inputs_embeds, past_length)
        length = hidden.shape[1]
        if length == 1:  # one new token attends to everything cached
            mask, is_causal = None, False
        elif past_length == 0:
            mask, is_causal = None, True
        else:  # several new tokens after a cache: causal triangle shifted by the cached length
            keys = torch.arange(past_length + length, device=hidden.device)
            mask, is_causal = keys[None, :] <= keys[past_length:, None], False
        encoder_mask = padding_mask(encoder_attention_mask)
        all_hidden = [hidden] if output_hidden_states else None
        for block in self.layers:
            hidden = block(hidden, encoder_hidden, mask=mask, is_causal=is_causal, encoder_mask=encoder_mask,
                           rotary=rotary, cache=cache)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.final_norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        return hidden, tuple(all_hidden) if all_hidden else None


class KiloEncoderDecoderModel(nn.Module):
    """The two stacks. ``layers`` lists the encoder's blocks then the decoder's, so the trainer's per-block
    diagnostics, FSDP units and ``torch.compile`` treat an encoder-decoder like any kilolayer stack."""

    def __init__(self, config: KiloConfig):
        super().__init__()
        self.encoder = KiloEncoder(config.stack_config("encoder"))
        self.decoder = KiloDecoder(config.stack_config("decoder"))

    @property
    def layers(self) -> list[nn.Module]:
        return [*self.encoder.layers, *self.decoder.layers]


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: [start, y_1, ..., y_{T-1}], ignored labels (-100) read as padding."""
    inputs = labels.new_full(labels.shape, start_token_id)
    inputs[:, 1:] = labels[:, :-1]
    return inputs.masked_fill_(inputs == -100, pad_token_id)


class KiloForConditionalGeneration(KiloPreTrainedModel, GenerationMixin):
    """Encoder-decoder LM (T5/BART's interface): ``input_ids`` → encoder; ``labels`` → shifted decoder inputs, loss."""

    _tied_weights_keys = {"lm_head.weight": "model.encoder.embed_tokens.weight"}
    _no_split_modules = ["KiloBlock", "KiloDecoderBlock"]

    def __init__(self, config: KiloConfig):
        if not config.is_encoder_decoder:
            raise ValueError(f"KiloForConditionalGeneration needs arch: encdec, got arch {config.arch!r}")
        super().__init__(config)
        with init.no_init_weights(), gc_paused():  # post_init() initialises every weight once
            self.model = KiloEncoderDecoderModel(config)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logits_workspace = LogitsWorkspace()
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        """As every kilolayer model, except that a stack's projections follow the init rule with that stack's
        depth and constants (DeepNorm's encoder β differs from its decoder β)."""
        stack_config = getattr(module, "stack_config", None) if isinstance(module, nn.Linear) else None
        if stack_config is None:
            super()._init_weights(module)
            return
        if not getattr(module.weight, "_is_hf_initialized", False):
            scheme = scheme_class(stack_config.scheme)
            for role, rows in module.init_roles:
                scheme.init_projection(module.weight[rows], role, stack_config)
        if module.bias is not None:
            init.zeros_(module.bias)

    def get_encoder(self, modality: str | None = None):
        return self.model.encoder

    def get_input_embeddings(self):
        return self.model.encoder.embed_tokens

    def set_input_embeddings(self, value):
        self.model.encoder.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        start, pad = self.config.decoder_start_token_id, self.config.pad_token_id
        if start is None or pad is None:
            raise ValueError("labels need decoder_start_token_id and pad_token_id in the config to build decoder inputs")
        return shift_right(labels, start, pad)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        encoder_outputs: BaseModelOutput | tuple | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        cache_position: torch.LongTensor | None = None,
    ) -> Seq2SeqLMOutput:
        """``labels`` (B, T) are the decoder's targets (-100 = none); without ``decoder_input_ids`` the decoder
        reads them shifted right after ``decoder_start_token_id``. ``encoder_outputs`` skips the encoder
        (``generate()`` passes them). With ``config.fused_loss`` a training step returns ``logits=None``."""
        config = self.config
        if cache is not None and past_key_values is not None:
            raise TypeError("got both cache and past_key_values: pass the KV cache once, as cache")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, EncoderDecoderCache):
            raise TypeError(f"an encoder-decoder's cache is an EncoderDecoderCache, got {type(cache).__name__}")
        use_cache = config.use_cache if use_cache is None else use_cache
        if cache is None and use_cache and not self.training and labels is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        if (decoder_input_ids is None) == (decoder_inputs_embeds is None):
            raise ValueError("give exactly one of decoder_input_ids, decoder_inputs_embeds (or labels)")

        if encoder_outputs is None:
            encoder_outputs = self.model.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(*encoder_outputs)
        if decoder_inputs_embeds is None:
            decoder_inputs_embeds = self.model.encoder.embed_tokens(decoder_input_ids)
        past_length = cache.get_seq_length() if cache is not None else 0
        check_cache_position(cache_position, past_length, decoder_inputs_embeds.shape[1])
        hidden, decoder_hidden_states = self.model.decoder(
            decoder_inputs_embeds, encoder_outputs.last_hidden_state, attention_mask, cache, output_hidden_states
        )

        logits = loss = None
        if labels is not None and config.fused_loss and training_step(self) and plain_linear(self.lm_head):
            loss = linear_cross_entropy(
                hidden.flatten(0, 1), self.lm_head.weight, self.lm_head.bias, labels.flatten(),
                workspace=self.logits_workspace, num_items=num_items_in_batch,
            )
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = token_loss(logits.flatten(0, 1), labels.flatten(), num_items_in_batch)
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            decoder_hidden_states=decoder_hidden_states,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            **{CACHE_FIELD: cache},
        )
        return output_tuple_or_dict(output, config, return_dict)


__all__ = ["CrossAttention", "KiloDecoderBlock", "KiloEncoder", "KiloDecoder", "KiloForConditionalGeneration"]
