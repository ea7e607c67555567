"""The encoder-decoder: config, parity with HF BART, generate() with the cache, save/load round trips."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration

import kilolayer  # noqa: F401  (registers the Auto classes)
from kilolayer.modeling import KiloConfig, KiloForConditionalGeneration

PAD, EOS, START = 0, 1, 2


def tiny_encdec(scheme="post_ln", **changes):
    torch.manual_seed(0)
    values = dict(arch="encdec", num_encoder_layers=2, num_decoder_layers=3, hidden_size=32, num_heads=4,
                  vocab_size=61, max_positions=24, scheme=scheme, pad_token_id=PAD, eos_token_id=EOS,
                  decoder_start_token_id=START)
    return KiloForConditionalGeneration(KiloConfig(**{**values, **changes})).eval()


# ---------------------------------------------------------------- config


def test_layer_split_and_derived_constants_are_stored():
    config = KiloConfig(arch="encdec", num_layers=7, scheme="deepnorm")
    assert (config.num_encoder_layers, config.num_decoder_layers) == (4, 3)
    config = KiloConfig(arch="encdec", num_encoder_layers=6, num_decoder_layers=2, scheme="deepnorm")
    assert config.num_layers == 8 and config.is_encoder_decoder
    saved = config.to_dict()
    assert saved["decoder_constants"] == {"alpha": pytest.approx(6 ** 0.25), "beta": pytest.approx(24 ** -0.25)}
    assert saved["alpha"] == pytest.approx(0.81 * (6**4 * 2) ** (1 / 16))
    given = KiloConfig(arch="encdec", num_layers=4, scheme="deepnorm", decoder_constants={"alpha": 1.5})
    assert given.decoder_constants["alpha"] == 1.5 and given.decoder_constants["beta"] == pytest.approx(24 ** -0.25)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(arch="gpt", num_encoder_layers=2), "only apply to arch encdec"),
        (dict(arch="encdec", num_layers=3, num_encoder_layers=3), "leaves no layer"),
        (dict(arch="encdec", scheme="post_ln", decoder_constants={"alpha": 2.0}), "takes no alpha"),
        (dict(arch="encdec", scheme="deepnorm", decoder_constants={"beta": -1.0}), "must be > 0"),
    ],
)
def test_bad_encdec_configs_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        KiloConfig(**changes)


def test_every_sublayer_of_each_stack_uses_its_stack_constants():
    model = tiny_encdec("deepnorm")
    config = model.config
    encoder_alphas = {r.alpha for block in model.model.encoder.layers for r in (block.attention_residual, block.ffn_residual)}
    decoder_alphas = {
        r.alpha
        for block in model.model.decoder.layers
        for r in (block.attention_residual, block.cross_attention_residual, block.ffn_residual)
    }
    assert encoder_alphas == {config.alpha}
    assert decoder_alphas == {config.decoder_constants["alpha"]}
    assert config.alpha != pytest.approx(config.decoder_constants["alpha"])


# ---------------------------------------------------------------- parity with BART


def copy_linear(target, source):
    target.weight.copy_(source.weight)
    target.bias.copy_(source.bias)


def copy_cat(target, *sources):
    target.weight.copy_(torch.cat([s.weight for s in sources]))
    target.bias.copy_(torch.cat([s.bias for s in sources]))


def copy_embeddings(stack, reference_stack):
    stack.embed_positions.weight.copy_(reference_stack.embed_positions.weight[2:])  # BART's positions start at offset 2
    copy_linear(stack.embed_norm, reference_stack.layernorm_embedding)


@torch.no_grad()
def test_post_ln_encdec_matches_hf_bart():
    """BART is a Post-LN encoder-decoder: LN(x + G(x)) after each of its 2 (encoder) and 3 (decoder) sublayers."""
    reference = BartForConditionalGeneration(
        BartConfig(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=24,
                   activation_function="gelu", dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                   pad_token_id=PAD, eos_token_id=EOS, bos_token_id=START, decoder_start_token_id=START)
    ).eval()
    ours = tiny_encdec("post_ln", hidden_act="gelu")
    model, bart = ours.model, reference.model
    model.encoder.embed_tokens.weight.copy_(bart.shared.weight)
    copy_embeddings(model.encoder, bart.encoder)
    copy_embeddings(model.decoder, bart.decoder)
    for block, layer in zip(model.encoder.layers, bart.encoder.layers, strict=True):
        attention = layer.self_attn
        copy_cat(block.attention.qkv, attention.q_proj, attention.k_proj, attention.v_proj)
        copy_linear(block.attention.out, attention.out_proj)
        copy_linear(block.attention_residual.norm, layer.self_attn_layer_norm)
        copy_linear(block.ffn.fc_in, layer.fc1)
        copy_linear(block.ffn.fc_out, layer.fc2)
        copy_linear(block.ffn_residual.norm, layer.final_layer_norm)
    for block, layer in zip(model.decoder.layers, bart.decoder.layers, strict=True):
        attention, cross = layer.self_attn, layer.encoder_attn
        copy_cat(block.attention.qkv, attention.q_proj, attention.k_proj, attention.v_proj)
        copy_linear(block.attention.out, attention.out_proj)
        copy_linear(block.attention_residual.norm, layer.self_attn_layer_norm)
        copy_linear(block.cross_attention.query, cross.q_proj)
        copy_cat(block.cross_attention.key_value, cross.k_proj, cross.v_proj)
        copy_linear(block.cross_attention.out, cross.out_proj)
        copy_linear(block.cross_attention_residual.norm, layer.encoder_attn_layer_norm)
        copy_linear(block.ffn.fc_in, layer.fc1)
        copy_linear(block.ffn.fc_out, layer.fc2)
        copy_linear(block.ffn_residual.norm, layer.final_layer_norm)
    assert ours.lm_head.weight.data_ptr() == model.encoder.embed_tokens.weight.data_ptr()  # tied

    input_ids = torch.randint(3, 61, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # the second source is padded
    labels = torch.randint(3, 61, (2, 7))
    labels[1, 5:] = -100
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    expected, actual = reference(**inputs), ours(**inputs)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- generate() and the cache


def context_dependent(scheme, position_embedding):
    """A tiny model whose next token depends on the context: an untied head and σ = 0.2 (or xavier) weights make
    the greedy path wander over the vocabulary. (A σ = 0.02 model with tied embeddings repeats its last token,
    and a test on it passes with the cache ignored.)"""
    return tiny_encdec(scheme, position_embedding=position_embedding, initializer_range=0.2, tie_word_embeddings=False)


@torch.no_grad()
def greedy_by_full_forwards(model, input_ids, attention_mask, steps):
    decoded = torch.full((input_ids.shape[0], 1), START)
    for _ in range(steps):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoded, use_cache=False).logits
        logits[:, -1, EOS] = float("-inf")  # as generate(min_new_tokens=steps) does
        decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded


@pytest.mark.parametrize("scheme, position_embedding", [("pre_ln", "rotary"), ("deepnorm", "learned"), ("sub_ln", "rotary")])
def test_greedy_generate_with_cache_equals_step_by_step_full_forwards(scheme, position_embedding):
    model = context_dependent(scheme, position_embedding)
    torch.manual_seed(1)
    input_ids = torch.randint(3, 61, (3, 8))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0
    steps = 12
    expected = greedy_by_full_forwards(model, input_ids, attention_mask, steps)
    assert all(len(set(row[1:].tolist())) >= 4 for row in expected), expected  # the context matters
    key_value_calls = []
    hooks = [block.cross_attention.key_value.register_forward_hook(lambda *args: key_value_calls.append(1))
             for block in model.model.decoder.layers]
    generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=steps, min_new_tokens=steps,
                               do_sample=False, use_cache=True)
    for hook in hooks:
        hook.remove()
    assert torch.equal(generated, expected)
    assert len(key_value_calls) == len(model.model.decoder.layers)  # cross-attention K/V computed once per layer


@torch.no_grad()
def test_cached_decoder_logits_equal_the_full_forward():
    model = context_dependent("deepnorm", "rotary")
    input_ids, targets = torch.randint(3, 61, (2, 8)), torch.randint(3, 61, (2, 9))
    full = model(input_ids=input_ids, decoder_input_ids=targets, use_cache=False).logits
    first = model(input_ids=input_ids, decoder_input_ids=targets[:, :4], use_cache=True)
    cache, encoder_outputs = first.cache, (first.encoder_last_hidden_state,)
    pieces = [first.logits]
    for start, stop in ((4, 5), (5, 8), (8, 9)):  # one token, several after a cache, one again
        step = model(encoder_outputs=encoder_outputs, decoder_input_ids=targets[:, start:stop], cache=cache)
        pieces.append(step.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 9


@torch.no_grad()
def test_labels_are_shifted_so_no_position_sees_its_own_target():
    """logits[t] predicts labels[t] from labels[:t] (after the start token): changing labels[t:] leaves logits[:t + 1]."""
    model = context_dependent("deepnorm", "learned")
    input_ids, labels = torch.randint(3, 61, (2, 8)), torch.randint(3, 61, (2, 6))
    changed = labels.clone()
    changed[:, 3:] = (labels[:, 3:] + 1) % 61
    before, after = model(input_ids=input_ids, labels=labels).logits, model(input_ids=input_ids, labels=changed).logits
    torch.testing.assert_close(after[:, :4], before[:, :4])
    assert not torch.allclose(after[:, 4:], before[:, 4:])
    assert torch.equal(model.prepare_decoder_input_ids_from_labels(torch.tensor([[7, 8, -100]])), torch.tensor([[START, 7, 8]]))


def gradients(model, **inputs):
    model.zero_grad()
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_fused_loss_and_activation_checkpointing_give_the_plain_loss_and_gradients():
    model = tiny_encdec("deepnorm", tie_word_embeddings=False).train()
    inputs = dict(input_ids=torch.randint(3, 61, (2, 8)), labels=torch.randint(3, 61, (2, 5)))
    inputs["labels"][1, 3:] = -100
    plain_loss, plain = gradients(model, **inputs)
    model.config.fused_loss = True
    assert model(**inputs).logits is None  # the fused path ran
    fused_loss, fused = gradients(model, **inputs)
    model.config.fused_loss = False
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    checkpointed_loss, checkpointed = gradients(model, **inputs)
    for loss, grads in ((fused_loss, fused), (checkpointed_loss, checkpointed)):
        torch.testing.assert_close(loss, plain_loss)
        for grad, expected in zip(grads, plain, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- export


INPUTS = dict(input_ids=torch.arange(16).reshape(2, 8) % 61 + 3, decoder_input_ids=torch.arange(10).reshape(2, 5) % 61 + 3)


def test_in_process_round_trip_through_auto_model_for_seq2seq_lm(tmp_path):
    model = tiny_encdec("deepnorm", decoder_constants={"alpha": 2.5})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["decoder_constants"]["alpha"] == 2.5 and saved["auto_map"]["AutoModelForSeq2SeqLM"].endswith(
        "KiloForConditionalGeneration")
    assert (tmp_path / "encdec.py").is_file()
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is KiloForConditionalGeneration
    assert reloaded.config.decoder_constants == model.config.decoder_constants
    with torch.no_grad():
        assert torch.equal(reloaded(**INPUTS).logits, model(**INPUTS).logits)


LOAD_WITHOUT_KILOLAYER = textwrap.dedent(
    """
    import sys
    sys.modules["kilolayer"] = None  # any import of kilolayer now fails: only the exported code may be used
    import torch
    from transformers import AutoModelForSeq2SeqLM
    model = AutoModelForSeq2SeqLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    inputs = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        logits = model(**inputs).logits
        generated = model.generate(inputs["input_ids"], max_new_tokens=5, do_sample=False)
    torch.save({"logits": logits, "generated": generated, "module": type(model).__module__}, sys.argv[3])
    """
)


def test_loads_with_trust_remote_code_in_a_python_without_kilolayer(tmp_path):
    model = tiny_encdec("deepnorm", initializer_range=1.0)
    model.save_pretrained(tmp_path / "export")
    torch.save(INPUTS, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_KILOLAYER, str(tmp_path / "export"), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        check=True, env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["module"].startswith("transformers_modules")
    with torch.no_grad():
        # not bitwise: the subprocess may run another number of threads, so reductions can round differently
        torch.testing.assert_close(result["logits"], model(**INPUTS).logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(result["generated"], model.generate(INPUTS["input_ids"], max_new_tokens=5, do_sample=False))
