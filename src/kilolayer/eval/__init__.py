"""Evaluation as in the FoundationLayerNorm paper.

* ``zeroshot.evaluate_folder`` / ``evaluate_zero_shot``: LAMBADA, PIQA, HellaSwag, Winogrande through
  lm-evaluation-harness on local files (task definitions in ``tasks/``).
* ``perplexity.perplexity`` / ``file_perplexity``: exp(mean NLL) with a sliding window.
* ``finetune.finetune``: GLUE QQP / MRPC sentence-pair fine-tuning; ``metrics.binary_metrics``.
* ``report``: results JSON and Markdown beside the paper's rows.

Modules import lm-eval and torch only inside functions, so the CLI starts fast.
"""
