"""Parity with the HF reference models: copy the weights across, compare logits."""

import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM

LAYERS, HIDDEN, HEADS, VOCAB, POSITIONS = 3, 32, 4, 97, 24


def copy_qkv(block, query, key, value):
    block.attention.qkv.weight.copy_(torch.cat([query.weight, key.weight, value.weight]))
    block.attention.qkv.bias.copy_(torch.cat([query.bias, key.bias, value.bias]))


def copy_linear(target, source, transpose=False):
    target.weight.copy_(source.weight.T if transpose else source.weight)
    target.bias.copy_(source.bias)


@torch.no_grad()
def test_post_ln_bert_matches_hf_bert_for_masked_lm():
    reference = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
            intermediate_size=4 * HIDDEN, max_position_embeddings=POSITIONS, hidden_act="gelu",
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
    ).eval()
    ours = KiloForMaskedLM(
        KiloConfig(arch="bert", num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, vocab_size=VOCAB,
                   max_positions=POSITIONS, scheme="post_ln", hidden_act="gelu", norm_eps=1e-12)
    ).eval()
    embeddings, model = reference.bert.embeddings, ours.model
    model.embed_tokens.weight.copy_(embeddings.word_embeddings.weight)
    model.embed_positions.weight.copy_(embeddings.position_embeddings.weight)
    model.embed_token_types.weight.copy_(embeddings.token_type_embeddings.weight)
    copy_linear(model.embed_norm, embeddings.LayerNorm)
    for block, layer in zip(model.layers, reference.bert.encoder.layer):
        attention = layer.attention
        copy_qkv(block, attention.self.query, attention.self.key, attention.self.value)
        copy_linear(block.attention.out, attention.output.dense)
        copy_linear(block.attention_residual.norm, attention.output.LayerNorm)
        copy_linear(block.ffn.fc_in, layer.intermediate.dense)
        copy_linear(block.ffn.fc_out, layer.output.dense)
        copy_linear(block.ffn_residual.norm, layer.output.LayerNorm)
    head = reference.cls.predictions
    copy_linear(ours.lm_head.dense, head.transform.dense)
    copy_linear(ours.lm_head.norm, head.transform.LayerNorm)
    ours.lm_head.decoder.bias.copy_(head.bias)
    assert ours.lm_head.decoder.weight.data_ptr() == model.embed_tokens.weight.data_ptr()  # tied

    input_ids = torch.randint(0, VOCAB, (2, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padding on the second row
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 5:] = 1
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    expected = reference(**inputs).logits
    actual = ours(**inputs).logits
    keep = attention_mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_pre_ln_gpt_matches_hf_gpt2_lm_head_model():
    reference = GPT2LMHeadModel(
        GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    ).eval()
    ours = KiloForCausalLM(
        KiloConfig(arch="gpt", num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, vocab_size=VOCAB,
                   max_positions=POSITIONS, scheme="pre_ln", hidden_act="gelu_new")
    ).eval()
    transformer, model = reference.transformer, ours.model
    model.embed_tokens.weight.copy_(transformer.wte.weight)
    model.embed_positions.weight.copy_(transformer.wpe.weight)
    for block, layer in zip(model.layers, transformer.h):
        copy_linear(block.attention_residual.norm, layer.ln_1)
        copy_linear(block.attention.qkv, layer.attn.c_attn, transpose=True)  # GPT-2's Conv1D stores (in, out)
        copy_linear(block.attention.out, layer.attn.c_proj, transpose=True)
        copy_linear(block.ffn_residual.norm, layer.ln_2)
        copy_linear(block.ffn.fc_in, layer.mlp.c_fc, transpose=True)
        copy_linear(block.ffn.fc_out, layer.mlp.c_proj, transpose=True)
    copy_linear(model.final_norm, transformer.ln_f)
    assert ours.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()  # tied

    input_ids = torch.randint(0, VOCAB, (2, 13))
    expected = reference(input_ids=input_ids, labels=input_ids)
    actual = ours(input_ids=input_ids, labels=input_ids)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-5)
