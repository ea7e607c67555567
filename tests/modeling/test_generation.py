"""generate() and the KV cache, positions under padding, and the forward's calling conventions.

The reference for every generated step is a full-context forward without a cache on the row alone
(no padding): the logits ``generate()`` reports at step t must equal the full forward's logits at
the position before token t. The model is made context-dependent first (a random tiny model mostly
repeats its last token, so a test on it passes even when the cache is ignored); each test checks
that dependence, so it cannot pass on a model that ignores its context.
"""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM, KiloForSequenceClassification
from kilolayer.modeling.modeling import CACHE_FIELD

VOCAB, NEW_TOKENS = 40, 6


def context_gpt(position: str, **changes) -> KiloForCausalLM:
    """A tiny GPT whose next token depends strongly on the context: initialised 25x wider than usual."""
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=2, hidden_size=32, num_heads=2, vocab_size=VOCAB, max_positions=64,
                        scheme="pre_ln", position_embedding=position, initializer_range=0.5, pad_token_id=0, **changes)
    return KiloForCausalLM(config).eval()


def left_padded_prompts():
    """Two prompts, 7 and 4 tokens, left-padded to 7 (pad id 0)."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 7), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, :3], mask[1, :3] = 0, 0
    return ids, mask


@torch.no_grad()
def full_context_logits(model, row: torch.Tensor) -> torch.Tensor:
    """Logits at every position of one unpadded row, from one forward without a cache."""
    return model(input_ids=row[None], use_cache=False).logits[0]


@torch.no_grad()
def assert_generation_equals_full_forwards(model, output, mask, greedy: bool) -> None:
    """Each row's step logits equal full forwards of that row alone (its real tokens) on what it generated."""
    prompt_length = mask.shape[1]
    for row in range(mask.shape[0]):
        real = output.sequences[row, prompt_length - int(mask[row].sum()):]  # drop the left padding
        reference = full_context_logits(model, real)[-NEW_TOKENS - 1 : -1]
        steps = torch.stack([step_logits[row] for step_logits in output.logits])
        torch.testing.assert_close(steps, reference, rtol=1e-4, atol=1e-4)
        if greedy:
            assert torch.equal(real[-NEW_TOKENS:], reference.argmax(-1))


@torch.no_grad()
def assert_context_matters(model, output, mask) -> None:
    """The model's prediction from the full context differs from its prediction from the last token alone:
    a generation that ignored its cache (each step from one token at position 0) would not match."""
    prompt_length = mask.shape[1]
    changed = 0
    for row in range(mask.shape[0]):
        real = output.sequences[row, prompt_length - int(mask[row].sum()):]
        full = full_context_logits(model, real)[-NEW_TOKENS - 1 : -1]
        alone = torch.stack([full_context_logits(model, real[t : t + 1])[0] for t in range(len(real) - NEW_TOKENS - 1, len(real) - 1)])
        changed += int((full.argmax(-1) != alone.argmax(-1)).sum())
        assert (full - alone).abs().max() > 1.0
    assert changed >= 2


@pytest.mark.parametrize("position", ["learned", "rotary"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_generate_with_cache_equals_full_context_forwards(position, sample):
    model = context_gpt(position)
    ids, mask = left_padded_prompts()
    torch.manual_seed(2)
    output = model.generate(
        ids, attention_mask=mask, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=sample,
        top_k=0, use_cache=True, return_dict_in_generate=True, output_logits=True,
    )
    assert output.sequences.shape == (2, 7 + NEW_TOKENS)
    assert_context_matters(model, output, mask)
    assert_generation_equals_full_forwards(model, output, mask, greedy=not sample)


@torch.no_grad()
def test_cache_passed_by_hand_as_cache_or_past_key_values():
    model = context_gpt("rotary")
    ids = torch.randint(1, VOCAB, (1, 9))
    full = model(input_ids=ids, use_cache=False).logits
    first = model(input_ids=ids[:, :6], use_cache=True)
    cache = getattr(first, CACHE_FIELD)
    assert cache.get_seq_length() == 6
    rest = model(input_ids=ids[:, 6:8], cache=cache)
    last = model(input_ids=ids[:, 8:], past_key_values=cache)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits, last.logits], 1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="pass the KV cache once"):
        model(input_ids=ids[:, 8:], cache=cache, past_key_values=cache)


