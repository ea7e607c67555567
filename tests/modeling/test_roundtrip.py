"""save_pretrained → load gives identical logits, in-process and in a Python without kilolayer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

import kilolayer  # noqa: F401  (registers the Auto classes)
from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM, KiloForSequenceClassification


def build(model_class, arch, scheme, **changes):
    torch.manual_seed(0)
    config = KiloConfig(arch=arch, num_layers=4, hidden_size=32, num_heads=2, vocab_size=64, max_positions=16,
                        scheme=scheme, **changes)
    return model_class(config).eval()


INPUT_IDS = torch.arange(12).reshape(2, 6) % 64


@pytest.mark.parametrize(
    "model_class, auto_class, arch, scheme",
    [
        (KiloForCausalLM, AutoModelForCausalLM, "gpt", "foundation_ln"),
        (KiloForCausalLM, AutoModelForCausalLM, "gpt", "deepnorm"),
        (KiloForMaskedLM, AutoModelForMaskedLM, "bert", "upscale_ln"),
    ],
)
def test_in_process_round_trip(tmp_path, model_class, auto_class, arch, scheme):
    model = build(model_class, arch, scheme, alpha=1.2345)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["alpha"] == 1.2345 and saved["scheme"] == scheme
    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert type(reloaded) is model_class
    assert (reloaded.config.alpha, reloaded.config.beta) == (model.config.alpha, model.config.beta)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits)


def test_untied_rotary_gpt_round_trip(tmp_path):
    model = build(KiloForCausalLM, "gpt", "foundation_ln", position_embedding="rotary", tie_word_embeddings=False)
    model.save_pretrained(tmp_path)
    reloaded = KiloForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight.data_ptr() != reloaded.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits)


def test_sequence_classification_round_trip(tmp_path):
    model = build(KiloForSequenceClassification, "bert", "upscale_ln", num_labels=2)
    model.save_pretrained(tmp_path)
    reloaded = KiloForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=INPUT_IDS).logits, model(input_ids=INPUT_IDS).logits)


def test_exported_folder_carries_its_code_and_auto_map(tmp_path):
    build(KiloForCausalLM, "gpt", "foundation_ln").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("KiloForCausalLM")
    for name in ("configuration.py", "modeling.py", "schemes.py", "layers.py"):
        assert (tmp_path / name).is_file(), name


LOAD_WITHOUT_KILOLAYER = textwrap.dedent(
    """
    import sys
    sys.modules["kilolayer"] = None  # any import of kilolayer now fails: only the exported code may be used
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    folder = sys.argv[1]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert "kilolayer" not in type(model).__module__.split(".")[0], type(model).__module__
    with torch.no_grad():
        logits = model(input_ids=torch.arange(12).reshape(2, 6) % 64).logits
    torch.save({"logits": logits, "alpha": model.config.alpha, "module": type(model).__module__}, sys.argv[2])
    """
)


def test_loads_with_trust_remote_code_in_a_python_without_kilolayer(tmp_path):
    model = build(KiloForCausalLM, "gpt", "deepnorm")
    model.save_pretrained(tmp_path / "export")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_KILOLAYER, str(tmp_path / "export"), str(tmp_path / "out.pt")],
        check=True, env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["module"].startswith("transformers_modules")
    assert result["alpha"] == model.config.alpha
    with torch.no_grad():
        assert torch.equal(result["logits"], model(input_ids=INPUT_IDS).logits)
