"""Run ``kilolayer.train.loop.train`` in a fresh process: python train_script.py CONFIG.json OUT_DIR [RESUME].

Prints the TrainResult as one JSON line. One thread, so that runs compared bitwise use the same kernels.
"""

import json
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from kilolayer.train.loop import train  # noqa: E402

config = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
result = train(config, Path(sys.argv[2]), resume=sys.argv[3] if len(sys.argv) > 3 else "auto", progress=False)
print(json.dumps({key: str(value) if isinstance(value, Path) else value for key, value in vars(result).items()}))
