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
from kilolayer.study.stability import StabilityGrid, assign_verdicts, stability_cells
from kilolayer.study.verdicts import COLLAPSED, DIVERGED, LEARNING, PLATEAU, UNDERUSED, classify


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
    grid = StabilityGrid(schemes=("post_ln", "pre_ln"), depths=(2, 4), lrs=(1e-3, 1e-2), warmups=(None, 0), clips=(1.0, None), control=None)
    cells = stability_cells(base, grid)
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert len({cell.id for cell in cells}) == len(cells)
    assert {cell.axes["warmup"] for cell in cells} == {base["train"]["warmup_steps"], 0}
    seed = base["train"]["seed"]
    cell = next(c for c in cells if c.axes == {"scheme": "pre_ln", "depth": 4, "lr": 1e-2, "warmup": 0, "clip": None, "seed": seed, "is_control": False})
    assert cell.config["model"]["scheme"] == "pre_ln" and cell.config["model"]["num_layers"] == 4
    assert cell.config["train"]["lr"] == 1e-2 and cell.config["train"]["grad_clip"] is None
    assert cell.config["train"]["on_nonfinite"] == "stop" and cell.config["train"]["max_minutes"] is None


def test_each_combination_gets_a_shallow_control_and_each_seed_its_own_cells():
    base = base_config("gpt-tiny", None, None, [])
    seed = base["train"]["seed"]
    grid = StabilityGrid(schemes=("post_ln", "pre_ln"), depths=(4,), lrs=(1e-3, 1e-2), seeds=(None, seed + 1), control=("pre_ln", 2))
    cells = stability_cells(base, grid)
    assert len(cells) == 2 * 2 * (2 + 1)
    controls = [cell for cell in cells if cell.axes["is_control"]]
    assert {(c.axes["scheme"], c.axes["depth"], c.axes["lr"], c.axes["seed"]) for c in controls} == {
        ("pre_ln", 2, lr, s) for lr in (1e-3, 1e-2) for s in (seed, seed + 1)
    }
    assert {cell.config["train"]["seed"] for cell in cells} == {seed, seed + 1}
    assert not any("seed" in cell.id for cell in cells if cell.axes["seed"] == seed)  # older studies keep their cell ids
    in_grid = stability_cells(base, StabilityGrid(schemes=("pre_ln",), depths=(2, 4), lrs=(1e-3,), control=("pre_ln", 2)))
    assert [(c.axes["depth"], c.axes["is_control"]) for c in in_grid] == [(2, True), (4, False)]  # the grid's own cell serves


def test_set_overrides_the_study_defaults():
    base = base_config("gpt-tiny", None, "corpus.txt", ["train.on_nonfinite=rollback", "train.max_steps=3"])
    assert base["train"]["on_nonfinite"] == "rollback" and base["train"]["max_steps"] == 3
    assert base["train"]["data"] == str(Path("corpus.txt").resolve())  # the same corpus from wherever the study is re-run


def row(scheme, depth, loss, diverged=None, at=None, lr=1e-3, gain=0.5, live=1.0, control=False, collapse=None):
    return {
        "scheme": scheme, "depth": depth, "lr": lr, "warmup": 0, "clip": None, "seed": 0, "final_valid_loss": loss,
        "diverged": diverged is not None, "divergence": diverged, "diverged_at": at, "context_gain": gain,
        "live_fraction": live, "is_control": control, "collapse_step": collapse,
        "hidden_size": 64, "budget_deviation_pct": 0.01, "best_valid_loss": loss,
    }  # fmt: skip


BASELINES = {"unigram": 5.36, "bigram": 3.85, "valid_targets": 3968, "train_tokens": 10**6}


def test_the_verdicts_on_synthetic_cells():
    assert classify(row("a", 1000, 4.5), 5.36)[0] == LEARNING
    assert classify(row("a", 1000, 5.30), 5.36)[0] == PLATEAU  # uses its input, but less than the margin below unigram
    assert classify(row("a", 1000, 4.5, gain=0.0), 5.36)[0] == COLLAPSED  # low loss, yet input-independent
    assert classify(row("a", 1000, 4.5, live=0.4), 5.36)[0] == UNDERUSED
    assert classify(row("a", 1000, math.nan, NONFINITE, 12), 5.36) == (DIVERGED, "diverged (nonfinite) at step 12")
    assert classify(row("a", 1000, 5.6, LOSS_ABOVE_START, 40), 5.36)[0] == DIVERGED


