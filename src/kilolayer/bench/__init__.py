"""Benchmark: kilolayer vs HF transformers at identical shapes, and against the measured matmul peak."""
