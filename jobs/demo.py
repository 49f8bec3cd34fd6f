"""The built-in demo: models trained by `jobs/demo_models/train.py` (a script, not installed; the models are committed) and synthetic
data generated on first use, so `rayinfer run coco` works on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rayinfer.datasets.synthetic import write_coco, write_nyu

DEMO_MODELS_DIR = Path(__file__).resolve().parent / "demo_models"
DEMO_MODELS = {"coco": DEMO_MODELS_DIR / "detector.onnx", "nyu": DEMO_MODELS_DIR / "depth.onnx"}
#: The demo evaluation sets (seed 0; the demo models were trained on other seeds).
DEMO_SETS = {"coco": {"n_images": 48, "seed": 0}, "nyu": {"n_frames": 8, "seed": 0}}


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rayinfer" / "demo"


def demo_data(task: str) -> Path:
    """The demo data for `task`, generated (atomically) the first time."""
    root = cache_dir() / task
    if (root / ".complete").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}-", dir=root.parent))
    if task == "coco":
        write_coco(tmp, **DEMO_SETS["coco"])
    else:
        write_nyu(tmp, **DEMO_SETS["nyu"])
    (tmp / ".complete").write_text("rayinfer demo data\n")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root


def next_output(task: str, base: Path = Path("runs")) -> Path:
    """runs/TASK, or runs/TASK2, runs/TASK3, ... if taken (as Ultralytics numbers its runs)."""
    candidate, n = base / task, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{task}{n}"
    return candidate
