"""Pure logic of the studies: the grid, the divergence rule, the written reading, the resume guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kilolayer.errors import KiloError
from kilolayer.study.metrics import LOSS_ABOVE_START, NONFINITE, find_divergence
from kilolayer.study.report import depth_reading, stability_reading
from kilolayer.study.runner import Cell, first_difference, run_cells
from kilolayer.study.shared import base_config
from kilolayer.study.stability import StabilityGrid, stability_cells


def falling(steps=20, start=8.0):
    return [[step, start - 0.1 * step] for step in range(1, steps + 1)]


def test_a_falling_loss_did_not_diverge():
    assert find_divergence(falling(), None) == (None, None)


def test_a_non_finite_stop_is_a_divergence_at_its_step():
    assert find_divergence(falling(), 7) == (NONFINITE, 7)
    assert find_divergence([[1, 8.0], [2, math.nan]], None) == (NONFINITE, 2)


def test_a_loss_that_ends_above_its_start_diverged_where_it_last_crossed():
    losses = falling(10) + [[step, 20.0] for step in range(11, 21)]
    kind, step = find_divergence(losses, None)
    assert kind == LOSS_ABOVE_START and 11 <= step <= 13  # the smoothed curve crosses a step or two later


def test_a_spike_that_recovers_is_not_a_divergence():
    losses = falling(10) + [[11, 50.0]] + [[step, 6.0] for step in range(12, 30)]
    assert find_divergence(losses, None) == (None, None)


def test_the_grid_is_the_product_of_its_axes_with_the_base_values_as_defaults():
    base = base_config("gpt-tiny", None, None, [])
    grid = StabilityGrid(schemes=("post_ln", "pre_ln"), depths=(2, 4), lrs=(1e-3, 1e-2), warmups=(None, 0), clips=(1.0, None))
    cells = stability_cells(base, grid)
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert len({cell.id for cell in cells}) == len(cells)
    assert {cell.axes["warmup"] for cell in cells} == {base["train"]["warmup_steps"], 0}
    cell = next(c for c in cells if c.axes == {"scheme": "pre_ln", "depth": 4, "lr": 1e-2, "warmup": 0, "clip": None})
    assert cell.config["model"]["scheme"] == "pre_ln" and cell.config["model"]["num_layers"] == 4
    assert cell.config["train"]["lr"] == 1e-2 and cell.config["train"]["grad_clip"] is None
    assert cell.config["train"]["on_nonfinite"] == "stop" and cell.config["train"]["max_minutes"] is None


def test_set_overrides_the_study_defaults():
    base = base_config("gpt-tiny", None, "corpus.txt", ["train.on_nonfinite=rollback", "train.max_steps=3"])
    assert base["train"]["on_nonfinite"] == "rollback" and base["train"]["max_steps"] == 3
    assert base["train"]["data"] == str(Path("corpus.txt").resolve())  # the same corpus from wherever the study is re-run


def row(scheme, depth, loss, diverged=None, at=None, lr=1e-3):
    return {
        "scheme": scheme, "depth": depth, "lr": lr, "warmup": 0, "clip": None, "final_valid_loss": loss,
        "diverged": diverged is not None, "divergence": diverged, "diverged_at": at,
        "hidden_size": 64, "budget_deviation_pct": 0.01, "best_valid_loss": loss,
    }  # fmt: skip


def test_the_stability_reading_names_divergences_and_ranks_the_deepest_cells():
    rows = [
        row("post_ln", 4, 5.0), row("post_ln", 1000, math.nan, NONFINITE, 12),
        row("foundation_ln", 4, 5.1), row("foundation_ln", 1000, 5.9),
        row("deepnorm", 4, 5.2), row("deepnorm", 1000, 5.8),
    ]  # fmt: skip
    text = "\n".join(stability_reading(rows, steps=100, tokens_per_cell=51200))
    assert "5 of 6 cells trained" in text and "1 with a non-finite loss" in text
    assert "`post_ln` diverged in 1 of 2 cells: 1000 layers" in text and "step 12" in text
    assert "Never diverged in this grid: `foundation_ln`, `deepnorm`" in text
    assert "`deepnorm` 5.800, `foundation_ln` 5.900 (spread 0.100 nats); diverged or no loss: `post_ln`" in text
    assert "one seed" in text


def test_the_depth_reading_says_when_the_grid_does_not_bracket_an_optimum():
    edge = depth_reading([row("x", 6, 5.0), row("x", 24, 5.2), row("x", 96, 5.4)], "budget")
    assert any("shallowest" in bullet and "does not bracket" in bullet for bullet in edge)
    interior = depth_reading([row("x", 6, 5.3), row("x", 24, 5.0), row("x", 96, 5.4)], "budget")
    assert any("between 6 and 96 layers" in bullet and "margin 0.300" in bullet for bullet in interior)


def test_first_difference_names_the_changed_key():
    assert first_difference({"train": {"lr": 1e-3, "seed": 0}}, {"train": {"lr": 1e-2, "seed": 0}}) == "train.lr: 0.001 → 0.01"
    assert first_difference({"a": 1}, {"a": 1}) is None


def test_a_cell_folder_from_another_configuration_is_refused(tmp_path):
    cell = Cell("c", {}, {"model": {}, "train": {"max_steps": 5}})
    (tmp_path / "cells" / "c").mkdir(parents=True)
    (tmp_path / "cells" / "c" / "cell.json").write_text(json.dumps({"id": "c", "axes": {}, "config": {"model": {}, "train": {"max_steps": 9}}}))
    with pytest.raises(KiloError, match=r"train.max_steps: 9 → 5"):
        run_cells(tmp_path, [cell], jobs=1, threads_per_cell=1, progress=False)


def test_the_reading_reports_a_first_layer_gradient_that_underflowed_to_zero():
    silent = {**row("post_ln", 1000, 7.6), "grad_norm_first_end": 0.0, "curves": {"grad_norm_first": [[10, 1e-30], [20, 0.0]]}}
    alive = {**row("pre_ln", 1000, 7.2), "grad_norm_first_end": 0.3, "curves": {"grad_norm_first": [[10, 0.2], [20, 0.3]]}}
    text = "\n".join(stability_reading([silent, alive], steps=20, tokens_per_cell=100))
    assert "exactly 0" in text and "`post_ln` at 1000 layers" in text and "(0 at 1 of 2 diagnostics steps)" in text
    assert "`pre_ln` at 1000 layers" not in text.split("exactly 0")[1].split("\n")[0]


def test_input_errors_are_one_line_exit_2(capsys):
    from kilolayer.cli import main

    assert main(["study", "stability", "--arch", "bert", "--preset", "gpt-tiny"]) == 2
    assert main(["study", "stability", "--preset", "gpt-tiny", "--schemes", "post_ln,postln"]) == 2
    assert main(["study", "stability", "--preset", "gpt-tiny", "--lrs", "fast"]) == 2
    assert main(["study", "depth", "--arch", "bert", "--zero-shot", "piqa"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("kilolayer study: error:") for line in errors)
    assert "pass --arch gpt" in errors[0] and "unknown scheme postln" in errors[1] and "causal LM" in errors[3]
