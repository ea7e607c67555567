"""Smoke tests of ``kilolayer bench`` at a toy size: it runs, prints its table and writes its JSON.

No timing assertions: speed targets are the benchmark's printed ratios, not test outcomes.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

from kilolayer.bench import cli
from kilolayer.bench.models import Size
from kilolayer.errors import KiloError


def run_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_size_parsing():
    assert Size.parse("1000x64") == Size(1000, 64, 2)
    assert Size.parse("1000x256") == Size(1000, 256, 1)
    assert Size.parse("12x768") == Size(12, 768, 12)
    assert Size.parse("2x32x4") == Size(2, 32, 4)
    assert Size.parse("1000x256").default_checkpointing and not Size.parse("1000x64").default_checkpointing
    for bad in ("1000", "2x32x3", "0x64", "axb"):
        with pytest.raises(KiloError):
            Size.parse(bad)


@pytest.mark.slow
def test_bench_runs_both_families_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = run_bench("--sizes", "2x32x2", "--steps", "1", "--warmup", "0", "--eval-batches", "1", "--threads", "1", "--out", str(out))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gpt | 2x32 (2 h) |" in printed and "| bert | 2x32 (2 h) |" in printed
    report = json.loads(out.read_text())
    assert [(r["family"], r["size"]) for r in report["results"]] == [("gpt", "2x32"), ("bert", "2x32")]
    for result in report["results"]:
        kilo, hf = result["kilolayer"], result["hf"]
        assert kilo["parameters"] == hf["parameters"], "the two models must have identical shapes"
        for side in (kilo, hf):
            assert "error" not in side
            assert side["tokens_per_s"] > 0 and side["eval_requests_per_s"] > 0 and side["peak_rss_bytes"] > 0
        assert result["matmul_peak_flops"] > 0 and 0 < kilo["mfu"] < 1
        assert set(kilo["adamw_step_s"]) == {"for-loop", "foreach", "fused"}


@pytest.mark.slow
def test_bench_bf16_autocast_with_checkpointing_on_cpu(tmp_path):
    """The GPU path's code (bf16 autocast, SDPA, activation checkpointing) runs on CPU at a toy size."""
    out = tmp_path / "bench.json"
    code = run_bench(
        "--sizes", "2x32x2", "--families", "gpt", "--precision", "bf16", "--checkpointing", "on",
        "--steps", "1", "--warmup", "0", "--eval-batches", "1", "--threads", "1", "--hf-as-shipped", "--out", str(out),
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["options"]["hf_flush_denormal"] is False
    (result,) = report["results"]
    assert result["checkpointing"] and "error" not in result["kilolayer"] and "error" not in result["hf"]


def test_ablation_prints_each_variant_against_all_on(capsys):
    from kilolayer.bench import ablation

    ablation.main(["--family", "gpt", "--size", "2x32x2", "--rounds", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    for name in ("all on", "native tanh-GELU", "loss over full logits", "fresh logits buffer"):
        assert name in printed
    assert printed.count("without this optimisation") == 3


def test_breakdown_attributes_the_step_to_operator_kinds(capsys):
    from kilolayer.bench import breakdown

    assert breakdown.categorise("aten::addmm") == "matmul"
    assert breakdown.categorise("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention kernel"
    breakdown.main(["--family", "gpt", "--size", "2x32x2", "--threads", "1", "--top", "3"])
    printed = capsys.readouterr().out
    assert "matmul" in printed and "GFLOP/s on the model FLOPs" in printed
    category_lines = printed.split("top operators:")[0].splitlines()[1:]
    shares = [float(re.search(r"([\d.]+)%", line)[1]) for line in category_lines]
    assert abs(sum(shares) - 100) < 1  # the categories partition the step's operator time
