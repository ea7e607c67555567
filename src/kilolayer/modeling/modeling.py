"""kilolayer models: one block implementation serves the GPT (causal) and BERT (bidirectional) families.

A block is two sublayers, attention and FFN, each joined to the residual stream by the scheme
(``schemes.py``). Read top to bottom: the Hugging Face calling conventions (cache, positions,
losses), block, base model, then the three task heads.

The forwards name every argument transformers' ``generate()`` and ``Trainer`` pass, from 5.6 (the
floor: ``.ci/lowest.txt`` says why) to the current release: the KV cache as ``cache`` (≥ 5.24) or
``past_key_values``. Anything else is a ``TypeError`` naming the argument.
"""

from __future__ import annotations

import contextlib
import gc

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
)

from .configuration import KiloConfig
from .layers import FeedForward, RotaryEmbedding, SelfAttention, build_activation
from .losses import LogitsWorkspace, linear_cross_entropy
from .schemes import DynamicTanh, ReZero, build_norm, scheme_class

# ---------------------------------------------------------------- Hugging Face calling conventions
# Shared with every kilolayer model that attends causally over a KV cache (the encoder-decoder's decoder too).

# transformers 5.24 renamed the outputs' ``past_key_values`` field to ``cache`` (the old name still works, with a warning)
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def resolve_cache(config, *, cache: Cache | None, past_key_values: Cache | None, use_cache: bool | None,
                  causal: bool, training: bool) -> Cache | None:
    """The KV cache one forward reads and extends, or None.

    transformers ≥ 5.24 passes it as ``cache``, earlier 5.x as ``past_key_values``. A given cache is
    always used; a fresh ``DynamicCache`` is made only for a causal stack in eval mode when
    ``use_cache`` (default ``config.use_cache``) asks for one: scoring passes ``use_cache=False``
    so that a deep model does not keep every layer's keys and values.
    """
    if cache is not None and past_key_values is not None:
        raise TypeError("got both cache and past_key_values: pass the KV cache once, as cache")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not causal:
        raise TypeError("a bidirectional (BERT) model has no KV cache: drop cache/past_key_values")
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(f"cache must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
    if use_cache and not causal:
        raise TypeError("a bidirectional (BERT) model has no KV cache: drop use_cache=True")
    use_cache = config.use_cache if use_cache is None else use_cache
    if cache is None and use_cache and causal and not training:
        cache = DynamicCache(config=config)
    return cache


def check_cache_position(cache_position: torch.Tensor | None, past_length: int, length: int) -> None:
    """``cache_position`` (the new tokens' slots in the cache) is redundant with the cache itself, which
    kilolayer reads; given (remote-code callers of transformers < 5.24 may), it must agree with it."""
    if cache_position is None:
        return
    if cache_position.shape[-1] != length or int(cache_position.reshape(-1)[0]) != past_length:
        raise ValueError(
            f"cache_position {cache_position.tolist()} does not continue the cache ({past_length} cached tokens, "
            f"{length} new); pass the cache the positions belong to, or no cache_position"
        )


def position_ids_from_mask(attention_mask: torch.Tensor | None, past_length: int, length: int, device) -> torch.Tensor:
    """Positions of the ``length`` new tokens, (1 or B, length).

    With a 2-D ``attention_mask`` over all (cached + new) tokens, a token's position is the number
    of real tokens before it, so a left-padded row starts at 0 like an unpadded one (padding sits
    at 0 too, and is never attended). Without a mask: past_length, past_length + 1, ...
    """
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None]
    if attention_mask.dim() != 2 or attention_mask.shape[1] != past_length + length:
        raise ValueError(
            f"attention_mask must be (batch, cached + new tokens) = (batch, {past_length + length}), "
            f"got {tuple(attention_mask.shape)}"
        )
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -length:]


def output_tuple_or_dict(output, config, return_dict: bool | None):
    """``return_dict=False`` (or ``config.return_dict`` False) gives the output's non-None fields as a tuple."""
    return output if (config.return_dict if return_dict is None else return_dict) else output.to_tuple()


