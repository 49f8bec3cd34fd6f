"""The tasks a job can run, by name. A task is one module of hooks (see `base.Task`);
adding one is that module plus one line in `REGISTRY`."""

from __future__ import annotations

import importlib

from rayinfer.datasets.base import SetupError
from rayinfer.jobs.tasks.base import RunningMetric, Table, Task

#: task name -> "module:attribute" of its Task object, imported when first asked for.
REGISTRY: dict[str, str] = {
    "coco": "rayinfer.jobs.tasks.coco:TASK",   # COCO detection: YOLOv8/YOLO11, YOLOX
    "nyu": "rayinfer.jobs.tasks.nyu:TASK",     # NYU Depth V2: monocular depth
    "null": "rayinfer.jobs.tasks.null:TASK",   # N empty samples, for benchmarks
}


def task_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_task(name: str) -> Task:
    """The registered task `name`; a setup error naming the known ones otherwise."""
    target = REGISTRY.get(name)
    if target is None:
        raise SetupError(f"unknown task {name!r}: one of {task_names()}")
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def task_of(data_root: str) -> str:
    """The one task whose `layout` the local folder `data_root` has; a setup error otherwise."""
    from pathlib import Path

    found = [name for name in REGISTRY if get_task(name).layout
             and all((Path(data_root) / p).exists() for p in get_task(name).layout)]
    if len(found) != 1:
        layouts = "; ".join(f"{n}: {', '.join(get_task(n).layout)}" for n in REGISTRY if get_task(n).layout)
        raise SetupError(f"{data_root}: {'no' if not found else 'more than one'} task's layout found "
                         f"({layouts}); name the task with --task")
    return found[0]


__all__ = ["REGISTRY", "RunningMetric", "Table", "Task", "get_task", "task_names", "task_of"]
