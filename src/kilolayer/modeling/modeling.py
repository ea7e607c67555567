"""kilolayer models: one block implementation serves the GPT (causal) and BERT (bidirectional) families.

A block is two sublayers, attention and FFN, each joined to the residual stream by the scheme
(``schemes.py``). Read top to bottom: block, base model, then the three task heads.
"""

from __future__ import annotations

import contextlib
import gc

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import DynamicCache
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

    def forward(self, hidden, mask=None, is_causal=False, rotary=None, cache=None):
        hidden = self.attention_residual(hidden, lambda h: self.attention(h, mask, is_causal, rotary, cache))
        return self.ffn_residual(hidden, self.ffn)


class KiloPreTrainedModel(PreTrainedModel):
    config_class = KiloConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["KiloBlock"]
    _supports_sdpa = True

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
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        past_key_values=None,
        use_cache=None,
        output_hidden_states=None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        hidden = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = hidden.shape[:2]
        use_cache = self.config.is_causal and not self.training and (
            use_cache if use_cache is not None else self.config.use_cache
        )
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache else None
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=hidden.device)[None]
        if self.embed_positions is not None:
            hidden = hidden + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(position_ids)
            hidden = hidden + self.embed_token_types(token_type_ids)
        hidden = self.embed_dropout(self.embed_norm(hidden))
        rotary = self.rotary(position_ids, hidden.dtype) if self.rotary is not None else None
        mask, is_causal = self._attention_mask(attention_mask, length, past_length)

        all_hidden = [hidden] if output_hidden_states else None
        for block in self.layers:
            hidden = block(hidden, mask=mask, is_causal=is_causal, rotary=rotary, cache=cache)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.final_norm(hidden)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=cache,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
        )


def training_step(model: nn.Module) -> bool:
    """A forward whose loss will be back-propagated: the heads then skip the full logits."""
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

    def forward(self, input_ids=None, attention_mask=None, labels=None, logits_to_keep: int = 0, **kwargs):
        """With ``labels`` in a training step (train mode, grad enabled) the loss is fused with the head
        and ``logits`` is None (``losses.py``); otherwise logits as usual."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state
        logits = loss = None
        if labels is not None:
            # shift the labels, not the logits: slicing (B, T, V) logits copies them, and zero-fills in backward
            targets = F.pad(labels[:, 1:], (0, 1), value=-100).flatten()
        if labels is not None and training_step(self):
            loss = linear_cross_entropy(
                hidden.flatten(0, 1), self.lm_head.weight, self.lm_head.bias, targets, workspace=self.logits_workspace
            )
        else:
            logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
            if labels is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets, ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
        )


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

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """With ``labels`` in a training step (train mode, grad enabled) only the masked positions go
        through the head (15 % of the vocabulary projection) and ``logits`` is None."""
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = outputs.last_hidden_state
        logits = loss = None
        if labels is not None and training_step(self):
            scored = labels != -100
            loss = F.cross_entropy(self.lm_head(hidden[scored]).float(), labels[scored])
        else:
            logits = self.lm_head(hidden)
            if labels is not None:
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class KiloForSequenceClassification(KiloPreTrainedModel):
    """Sentence (pair) classification: tanh(dense(summary token)) → classifier.

    The summary token is the first ([CLS]) for BERT and the last non-padding token for GPT.
    ``num_labels`` = 1 is regression (MSE), otherwise cross-entropy.
    """

    def __init__(self, config: KiloConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = KiloModel(config)
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, use_cache=False, **kwargs
        )
        hidden = outputs.last_hidden_state
        if self.config.is_causal:
            last = (attention_mask.sum(-1) - 1) if attention_mask is not None else torch.full_like(hidden[:, 0, 0], hidden.shape[1] - 1, dtype=torch.long)
            summary = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            summary = hidden[:, 0]
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(summary))))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "KiloBlock",
    "KiloPreTrainedModel",
    "KiloModel",
    "KiloForCausalLM",
    "KiloForMaskedLM",
    "KiloForSequenceClassification",
]