def token_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Σ cross-entropy over targets ≠ -100, divided by ``num_items_in_batch`` when the HF Trainer gives it
    (the targets of all micro-batches of one optimizer step), else by this batch's count.

    So gradient accumulation over k micro-batches equals one batch k times larger, and a batch with
    every target ignored gives loss 0 and zero gradients (the mean over nothing would be NaN).
    """
    total = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != -100).sum().clamp_min(1)
    return total / num_items_in_batch


def plain_linear(module: nn.Module) -> bool:
    """True for an ``nn.Linear`` that a forward call would run as is: no hooks on it (PEFT, quantized and
    ZeRO-3-gathered heads are other classes or hook it), so reading its weight directly is the same."""
    return (
        type(module) is nn.Linear
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not torch.nn.modules.module._global_forward_hooks
        and not torch.nn.modules.module._global_forward_pre_hooks
    )


@contextlib.contextmanager
def gc_paused():
    """Pause Python's cyclic garbage collector while building the stack: each collection walks every
    object built so far, and the ~16 modules per block trigger hundreds of them (half of a 1000-layer build)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class KiloBlock(GradientCheckpointingLayer):
    """One layer: x ← R_attn(x, Attention); x ← R_ffn(x, FFN), with R the scheme's residual connection."""

    def __init__(self, config: KiloConfig, layer_index: int):
        super().__init__()
        scheme = scheme_class(config.scheme)
        self.attention = SelfAttention(config, layer_index, inner_norm=scheme.inner_norm)
        self.attention_residual = scheme(config, layer_number=layer_index + 1)
        self.ffn = FeedForward(config, inner_norm=scheme.inner_norm)
        self.ffn_residual = scheme(config, layer_number=layer_index + 1)

    def forward(self, hidden, mask=None, is_causal=False, rotary=None, cache=None, attention_weights=None):
        hidden = self.attention_residual(
            hidden, lambda h: self.attention(h, mask, is_causal, rotary, cache, attention_weights)
        )
        return self.ffn_residual(hidden, self.ffn)


class KiloPreTrainedModel(PreTrainedModel):
    config_class = KiloConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["KiloBlock"]
    _supports_sdpa = True
    # The heads take ``num_items_in_batch`` and divide their summed loss by it: the HF Trainer then does
    # not divide by the accumulation steps itself (see ``token_loss``).
    accepts_loss_kwargs = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Projections follow the scheme's rule per role (fused QKV slice by slice); the rest is N(0, σ²)."""
        config = self.config
        if isinstance(module, nn.Linear):
            roles = getattr(module, "init_roles", None)
            if roles is None:
                init.normal_(module.weight, mean=0.0, std=config.initializer_range)
            elif not getattr(module.weight, "_is_hf_initialized", False):  # slices lose HF's loaded flag
                scheme = scheme_class(config.scheme)
                for role, rows in roles:
                    scheme.init_projection(module.weight[rows], role, config)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=config.initializer_range)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ReZero):
            init.zeros_(module.gate)
        elif isinstance(module, DynamicTanh):
            init.constant_(module.alpha, config.dyt_alpha)
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RotaryEmbedding):
            head = config.head_size
            inv_freq = 1.0 / (config.rotary_base ** (torch.arange(0, head, 2, dtype=torch.float32) / head))
            init.copy_(module.inv_freq, inv_freq)


