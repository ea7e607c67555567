"""Depth laboratory: the stability map (which schemes train at which depth and learning rate) and
FPM's optimal-depth question at a fixed parameter or compute budget.

Both studies are grids of short training runs ("cells") run by ``runner.run_cells``: each cell in
its own process, resumable, its result summarised from the training engine's metrics.
"""
