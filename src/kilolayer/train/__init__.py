"""Pretraining engine: ``loop.train(config, out_dir)`` and its parts, one file each.

config (TrainConfig) · schedule (LR) · checkpoint (atomic, exact resume) · guard (stability guard,
per-layer diagnostics) · distributed (DDP / FSDP2) · metrics (JSONL, TensorBoard, loss curve) ·
export (HF folder + model card) · faults (test-only fault injection) · cli (``kilolayer pretrain``).
"""