class KiloModel(KiloPreTrainedModel):
    """Embeddings → N blocks → final norm (only for schemes whose stream is not normed after each sublayer)."""

    accepts_loss_kwargs = False  # no loss here

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        hidden = config.hidden_size
        with init.no_init_weights(), gc_paused():  # post_init() initialises every weight; GC passes over a growing tree are wasted
            self.embed_tokens = nn.Embedding(config.vocab_size, hidden)
            self.embed_positions = (
                nn.Embedding(config.max_positions, hidden) if config.position_embedding == "learned" else None
            )
            self.rotary = RotaryEmbedding(config) if config.position_embedding == "rotary" else None
            self.embed_token_types = nn.Embedding(config.type_vocab_size, hidden) if config.type_vocab_size else None
            self.embed_norm = build_norm(config) if config.embedding_norm else nn.Identity()
            self.embed_dropout = nn.Dropout(config.hidden_dropout)
            self.layers = nn.ModuleList(KiloBlock(config, i) for i in range(config.num_layers))
            self.final_norm = build_norm(config) if scheme_class(config.scheme).final_norm else nn.Identity()
        self.post_init()

    def _attention_mask(self, attention_mask, query_length: int, past_length: int):
        """(mask, is_causal) for SDPA. None + is_causal whenever possible: SDPA's fast path.

        A padded causal batch gets causal ∧ key-not-padding, plus the diagonal so that a query on a
        left-padding position never has every key masked (which would give NaN).
        """
        causal = self.config.is_causal
        padded = attention_mask is not None and not bool(attention_mask.all())
        if not padded and (not causal or query_length == 1):
            return None, False
        if not padded and past_length == 0:
            return None, True
        key_length = past_length + query_length
        device = attention_mask.device if attention_mask is not None else self.embed_tokens.weight.device
        query_positions = torch.arange(past_length, key_length, device=device)[:, None]
        key_positions = torch.arange(key_length, device=device)[None, :]
        mask = key_positions <= query_positions if causal else torch.ones_like(key_positions, dtype=torch.bool)
        if padded:
            mask = mask & attention_mask[:, None, None, :key_length].bool()
            if causal:
                mask = mask | (key_positions == query_positions)
        return mask, False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
    ) -> BaseModelOutputWithPast:
        """``attention_mask`` (B, cached + new tokens), 1 = real token; ``position_ids`` default to the count
        of real tokens before each one (left padding starts at 0). ``output_attentions`` runs eager attention."""
        config = self.config
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        length = hidden.shape[1]
        cache = resolve_cache(config, cache=cache, past_key_values=past_key_values, use_cache=use_cache,
                              causal=config.is_causal, training=self.training)
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, past_length, length, hidden.device)
        if self.embed_positions is not None:
            if past_length + length > config.max_positions:
                raise ValueError(
                    f"{past_length + length} tokens exceed the {config.max_positions} learned positions "
                    f"(max_positions); shorten the input"
                )
            hidden = hidden + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            hidden = hidden + self.embed_token_types(token_type_ids)
        elif token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("this model has no token types (type_vocab_size = 0): drop token_type_ids")
        hidden = self.embed_dropout(self.embed_norm(hidden))
        rotary = self.rotary(position_ids, hidden.dtype) if self.rotary is not None else None
        mask, is_causal = self._attention_mask(attention_mask, length, past_length)

        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        all_hidden = [hidden] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for block in self.layers:
            hidden = block(hidden, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache,
                           attention_weights=all_attentions)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.final_norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        output = BaseModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            attentions=tuple(all_attentions) if all_attentions is not None else None,
            **{CACHE_FIELD: cache},
        )
        return output_tuple_or_dict(output, config, return_dict)


def training_step(model: nn.Module) -> bool:
    """A forward whose loss will be back-propagated: the fused heads then skip the full logits."""
    return model.training and torch.is_grad_enabled()