def test_verdicts_from_training_curves():
    """Curves as the study sees them: the divergence rule on the loss, then the verdict against the baselines."""
    def verdict(curve, loss, gain):
        kind, at = find_divergence(curve, None)
        return classify({**row("a", 1000, loss, kind, at, gain=gain)}, 5.36)[0]

    plateau = [[step, 5.4 + 0.01 * math.sin(step)] for step in range(1, 100)]  # collapsed to the unigram level
    learning = [[step, 6.2 - 0.02 * step] for step in range(1, 100)]
    rising = [[step, 6.2 + 0.02 * step] for step in range(1, 100)]
    assert verdict(plateau, 5.38, 0.0) == COLLAPSED
    assert verdict(learning, 4.3, 0.8) == LEARNING
    assert verdict(rising, 8.0, 0.0) == DIVERGED
    assert verdict(falling() + [[21, math.inf]], math.nan, None) == DIVERGED


def test_assigned_verdicts_compare_each_cell_with_its_shallow_control():
    rows = [row("pre_ln", 12, 4.6, control=True), row("pre_ln", 1000, 4.5), row("post_ln", 1000, 5.35, gain=0.0, collapse=20)]
    assign_verdicts(rows, 5.36)
    assert [r["verdict"] for r in rows] == [LEARNING, LEARNING, COLLAPSED]
    assert [r["beats_shallow"] for r in rows] == [None, True, None]
    control_last = [row("pre_ln", 1000, 4.5), row("pre_ln", 12, 4.6, control=True)]
    assign_verdicts(control_last, 5.36)
    assert control_last[0]["beats_shallow"] is True
    text = "\n".join(stability_reading(rows, BASELINES, steps=100, tokens_per_cell=51200))
    assert "unigram 5.360 nats, bigram 3.850 nats" in text and "large enough for a model to leave the unigram plateau" in text
    assert "**learning** (1 of 2 cells)" in text and "**collapsed** (1 of 2 cells): `post_ln` 1000 layers" in text
    assert "Beat the shallow control: `pre_ln` 1000 layers (4.500 vs 4.600)" in text
    assert "`post_ln` 1000 layers, lr 0.001, warmup 0, clip off, seed 0: step 20" in text


def test_a_control_that_stays_at_unigram_says_the_budget_is_too_small():
    rows = [row("pre_ln", 12, 5.33, control=True), row("post_ln", 1000, 5.34)]
    assign_verdicts(rows, 5.36)
    text = "\n".join(stability_reading(rows, BASELINES, steps=10, tokens_per_cell=5120))
    assert "budget is too small to compare anything" in text


def judged(*rows, unigram=7.0):
    for each in rows:
        each["verdict"], each["verdict_detail"] = classify(each, unigram)
    return list(rows)


def test_the_depth_reading_says_when_the_grid_does_not_bracket_an_optimum():
    baselines = {**BASELINES, "unigram": 7.0}
    edge = depth_reading(judged(row("x", 6, 5.0), row("x", 24, 5.2), row("x", 96, 5.4)), "budget", baselines)
    assert any("shallowest" in bullet and "does not bracket" in bullet for bullet in edge)
    interior = depth_reading(judged(row("x", 6, 5.3), row("x", 24, 5.0), row("x", 96, 5.4)), "budget", baselines)
    assert any("between 6 and 96 layers" in bullet and "margin 0.300" in bullet for bullet in interior)


def test_the_depth_reading_leaves_out_depths_that_did_not_learn():
    rows = judged(row("x", 6, 5.0), row("x", 24, 4.9, gain=0.0), row("x", 1000, 6.95))
    text = "\n".join(depth_reading(rows, "budget", {**BASELINES, "unigram": 7.0}))
    assert "24 layers **collapsed**" in text and "1000 layers **plateau**" in text
    assert "Lowest final validation loss: 6 layers" in text


def test_first_difference_names_the_changed_key():
    assert first_difference({"train": {"lr": 1e-3, "seed": 0}}, {"train": {"lr": 1e-2, "seed": 0}}) == "train.lr: 0.001 → 0.01"
    assert first_difference({"a": 1}, {"a": 1}) is None


def test_a_cell_folder_from_another_configuration_is_refused(tmp_path):
    cell = Cell("c", {}, {"model": {}, "train": {"max_steps": 5}})
    (tmp_path / "cells" / "c").mkdir(parents=True)
    (tmp_path / "cells" / "c" / "cell.json").write_text(json.dumps({"id": "c", "axes": {}, "config": {"model": {}, "train": {"max_steps": 9}}}))
    with pytest.raises(KiloError, match=r"train.max_steps: 9 → 5"):
        run_cells(tmp_path, [cell], jobs=1, threads_per_cell=1, progress=False)


