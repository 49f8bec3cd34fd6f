"""Model families: how a model's input is prepared and its output decoded, one module each.

The detection families a COCO job chooses among (`--model-family`, `auto` by default) are
registered here by name; each is a `DetectionFamily` (detection.py) whose `matches` says
whether a model has its signature. `auto` takes the one family that matches and refuses
when none or several do, rather than guess. The depth and null tasks have one family
each (depth.py, null.py).

Adding a detection family: one module with a `DetectionFamily` subclass (end2end.py is the
shortest), and its line below; `--model-family` takes its name from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import SetupError

REGISTRY: dict[str, str] = {
    "yolov8": "rayinfer.actors.families.yolov8:YoloV8",  # and YOLO11: the same export
    "yolox": "rayinfer.actors.families.yolox:YoloX",
    "end2end": "rayinfer.actors.families.end2end:EndToEnd",  # YOLO26, YOLOv10, nms=True: [B, N, 6]
    "rtdetr": "rayinfer.actors.families.rtdetr:RtDetr",  # RT-DETR as Ultralytics exports it: [B, N, 4+nc]
    "detr": "rayinfer.actors.families.detr:Detr",  # RT-DETR(v2) / D-FINE / DEIM own exports: labels, boxes, scores
}


def family_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_family(name: str) -> type:
    if name not in REGISTRY:
        raise SetupError(f"unknown model family {name!r}: one of {family_names()} (or auto)")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def choose_family(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                  metadata: Mapping[str, str] | None = None) -> type:
    """The family for a model: `name`, checked against the model, or for `auto` the one
    family whose signature the model has (its metadata may decide). A setup error says why
    otherwise."""
    signature = f"inputs {[i.describe() for i in inputs]}, outputs {[o.describe() for o in outputs]}"
    if name != "auto":
        family = get_family(name)
        wrong = family.matches(inputs, outputs, metadata)
        if wrong:
            raise SetupError(f"the model is not a {name} detector: {wrong} ({signature})")
        return family
    verdicts = {n: get_family(n).matches(inputs, outputs, metadata) for n in REGISTRY}
    matching = [n for n, wrong in verdicts.items() if wrong is None]
    if len(matching) == 1:
        return get_family(matching[0])
    if matching:
        raise SetupError(f"the model could be any of {matching} ({signature}): set --model-family")
    reasons = "; ".join(f"{n}: {wrong}" for n, wrong in verdicts.items())
    raise SetupError(f"no detection family matches the model ({signature}): {reasons}")


def check_options(family: type, given: Mapping[str, object]) -> None:
    """A setup error naming the options set that `family` does not read, and the families
    that do."""
    unused = family.unused_options(given)
    if not unused:
        return
    flags = ", ".join("--" + k.replace("_", "-") for k in unused)
    readers = [n for n in REGISTRY if not get_family(n).unused_options(dict.fromkeys(unused))]
    theirs = ", ".join("--" + k.replace("_", "-") for k in family.options_used)
    raise SetupError(f"{flags}: not an option of the {family.name} family (NMS: {family.nms}; its options: {theirs})"
                     + (f"; {' and '.join(readers)} take {'it' if len(unused) == 1 else 'them'}" if readers else ""))
