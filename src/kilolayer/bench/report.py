"""The bench report as a Markdown table (printed, and pasted into docs/benchmarks.md) and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

GIB = 2**30
COLUMNS = (
    "model", "shape", "ckpt", "schedule",
    "tok/s kilolayer", "tok/s HF", "x",
    "MFU kilolayer", "MFU HF",
    "eval req/s kilolayer", "eval req/s HF", "x",
    "peak RSS GiB kilolayer", "peak RSS GiB HF",
    "build s kilolayer", "build s HF",
)


def _number(value, digits: int = 1, scale: float = 1.0) -> str:
    return "—" if value is None else f"{value / scale:.{digits}f}"


def _percent(value) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def row(result: dict) -> list[str]:
    kilo, hf, ratio = result["kilolayer"], result["hf"], result["ratio"]
    return [
        result["family"], f"{result['size']} ({result['heads']} h)", "yes" if result["checkpointing"] else "no",
        result["schedule"],
        _number(kilo.get("tokens_per_s")), _number(hf.get("tokens_per_s")), _number(ratio["tokens_per_s"], 2),
        _percent(kilo.get("mfu")), _percent(hf.get("mfu")),
        _number(kilo.get("eval_requests_per_s")), _number(hf.get("eval_requests_per_s")),
        _number(ratio["eval_requests_per_s"], 2),
        _number(kilo.get("peak_rss_bytes"), 2, GIB), _number(hf.get("peak_rss_bytes"), 2, GIB),
        _number(kilo.get("build_s"), 2), _number(hf.get("build_s"), 2),
    ]


def table(report: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(result)) + " |" for result in report["results"]]
    return "\n".join(lines)


def notes(report: dict) -> str:
    """Conditions, the measured peak, the step split, AdamW kernels and any failure, one line each."""
    o, m = report["options"], report["machine"]
    load = report["load_average"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / GIB:.0f} GiB; torch {m['torch']}, "
        f"transformers {m['transformers']}" + (f"; GPU {m['gpu']}" if m.get("gpu") else ""),
        f"run: {report['started']}, {report['wall_s'] / 60:.1f} min; batch {o['batch']} x {o['length']} tokens, "
        f"{o['precision']}, {o['threads']} threads, {o['device']}, AdamW {o['optimizer']}, "
        f"steps {o['steps']} after {o['warmup']} warm-up (median), compile {'on' if o['compile'] else 'off'}, "
        f"denormals flushed: kilolayer yes, HF {'yes' if o.get('hf_flush_denormal', True) else 'no (as shipped)'}",
        "load average (1/5/15 min): before " + "/".join(f"{x:.1f}" for x in load["before"])
        + ", after " + "/".join(f"{x:.1f}" for x in load["after"]),
    ]
    for result in report["results"]:
        name = f"{result['family']} {result['size']}"
        peak = result["matmul_peak_flops"]
        parts = [f"matmul peak {_number(peak, 0, 1e9)} GFLOP/s"]
        for side in ("kilolayer", "hf"):
            values = result[side]
            if "step_s" in values:
                parts.append(
                    f"{side} step {values['step_s']:.2f} s (fwd+bwd {values['forward_backward_s']:.2f}, "
                    f"AdamW {values['optimizer_s']:.2f})"
                )
            if "error" in values:
                parts.append(f"{side} FAILED: {values['error']}")
        adamw = result["kilolayer"].get("adamw_step_s")
        if adamw:
            parts.append("kilolayer AdamW step " + ", ".join(f"{kernel} {seconds:.2f} s" for kernel, seconds in adamw.items()))
        lines.append(f"{name}: " + "; ".join(parts))
    return "\n".join(lines)


def write_json(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
