"""Model families: how a model's input is prepared and its output decoded, one module each.

The detection families a COCO job chooses among (`--model-family`, `auto` by default) are
registered here by name; each is a `DetectionFamily` (detection.py) whose `matches` says
whether a model has its signature. `auto` takes the one family that matches and refuses
when none or several do, rather than guess. The depth and null tasks have one family
each (depth.py, null.py).

Adding a detection family (an NMS-free one, say): one module with a `DetectionFamily`
subclass, and its line below.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import SetupError

REGISTRY: dict[str, str] = {
    "yolov8": "rayinfer.actors.families.yolov8:YoloV8",  # and YOLO11: the same export
    "yolox": "rayinfer.actors.families.yolox:YoloX",
}


def family_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_family(name: str) -> type:
    if name not in REGISTRY:
        raise SetupError(f"unknown model family {name!r}: one of {family_names()} (or auto)")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def choose_family(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> type:
    """The family for a model: `name`, checked against the model, or for `auto` the one
    family whose signature the model has. A setup error says why otherwise."""
    signature = f"inputs {[i.describe() for i in inputs]}, outputs {[o.describe() for o in outputs]}"
    if name != "auto":
        family = get_family(name)
        wrong = family.matches(inputs, outputs)
        if wrong:
            raise SetupError(f"the model is not a {name} detector: {wrong} ({signature})")
        return family
    verdicts = {n: get_family(n).matches(inputs, outputs) for n in REGISTRY}
    matching = [n for n, wrong in verdicts.items() if wrong is None]
    if len(matching) == 1:
        return get_family(matching[0])
    if matching:
        raise SetupError(f"the model could be any of {matching} ({signature}): set --model-family")
    reasons = "; ".join(f"{n}: {wrong}" for n, wrong in verdicts.items())
    raise SetupError(f"no detection family matches the model ({signature}): {reasons}")
