"""An ONNX model as the runtime sees it: named tensors in, tensors out.

`OnnxModel` wraps one ONNX Runtime session. It owns the choices that decide how
fast and how safely the session runs: which execution providers, how many
intra-op threads, and which inputs are acceptable. Everything above it (the
request queue, the actor) talks tensors only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

#: Short names accepted in configuration, mapped to ONNX Runtime provider names.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


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


@dataclass(frozen=True)
class RuntimeOptions:
    """How a session runs. Built from the job config; serialisable.

    `providers` are tried in order; CPU is always appended as the fallback so a
    missing GPU build degrades instead of failing. `intra_op_threads=0` means
    "all CPUs this process may use" (see `available_cpus`).
    """

    providers: tuple[str, ...] = ("cpu",)
    provider_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    intra_op_threads: int = 0
    graph_optimization: str = "all"

    def resolved_providers(self) -> list[tuple[str, dict[str, Any]]]:
        """Full ORT provider names with their options, CPU last."""
        out: list[tuple[str, dict[str, Any]]] = []
        for p in self.providers:
            name = PROVIDER_ALIASES.get(p.lower(), p)
            opts = dict(self.provider_options.get(p, self.provider_options.get(name, {})))
            if name not in (n for n, _ in out):
                out.append((name, opts))
        if "CPUExecutionProvider" not in (n for n, _ in out):
            out.append(("CPUExecutionProvider", {}))
        return out


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
                    return max(1, int(round(cpus)))
    except Exception:  # pragma: no cover - Ray missing or not in a worker
        pass
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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


def tensor_spec(node: Any) -> TensorSpec:
    """An ONNX Runtime input or output (NodeArg) as a TensorSpec: dynamic dims are None."""
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (node.shape or ()))
    dtype = np.dtype(_ORT_DTYPES.get(node.type, np.float32))
    return TensorSpec(node.name, shape, dtype)


class OnnxModel:
    """One ONNX Runtime session, safe to `run` from several threads at once.

    ORT sessions are thread-safe for concurrent `run` calls; with one intra-op
    thread per request, N concurrent requests use N cores without oversubscription.
    """

    def __init__(self, path: str | os.PathLike[str], options: RuntimeOptions | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.options = options or RuntimeOptions()
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")

        so = ort.SessionOptions()
        threads = self.options.intra_op_threads or available_cpus()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization]
        if threads == 1:
            # No pool to spin: a single-thread request must not burn a core waiting.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")

        wanted = self.options.resolved_providers()
        available = set(ort.get_available_providers())
        providers = [(n, o) for n, o in wanted if n in available]
        skipped = [n for n, _ in wanted if n not in available]
        if skipped:
            log.warning("execution providers not available in this onnxruntime build: %s", skipped)
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=so,
                providers=[n for n, _ in providers],
                provider_options=[o for _, o in providers],
            )
        except Exception as exc:
            raise ModelError(f"cannot load model {self.path}: {exc}") from exc
        self.intra_op_threads = threads
        self.inputs = tuple(tensor_spec(i) for i in self.session.get_inputs())
        self.outputs = tuple(tensor_spec(o) for o in self.session.get_outputs())
        self.output_names = [o.name for o in self.outputs]
        self.providers = tuple(self.session.get_providers())
        self.device = "cuda" if self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]:
        return check_inputs(self.inputs, inputs)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, feed)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name!r}, providers={list(self.providers)}, threads={self.intra_op_threads})"
