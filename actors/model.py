"""The `Model` protocol: what the request queues and the actor need from a runtime.

A model is named tensors in, tensors out, `run` safe from several threads at once, and a
`device` saying what it really runs on, in one vocabulary: "cpu" (requests share the
node's cores), "gpu" (CUDA / TensorRT) or "sim" (the simulated accelerator). Each
runtime backend (actors/backends/) builds one; everything above talks tensors only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: --precision values. "model" computes as the model file stores it (float weights in fp32, an
#: int8 model's quantized layers in int8): the default, and the only one whose metrics are the
#: model's own. "bf16" and "fp16" let the runtime compute its float layers in reduced precision,
#: where the device has the units for it: faster, and the metrics can differ.
PRECISIONS = ("model", "bf16", "fp16")


def precision_text(precision: str) -> str:
    """What a precision means, in the words the summary, the report and `rayinfer bench` use."""
    if precision == "model":
        return "model: computed at the model's own precision"
    if precision in PRECISIONS:
        return f"{precision}: computed in reduced precision; metrics can differ from the model's own"
    return precision  # a run.json written before --precision: OpenVINO's own word


class ModelError(Exception):
    """The model file cannot be used (missing, not ONNX, unsupported provider)."""


class InputError(ValueError):
    """An input does not match the model's signature."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output. Dynamic dims are None."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"[{dims}] {np.dtype(self.dtype).name}"


def available_cpus() -> int:
    """CPUs this process may use: Ray's assignment inside an actor, else the affinity mask.

    Never `os.cpu_count()`: on a shared node that counts cores other actors own.
    """
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            if ctx.worker.mode == ray.WORKER_MODE:
                cpus = ctx.get_assigned_resources().get("CPU")
                if cpus:
                    return counted_cpus(cpus)
    except Exception:  # pragma: no cover - Ray missing or not in a worker
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def counted_cpus(assigned: float) -> int:
    """The CPUs an actor counts (its threads, requests) for `assigned` Ray CPUs: at least one."""
    return max(1, int(round(assigned)))


class Model(Protocol):
    """What a request queue needs from a model: specs, validation and a thread-safe run."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: str

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]: ...

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def check_inputs(specs: Sequence[TensorSpec], inputs: Any) -> dict[str, np.ndarray]:
    """Name the inputs and check them against the specs.

    A single array is accepted for a single-input model. The error names the
    input, the expected shape and dtype, and what was received.
    """
    if isinstance(inputs, np.ndarray):
        if len(specs) != 1:
            names = ", ".join(s.name for s in specs)
            raise InputError(f"model has {len(specs)} inputs ({names}); pass a dict, not one array")
        inputs = {specs[0].name: inputs}
    elif isinstance(inputs, (list, tuple)):
        if len(inputs) != len(specs):
            raise InputError(f"model has {len(specs)} inputs, got {len(inputs)} arrays")
        inputs = {s.name: a for s, a in zip(specs, inputs)}
    elif not isinstance(inputs, Mapping):
        raise InputError(f"inputs must be an array, a sequence or a dict, got {type(inputs).__name__}")

    expected = {s.name for s in specs}
    unknown = set(inputs) - expected
    missing = expected - set(inputs)
    if unknown or missing:
        raise InputError(
            f"input names do not match the model: missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        value = inputs[spec.name]
        if not isinstance(value, np.ndarray):
            value = np.asarray(value)
        ok_rank = len(value.shape) == len(spec.shape)
        ok_dims = ok_rank and all(d is None or d == v for d, v in zip(spec.shape, value.shape))
        if not ok_dims or value.dtype != spec.dtype:
            raise InputError(
                f"input '{spec.name}': expected {spec.describe()}, "
                f"got {list(value.shape)} {value.dtype.name}"
            )
        feed[spec.name] = value
    return feed
