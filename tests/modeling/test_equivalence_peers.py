"""kilolayer's ``deepnorm`` against its peers' code, with copied weights. Optional: each test runs only
where the peer package is installed (``pip install torchscale==0.3.0 x-transformers``); neither is a
dependency. torchscale imports fairscale and timm (which imports torchvision) at module level.

Both peers compute x ← LN(α·x + G(x)) with α = (2N)^¼ for a decoder-only stack; they differ from
kilolayer in their init only (torchscale divides PyTorch's default init by (8N)^¼; kilolayer uses
the paper's xavier_normal with gain β), which copying the weights removes.
"""

import math

import pytest
import torch
from torch import nn

from kilolayer.modeling import KiloConfig, KiloForCausalLM

LAYERS, HIDDEN, HEADS, VOCAB, LENGTH = 6, 16, 2, 32, 10


def kilolayer_deepnorm(use_bias: bool) -> KiloForCausalLM:
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, vocab_size=VOCAB,
                        max_positions=LENGTH, position_embedding="learned", scheme="deepnorm", hidden_act="gelu",
                        tie_word_embeddings=False, use_bias=use_bias)  # fmt: skip
    model = KiloForCausalLM(config).eval()
    with torch.no_grad():  # biases and LN gains away from their init, as after training
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))


def import_torchscale():
    pytest.importorskip("torchscale")
    from importlib.metadata import version

    if version("torchscale") != "0.3.0":
        pytest.skip(f"these tests pin torchscale 0.3.0 (installed: {version('torchscale')}); 0.1.1 builds another decoder")
    try:
        from torchscale.architecture.config import DecoderConfig
        from torchscale.architecture.decoder import Decoder
    except (ImportError, RuntimeError) as error:  # fairscale / timm / torchvision missing or mismatched
        pytest.skip(f"torchscale 0.3.0 is installed but does not import: {error}")
    return DecoderConfig, Decoder


class LearnedPositions(nn.Module):
    """torchscale calls ``embed_positions(tokens, incremental_state=...)``; kilolayer adds position p's row to token p."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, tokens, incremental_state=None):
        return self.weight[: tokens.shape[1]][None]


def test_torchscale_0_3_0_deepnorm_forces_post_ln_even_over_an_explicit_pre_ln():
    DecoderConfig, _ = import_torchscale()
    config = DecoderConfig(deepnorm=True, decoder_normalize_before=True)
    assert config.decoder_normalize_before is False and config.subln is False


def test_deepnorm_equals_torchscale_0_3_0_decoder_with_copied_weights():
    DecoderConfig, Decoder = import_torchscale()
    model = kilolayer_deepnorm(use_bias=True)
    args = DecoderConfig(vocab_size=VOCAB, decoder_embed_dim=HIDDEN, decoder_attention_heads=HEADS,
                         decoder_ffn_embed_dim=4 * HIDDEN, decoder_layers=LAYERS, deepnorm=True, activation_fn="gelu",
                         no_scale_embedding=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)  # fmt: skip
    ours = model.model
    peer = Decoder(
        args,
        embed_tokens=nn.Embedding(VOCAB, HIDDEN),
        embed_positions=LearnedPositions(ours.embed_positions.weight.detach()),
        output_projection=nn.Linear(HIDDEN, VOCAB, bias=False),
    ).eval()
    assert peer.layers[0].alpha == pytest.approx((2 * LAYERS) ** 0.25) == model.config.alpha
    with torch.no_grad():
        peer.embed_tokens.weight.copy_(ours.embed_tokens.weight)
        peer.output_projection.weight.copy_(model.lm_head.weight)
        for block, layer in zip(ours.layers, peer.layers):
            for name, rows in zip(("q_proj", "k_proj", "v_proj"), block.attention.qkv.weight.split(HIDDEN)):
                getattr(layer.self_attn, name).weight.copy_(rows)
            for name, rows in zip(("q_proj", "k_proj", "v_proj"), block.attention.qkv.bias.split(HIDDEN)):
                getattr(layer.self_attn, name).bias.copy_(rows)
            pairs = [
                (layer.self_attn.out_proj, block.attention.out),
                (layer.self_attn_layer_norm, block.attention_residual.norm),
                (layer.ffn.fc1, block.ffn.fc_in),
                (layer.ffn.fc2, block.ffn.fc_out),
                (layer.final_layer_norm, block.ffn_residual.norm),
            ]
            for theirs, mine in pairs:
                theirs.weight.copy_(mine.weight)
                theirs.bias.copy_(mine.bias)
        expected = model(tokens()).logits
        actual, _ = peer(tokens())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual - expected).abs().max() < 1e-5 < expected.std()  # not two near-zero outputs


def copy_gain(norm: nn.Module, weight: torch.Tensor) -> None:
    """x-transformers' LayerNorm multiplies by γ + 1 when ``unit_offset`` (its default in a Decoder), else by γ."""
    norm.gamma.copy_(weight - float(norm.unit_offset))


def test_deepnorm_equals_x_transformers_post_norm_with_scale_residual_constant_alpha():
    pytest.importorskip("x_transformers")
    from x_transformers import Decoder, TransformerWrapper

    model = kilolayer_deepnorm(use_bias=False)  # x-transformers' projections and LayerNorms have no bias
    alpha = model.config.alpha
    peer = TransformerWrapper(
        num_tokens=VOCAB, max_seq_len=LENGTH,
        attn_layers=Decoder(dim=HIDDEN, depth=LAYERS, heads=HEADS, attn_dim_head=HIDDEN // HEADS, pre_norm=False,
                            scale_residual_constant=alpha, ff_no_bias=True),
    ).eval()  # fmt: skip
    ours = model.model
    with torch.no_grad():
        peer.token_emb.emb.weight.copy_(ours.embed_tokens.weight)
        peer.pos_emb.emb.weight.copy_(ours.embed_positions.weight * math.sqrt(HIDDEN))  # it scales positions by dim^-½
        peer.to_logits.weight.copy_(model.lm_head.weight)
        for index, block in enumerate(ours.layers):
            attention, feed_forward = peer.attn_layers.layers[2 * index], peer.attn_layers.layers[2 * index + 1]
            query, key, value = block.attention.qkv.weight.split(HIDDEN)
            attention[1].to_q.weight.copy_(query)
            attention[1].to_k.weight.copy_(key)
            attention[1].to_v.weight.copy_(value)
            attention[1].to_out.weight.copy_(block.attention.out.weight)
            copy_gain(attention[0][2], block.attention_residual.norm.weight)  # the post-residual norm
            feed_forward[1].ff[0][0].weight.copy_(block.ffn.fc_in.weight)
            feed_forward[1].ff[2].weight.copy_(block.ffn.fc_out.weight)
            copy_gain(feed_forward[0][2], block.ffn_residual.norm.weight)
        expected = model(tokens()).logits
        actual = peer(tokens())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual - expected).abs().max() < 1e-5 < expected.std()