class KiloForCausalLM(KiloPreTrainedModel, GenerationMixin):
    """GPT family: next-token prediction. ``labels`` = input ids; the shift happens here."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        self.model = KiloModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.logits_workspace = LogitsWorkspace()
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        past_key_values: Cache | None = None,
    ) -> CausalLMOutputWithPast:
        """``labels`` are the input ids (-100 = not a target); the loss divides by ``num_items_in_batch`` when given.

        With ``config.fused_loss`` on, a training step (train mode, grad enabled, labels given) fuses
        the loss with a plain ``nn.Linear`` head and returns ``logits=None`` (``losses.py``); a head
        with hooks or another class (PEFT, quantized) takes the ordinary path. Otherwise logits as usual.
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, cache=cache, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            past_key_values=past_key_values,
        )
        hidden = outputs.last_hidden_state
        logits = loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing (B, T, V) logits copies them, and zero-fills in backward
            targets = F.pad(labels[:, 1:], (0, 1), value=-100).flatten()
        if labels is not None and self.config.fused_loss and training_step(self) and plain_linear(self.lm_head):
            loss = linear_cross_entropy(
                hidden.flatten(0, 1), self.lm_head.weight, self.lm_head.bias, targets,
                workspace=self.logits_workspace, num_items=num_items_in_batch,
            )
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
            if labels is not None:
                if logits_to_keep:
                    raise ValueError("labels score every position: drop logits_to_keep when giving labels")
                loss = token_loss(logits.flatten(0, 1), targets, num_items_in_batch)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output_tuple_or_dict(output, self.config, return_dict)


class KiloMaskedLMHead(nn.Module):
    """BERT's MLM head: decoder(norm(act(dense(h)))) + bias; the decoder is tied to the input embeddings."""

    def __init__(self, config: KiloConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = build_activation(config.hidden_act)
        self.norm = build_norm(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden):
        return self.decoder(self.norm(self.act(self.dense(hidden))))


class KiloForMaskedLM(KiloPreTrainedModel):
    """BERT family: masked-token prediction; ``labels`` is -100 on unmasked positions."""

    _tied_weights_keys = {"lm_head.decoder.weight": "model.embed_tokens.weight"}

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        self.model = KiloModel(config)
        self.lm_head = KiloMaskedLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> MaskedLMOutput:
        """With ``config.fused_loss`` on, a training step (train mode, grad enabled, labels given) sends only
        the masked positions through the head (15 % of the vocabulary projection) and returns ``logits=None``."""
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        hidden = outputs.last_hidden_state
        logits = loss = None
        if labels is not None and self.config.fused_loss and training_step(self):
            scored = labels != -100
            loss = token_loss(self.lm_head(hidden[scored]), labels[scored], num_items_in_batch)
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = token_loss(logits.flatten(0, 1), labels.flatten(), num_items_in_batch)
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output_tuple_or_dict(output, self.config, return_dict)


class KiloForSequenceClassification(KiloPreTrainedModel):
    """Sentence (pair) classification: tanh(dense(summary token)) → classifier.

    The summary token is the first ([CLS]) for BERT and the last non-padding token for GPT (under
    left or right padding). ``num_labels`` = 1 is regression (MSE), otherwise cross-entropy.
    """

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = KiloModel(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> SequenceClassifierOutput:
        """``labels`` (B,); the loss is summed over examples and divided by ``num_items_in_batch`` when given."""
        if use_cache:
            raise TypeError("sequence classification returns no KV cache: drop use_cache=True")
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=False,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        hidden = outputs.last_hidden_state
        batch, length = hidden.shape[:2]
        if self.config.is_causal:
            if attention_mask is None and input_ids is not None and self.config.pad_token_id is not None:
                attention_mask = input_ids != self.config.pad_token_id  # as HF's GPT-2 finds the padding
            if attention_mask is None:
                last = torch.full((batch,), length - 1, device=hidden.device)
            else:  # the rightmost real token: right padding ends earlier, left padding ends at length - 1
                columns = torch.arange(length, device=hidden.device)
                last = (attention_mask.bool() * columns).argmax(-1)
            summary = hidden[torch.arange(batch, device=hidden.device), last]
        else:
            summary = hidden[:, 0]
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(summary))))
        loss = None
        if labels is not None:
            divisor = num_items_in_batch if num_items_in_batch is not None else labels.shape[0]
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum") / divisor
            else:
                loss = F.cross_entropy(logits.float(), labels, reduction="sum") / divisor
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output_tuple_or_dict(output, self.config, return_dict)


__all__ = [
    "KiloBlock",
    "KiloPreTrainedModel",
    "KiloModel",
    "KiloForCausalLM",
    "KiloForMaskedLM",
    "KiloForSequenceClassification",
]