def test_input_errors_are_one_line_exit_2(capsys):
    from kilolayer.cli import main

    assert main(["study", "stability", "--arch", "bert", "--preset", "gpt-tiny"]) == 2
    assert main(["study", "stability", "--preset", "gpt-tiny", "--schemes", "post_ln,postln"]) == 2
    assert main(["study", "stability", "--preset", "gpt-tiny", "--lrs", "fast"]) == 2
    assert main(["study", "depth", "--arch", "bert", "--zero-shot", "piqa"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("kilolayer study: error:") for line in errors)
    assert "pass --arch gpt" in errors[0] and "unknown scheme postln" in errors[1] and "causal LM" in errors[3]


def test_a_refused_rerun_changes_nothing_on_disk(tmp_path):
    from kilolayer.study.shared import run_study

    (tmp_path / "study.json").write_text('{"old": true}')
    (tmp_path / "cells" / "c").mkdir(parents=True)
    (tmp_path / "cells" / "c" / "cell.json").write_text(json.dumps({"id": "c", "axes": {}, "config": {"model": {}, "train": {"max_steps": 9}}}))
    cells = [Cell("new", {}, {"model": {}, "train": {"max_steps": 5}}), Cell("c", {}, {"model": {}, "train": {"max_steps": 5}})]
    with pytest.raises(KiloError, match=r"train.max_steps: 9 → 5"):
        run_study(tmp_path, {}, "data", None, cells, jobs=1, threads_per_cell=1, progress=False)
    assert (tmp_path / "study.json").read_text() == '{"old": true}' and not (tmp_path / "cells" / "new").exists()


def test_a_study_folder_keeps_the_cells_of_earlier_runs_unless_the_settings_changed(tmp_path):
    from kilolayer.study.runner import check_unchanged
    from kilolayer.study.stability import earlier_cells

    base = base_config("gpt-tiny", None, None, [])
    seed = base["train"]["seed"]
    two_seeds = stability_cells(base, StabilityGrid(schemes=("pre_ln",), depths=(4,), lrs=(1e-3,), seeds=(seed, seed + 1)))
    for cell in two_seeds:
        (tmp_path / "cells" / cell.id).mkdir(parents=True)
        (tmp_path / "cells" / cell.id / "cell.json").write_text(json.dumps({"id": cell.id, "axes": cell.axes, "config": cell.config}))
    one_seed = stability_cells(base, StabilityGrid(schemes=("post_ln",), depths=(4,), lrs=(1e-3,)))
    found = earlier_cells(tmp_path, base, one_seed)
    assert sorted(cell.id for cell in found) == sorted(cell.id for cell in two_seeds if cell.id not in {c.id for c in one_seed})
    check_unchanged(tmp_path, one_seed + found)  # same settings: accepted
    longer = base_config("gpt-tiny", None, None, ["train.max_steps=99"])
    with pytest.raises(KiloError, match="max_steps"):
        check_unchanged(tmp_path, earlier_cells(tmp_path, longer, stability_cells(longer, StabilityGrid(schemes=("post_ln",), depths=(4,), lrs=(1e-3,)))))


def test_report_only_reads_finished_cells_and_runs_nothing(tmp_path):
    from kilolayer.study.baselines import Baselines
    from kilolayer.study.shared import run_study

    cells = [Cell(name, {}, {"model": {"arch": "gpt"}, "train": {"max_steps": 5}}) for name in ("done", "todo")]
    for cell in cells:
        (tmp_path / "cells" / cell.id).mkdir(parents=True)
        (tmp_path / "cells" / cell.id / "cell.json").write_text(json.dumps({"id": cell.id, "axes": {}, "config": cell.config, "zero_shot": None}))
    (tmp_path / "cells" / "done" / "result.json").write_text(json.dumps({"id": "done", "axes": {}, "status": "trained"}))
    baselines = Baselines(5.0, 4.0, 0.1, 0.1, 100, 10)
    outcome = run_study(tmp_path, {}, "data", baselines, cells, jobs=1, threads_per_cell=1, progress=False, report_only=True)
    assert [record["id"] for record in outcome.records] == ["done"] and outcome.pending == ("todo",)
    assert not (tmp_path / "study.json").exists() and not (tmp_path / "cells" / "todo" / "run").exists()


def test_the_reading_reports_the_seed_spread_of_cells_run_with_several_seeds():
    rows = [row("pre_ln", 12, 4.60, control=True), {**row("pre_ln", 12, 4.63, control=True), "seed": 1}, row("post_ln", 1000, 5.35, gain=0.0)]
    assign_verdicts(rows, 5.36)
    text = "\n".join(stability_reading(rows, BASELINES, steps=100, tokens_per_cell=51200))
    assert "`pre_ln` 12 layers, lr 0.001, warmup 0, clip off: 0.030 nats over 2 seeds" in text
    single = "\n".join(stability_reading(rows[2:], BASELINES, steps=100, tokens_per_cell=51200))
    assert "Every cell ran one seed" in single
