"""The built-in demo: a task's demo model (trained by `jobs/demo_models/train.py`, a script
that is not installed; the models are committed) and its synthetic data generated on first
use (the task's `write_demo`), so `rayinfer run coco` works on a fresh machine.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rayinfer.jobs.tasks import get_task, task_names



def demo_models() -> dict[str, Path]:
    """task name -> its built-in demo model, for the tasks that have a demo."""
    return {name: task.demo_model for name in task_names() if (task := get_task(name)).demo_model is not None}


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
    get_task(task).write_demo(tmp)
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
