"""The ``kilolayer`` command itself: ``--help`` is instant because parsing imports neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_torch_or_transformers():
    code = (
        "import sys\n"
        "from kilolayer.cli import build_parser\n"
        "try:\n"
        "    build_parser().parse_args(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    assert "COMMAND" in finished.stdout
    assert finished.stdout.strip().splitlines()[-1] == "[]"


def test_import_kilolayer_registers_the_auto_classes_when_transformers_loads():
    code = (
        "import sys, kilolayer\n"
        "assert 'torch' not in sys.modules\n"
        "from transformers import AutoConfig\n"
        "print(type(AutoConfig.for_model('kilolayer', num_layers=2)).__name__)\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "KiloConfig"
