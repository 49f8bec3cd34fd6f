"""A toy runtime backend, as a user would add one (a vendor SDK's, say).

This module is the whole backend: its options (each a flag, `--toy-scale`, `--toy-device`),
the files it claims (`.toy`, by suffix), the devices it sees (for `rayinfer doctor`), the Ray
resource its accelerator needs, and the model it builds. Registering it is one line
(`REGISTRY["toy"] = "tests.toy_backend"`).

A `.toy` file is JSON: {"input": NAME, "shape": [1, C, H, W]}. The "device" computes each
channel's mean times `scale`: [1, C], what the toy classification task's ONNX model computes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.model import TensorSpec, check_inputs
from rayinfer.actors.settings import ActorSettings, backend_option, backend_options


@dataclass(frozen=True)
class ToyOptions:
    scale: float = backend_option(1.0, "what the toy device multiplies its channel means by")
    device: str = backend_option("cpu", "cpu, or accel: an accelerator each actor needs a toy_accel resource for")

    def __post_init__(self) -> None:
        if self.scale <= 0:
            raise ValueError(f"scale: must be > 0, got {self.scale}")
        if self.device not in ("cpu", "accel"):
            raise ValueError(f"device: cpu or accel, got {self.device!r}")


class ToyModel:
    intra_op_threads = 1
    providers = ("ToyDevice",)

    def __init__(self, path: str, options: ToyOptions) -> None:
        spec = json.loads(Path(path).read_text())
        self.device = options.device
        self.scale = options.scale
        self.inputs = (TensorSpec(spec["input"], tuple(spec["shape"]), np.dtype(np.float32)),)
        self.outputs = (TensorSpec("scores", (1, spec["shape"][1]), np.dtype(np.float32)),)
        self.metadata: dict[str, str] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]:
        return check_inputs(self.inputs, inputs)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.calls += 1
        x = feed[self.inputs[0].name]
        return [(x.mean(axis=(2, 3)) * self.scale).astype(np.float32)]


class ToyBackend:
    name = "toy"
    options_type = ToyOptions

    @staticmethod
    def handles(model: str) -> bool:
        return model.lower().endswith(".toy")

    @staticmethod
    def installed() -> str | None:
        return None

    @staticmethod
    def resolve(model: str) -> str:
        return str(Path(model).expanduser().resolve())

    @staticmethod
    def check(model: str) -> str | None:
        try:
            spec = json.loads(Path(model).read_text())
        except (OSError, ValueError) as exc:
            return f"{model}: not a toy model ({exc})"
        return None if {"input", "shape"} <= set(spec) else f"{model}: a toy model names its input and shape"

    @staticmethod
    def digest(model: str) -> dict[str, Any]:
        from rayinfer.datasets.base import file_digest

        return file_digest(model)

    @staticmethod
    def options(cfg: ActorSettings) -> ToyOptions:
        return backend_options(cfg, "toy", ToyOptions)

    @staticmethod
    def device(cfg: ActorSettings) -> str:
        return ToyBackend.options(cfg).device

    @staticmethod
    def resource(cfg: ActorSettings) -> str | None:
        return "toy_accel" if ToyBackend.options(cfg).device == "accel" else None

    @staticmethod
    def devices() -> list[str]:
        return ["toy0", "toy1"]

    @staticmethod
    def check_precision(cfg: ActorSettings) -> str | None:
        return None if cfg.precision == "model" else "the toy device computes in float32 only"

    @staticmethod
    def build(cfg: ActorSettings, plan: Any, cpus: int) -> ToyModel:
        return ToyModel(cfg.model, ToyBackend.options(cfg))

    @staticmethod
    def versions() -> dict[str, str]:
        return {"toy": "0.1"}


BACKEND = ToyBackend()