@torch.no_grad()
@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_left_padding_gives_the_unpadded_logits(position):
    """position_ids come from the attention mask: a left-padded row starts at position 0."""
    model = context_gpt(position)
    ids, mask = left_padded_prompts()
    padded = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[1, 3:], full_context_logits(model, ids[1, 3:]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded[0], full_context_logits(model, ids[0]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_right_padding_does_not_change_the_real_tokens():
    model = context_gpt("learned")
    ids = torch.randint(1, VOCAB, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    batched = model(input_ids=padded, attention_mask=mask).logits[:, :6]
    torch.testing.assert_close(batched, model(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bert_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    config = KiloConfig(arch="bert", num_layers=3, hidden_size=32, num_heads=2, vocab_size=50,
                        max_positions=32, scheme="upscale_ln")
    model = KiloForMaskedLM(config).eval()
    ids = torch.randint(0, 50, (1, 6))
    padded = torch.cat([ids, torch.randint(0, 50, (1, 3))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(
        model(input_ids=padded, attention_mask=mask).logits[:, :6], model(input_ids=ids).logits, rtol=1e-5, atol=1e-5
    )


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_gpt_sequence_classification_reads_the_last_real_token(side):
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=2, hidden_size=32, num_heads=2, vocab_size=VOCAB, max_positions=32,
                        scheme="pre_ln", initializer_range=0.5, num_labels=3)
    model = KiloForSequenceClassification(config).eval()
    short, long = torch.randint(1, VOCAB, (1, 4)), torch.randint(1, VOCAB, (1, 7))
    pad = torch.zeros(1, 3, dtype=torch.long)
    ids = torch.cat([torch.cat([pad, short], 1) if side == "left" else torch.cat([short, pad], 1), long])
    mask = (torch.arange(7) >= 3) if side == "left" else (torch.arange(7) < 4)
    mask = torch.stack([mask, torch.ones(7, dtype=torch.bool)]).long()
    batched = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(batched[0], model(input_ids=short).logits[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched[1], model(input_ids=long).logits[0], rtol=1e-5, atol=1e-5)
    if side == "right":  # without a mask, the padding is found by pad_token_id, as HF's GPT-2 does
        model.config.pad_token_id = 0
        torch.testing.assert_close(model(input_ids=ids).logits[0], batched[0], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_output_attentions_runs_eager_attention():
    model = context_gpt("rotary")
    ids, mask = left_padded_prompts()
    sdpa = model(input_ids=ids, attention_mask=mask)
    eager = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa.logits, rtol=1e-5, atol=1e-5)
    assert len(eager.attentions) == 2 and eager.attentions[0].shape == (2, 2, 7, 7)
    weights = eager.attentions[0]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))
    assert weights[0].triu(1).abs().max() == 0  # causal
    assert weights[1, :, 3:, :3].abs().max() == 0  # real tokens never attend to the left padding


@torch.no_grad()
def test_return_dict_false_gives_a_tuple():
    model = context_gpt("learned")
    ids = torch.randint(1, VOCAB, (1, 5))
    loss, logits = model(input_ids=ids, labels=ids, use_cache=False, return_dict=False)
    torch.testing.assert_close(logits, model(input_ids=ids).logits)
    assert loss.dim() == 0


def test_unknown_arguments_are_refused():
    model = context_gpt("learned")
    ids = torch.randint(1, VOCAB, (1, 5))
    with pytest.raises(TypeError, match="unexpected keyword argument 'head_mask'"):
        model(input_ids=ids, head_mask=None)
    with pytest.raises(ValueError, match="no token types"):
        model(input_ids=ids, token_type_ids=torch.ones_like(ids))
    with pytest.raises(ValueError, match="exceed the 64 learned positions"):
        model(input_ids=torch.randint(1, VOCAB, (1, 65)))


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])  # a folder whose kilolayer.py raises ImportError, ahead of the editable install
    import torch
    try:
        import kilolayer
    except ImportError:
        pass
    else:
        sys.exit("kilolayer is importable here: the test must run without it")
    from transformers import AutoModelForCausalLM

    results = {}
    for folder in sys.argv[3:]:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load(folder + "/prompts.pt")
        for sample in (False, True):
            torch.manual_seed(2)
            output = model.generate(**inputs, max_new_tokens=%d, min_new_tokens=%d, do_sample=sample, top_k=0,
                                    return_dict_in_generate=True, output_logits=True)
            results[f"{folder} {sample}"] = {"sequences": output.sequences.tolist(),
                                             "logits": torch.stack(output.logits, 1).tolist()}
    json.dump(results, open(sys.argv[1], "w"))
    """
    % (NEW_TOKENS, NEW_TOKENS)
)


@pytest.mark.slow
def test_generate_through_trust_remote_code_without_kilolayer(tmp_path):
    """Learned and rotary positions, greedy and sampled, in one Python that cannot import kilolayer."""
    ids, mask = left_padded_prompts()
    models = {}
    for position in ("learned", "rotary"):
        models[position] = context_gpt(position)
        models[position].save_pretrained(tmp_path / position)
        torch.save({"input_ids": ids, "attention_mask": mask}, tmp_path / position / "prompts.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    blocker = tmp_path / "no_kilolayer"
    blocker.mkdir()
    (blocker / "kilolayer.py").write_text("raise ImportError('kilolayer is hidden from this interpreter')\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    # -I: no PYTHONPATH, no user site, not the current folder
    command = [sys.executable, "-I", str(script), str(tmp_path / "out.json"), str(blocker), *(str(tmp_path / p) for p in models)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == 4
    for key, result in results.items():
        folder, sample = key.rsplit(" ", 1)
        output = SimpleNamespace(sequences=torch.tensor(result["sequences"]),
                                 logits=list(torch.tensor(result["logits"]).unbind(1)))
        model = models[os.path.basename(folder)]
        assert_context_matters(model, output, mask)
        assert_generation_equals_full_forwards(model, output, mask, greedy=sample == "False")
