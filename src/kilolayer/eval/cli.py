"""``kilolayer eval`` (zero-shot tasks, perplexity) and ``kilolayer finetune`` (GLUE QQP/MRPC)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import KiloError

DEFAULT_TASKS = "lambada_openai,piqa,hellaswag,winogrande"


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "eval",
        help="zero-shot LAMBADA/PIQA/HellaSwag/Winogrande (lm-eval) and perplexity of a causal model folder",
        description="Score a causal model folder (save_pretrained output + tokenizer) with lm-evaluation-harness "
        "on local task files, and/or its perplexity on a text file. Writes results.json and results.md.",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    evaluate.add_argument("--tasks", help=f"comma-separated zero-shot tasks (default {DEFAULT_TASKS}, or none with --perplexity)")
    evaluate.add_argument("--data-dir", help="reference data folder (layout of shared/data); default $KILOLAYER_DATA")
    evaluate.add_argument("--from-hub", action="store_true", help="use lm-eval's own task definitions and hub datasets (needs network)")
    evaluate.add_argument("--limit", type=_positive_int, help="first N examples of each task (quick runs)")
    evaluate.add_argument(
        "--batch-size", default="auto", type=_batch_size,
        help="auto (default: lm-eval's largest-fitting search on GPU, 8 on CPU) or a number",
    )
    evaluate.add_argument("--perplexity", metavar="FILE", help="also report the perplexity of this text file (sliding window)")
    evaluate.add_argument("--log-samples", action="store_true", help="write each example's scores to samples_<task>.jsonl")
    evaluate.add_argument("--device", help="cpu, cuda, cuda:1, … (default: cuda when available)")
    evaluate.add_argument("--out", type=Path, help="results folder (default MODEL_DIR/eval)")
    evaluate.set_defaults(func=run_eval)

    finetune = subparsers.add_parser(
        "finetune",
        help="fine-tune a model folder on GLUE QQP or MRPC and report accuracy, precision, recall, F1",
        description="Sentence-pair fine-tuning with early stopping on a validation slice of the training pairs. "
        "QQP without its train file uses the dev set split by idx % 4 (see finetune.json's splits_note).",
    )
    finetune.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    finetune.add_argument("--task", required=True, choices=("qqp", "mrpc"))
    finetune.add_argument("--data-dir", help="reference data folder (layout of shared/data); default $KILOLAYER_DATA")
    finetune.add_argument("--out", type=Path, help="run folder: config.yaml, metrics.jsonl, tensorboard/, checkpoints/, model/ (the best validation), finetune.json, finetune.md (default MODEL_DIR/finetune-TASK)")
    finetune.add_argument("--epochs", type=_positive_int, default=3)
    finetune.add_argument("--patience", type=_positive_int, default=3, help="evaluations without improvement before stopping")
    finetune.add_argument(
        "--preset", default="glue",
        help="a fine-tuning recipe: glue (default: BERT's, lr 3e-5, batch 32, linear decay) or a YAML file with a train section",
    )
    finetune.add_argument("--config", metavar="FILE", help="a YAML file whose train section overrides the preset's")
    finetune.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="train.KEY=VALUE",
        help="override one training setting, as in pretrain: train.lr, train.batch_size (pairs per micro-batch), "
        "train.grad_accum, train.seq_len (at most the model's positions), train.eval_every (once per epoch), "
        "train.precision, train.activation_checkpointing, train.max_minutes, train.seed, ... (repeatable)",
    )
    finetune.add_argument("--limit", type=_positive_int, help="first N pairs of the train and test splits (quick runs)")
    finetune.add_argument("--resume", choices=("auto", "never"), default="auto", help="auto: continue from OUT's checkpoint if there is one")
    finetune.add_argument("--device", help="cpu, cuda, … (default: cuda when available)")
    finetune.set_defaults(func=run_finetune)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _batch_size(text: str) -> int | str:
    return text if text == "auto" else _positive_int(text)


def run_eval(args) -> int:
    import json
    import logging

    from ..paths import check_writable_folder, data_dir
    from .model_folder import pick_device
    from ..atomic import write_text
    from .report import write_json, zero_shot_markdown
    from .zeroshot import evaluate_folder, parse_tasks

    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its warnings about in-memory models are noise here
    out = args.out or args.model_dir / "eval"
    check_writable_folder(out, "--out")  # before the work, not after it
    pick_device(args.device)
    if args.perplexity:
        _check_text_file(Path(args.perplexity), "--perplexity")
    tasks = parse_tasks(args.tasks or DEFAULT_TASKS) if args.tasks or not args.perplexity else []
    record = evaluate_folder(
        args.model_dir,
        tasks,
        data_dir(args.data_dir),
        from_hub=args.from_hub,
        limit=args.limit,
        batch_size=args.batch_size,
        perplexity_file=args.perplexity,
        log_samples=args.log_samples,
        device=args.device,
    )
    out.mkdir(parents=True, exist_ok=True)
    for task, result in record.get("tasks", {}).items():
        samples = result.pop("samples", None)
        if samples is not None:
            write_text(out / f"samples_{task}.jsonl", "".join(json.dumps(sample) + "\n" for sample in samples))
    write_json(out / "results.json", record)
    markdown = zero_shot_markdown(record)
    write_text(out / "results.md", markdown)
    print(markdown)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def finetune_train_options(config_file: str | None, overrides: list[str]) -> dict:
    """The train section of --config and --set (a model section is an error: the model is MODEL_DIR's)."""
    from ..presets import apply_overrides, load_preset, merge

    config = {"model": {}, "train": {}}
    if config_file:
        config = merge(config, load_preset(config_file))
    config = apply_overrides(config, overrides)
    if config["model"]:
        raise KiloError(f"finetune takes its model from MODEL_DIR; remove the model settings ({', '.join(config['model'])}) and keep train.*")
    return config["train"]


def _check_text_file(path: Path, flag: str) -> None:
    """A readable UTF-8 text file (a binary file would be scored as mojibake)."""
    if not path.is_file():
        raise KiloError(f"{flag} {path}: no such file; give a UTF-8 text file")
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise KiloError(f"{flag} {path} is not UTF-8 text (byte {error.start}); give a plain text file") from None
    except OSError as error:
        raise KiloError(f"{flag} {path} cannot be read ({error.strerror})") from None


def run_finetune(args) -> int:
    from ..paths import data_dir
    from .finetune import finetune

    out = args.out or args.model_dir / f"finetune-{args.task}"
    reference = data_dir(args.data_dir)
    if reference is None:
        raise KiloError(f"no data folder for {args.task}; give --data-dir or set KILOLAYER_DATA (layout of shared/data: glue/{args.task}/...)")
    options = finetune_train_options(args.config, args.overrides)
    record = finetune(
        args.model_dir,
        args.task,
        reference,
        out,
        epochs=args.epochs,
        patience=args.patience,
        limit=args.limit,
        resume=args.resume == "auto",
        device=args.device,
        preset=args.preset,
        **options,
    )
    if record is None:  # a rank other than 0 under torchrun: rank 0 reports
        return 0
    if record["stopped_by"] == "signal":
        print(f"kilolayer finetune: interrupted at step {record['steps']}; checkpoint {record['checkpoint']}; rerun the same command to continue", file=sys.stderr)
        return 130
    print((out / "finetune.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'finetune.json'}, {out / 'finetune.md'} and the fine-tuned model in {record['model_out']}")
    if record["stopped_by"] == "nonfinite":
        print(f"kilolayer finetune: the run stopped on non-finite losses at step {record['steps']}; model/ holds its best evaluation", file=sys.stderr)
        return 1
    return 0
