"""Benchmark: kilolayer vs HF transformers at identical shapes, and against the measured matmul peak."""

BATCH, LENGTH = 8, 64  # the batch: 8 sequences of 64 tokens (here, so that the CLI reads it without torch)
