"""The ONNX Runtime backend: one `InferenceSession` per model, its execution providers
(CPU always last, as the fallback), intra-op threads and graph optimisation.

`OnnxModel` owns the choices that decide how fast and how safely the session runs:
which execution providers, how many intra-op threads, and which inputs are acceptable.
Its `device` is what the session got ("gpu" only when CUDA or TensorRT really is its
first provider), not what was asked for.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.settings import ActorSettings, backend_option, backend_options
from rayinfer.actors.model import ModelError, TensorSpec, available_cpus, check_inputs

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

#: providers that run on a GPU
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """The ONNX Runtime backend's options (`--providers`, `--provider-options`)."""

    providers: tuple[str, ...] = backend_option(("cpu",), "ONNX Runtime execution providers in order: cpu, cuda, "
                                                        "tensorrt (CPU always last, as the fallback)",
                                                flag="--providers")
    provider_options: dict[str, dict[str, Any]] = backend_option(
        help='per-provider options as JSON, e.g. \'{"cuda": {"device_id": "0"}}\'', flag="--provider-options",
        factory=dict)

    def __post_init__(self) -> None:
        unknown = [p for p in self.providers if p.lower() not in PROVIDER_ALIASES and not p.endswith("ExecutionProvider")]
        if unknown:
            raise ValueError(f"providers: unknown {unknown} (one of {', '.join(sorted(PROVIDER_ALIASES))}, or "
                             "ONNX Runtime's full name, such as ROCMExecutionProvider)")


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

    @property
    def wants_gpu(self) -> bool:
        """Whether a GPU provider comes first (what placement reserves a GPU for)."""
        return self.resolved_providers()[0][0] in GPU_PROVIDERS


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
        self.device = "gpu" if self.providers[0] in GPU_PROVIDERS else "cpu"
        #: a GPU computes a batch for little more than one sample (--batch auto measures it)
        self.batches = self.device == "gpu"
        #: TensorRT builds an engine for each new input shape: batches are padded to one size
        #: (actors/batching.py), so a short batch never costs an engine build
        self.static_shapes = self.providers[0] == "TensorrtExecutionProvider"
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        # On a GPU each request thread keeps its own IOBinding: inputs are bound from host
        # memory (the batch buffers `host_buffer` gives: pinned) and copied in once, outputs
        # copied back once per run.
        self._bindings = threading.local() if self.device == "gpu" else None

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]:
        return check_inputs(self.inputs, inputs)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._bindings is None:
            return self.session.run(self.output_names, feed)
        binding = getattr(self._bindings, "binding", None)
        if binding is None:
            binding = self._bindings.binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        try:
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        finally:
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()

    def host_buffer(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A host array for a batch's inputs, reused by its request thread: page-locked on a
        GPU (its copy to the device is one DMA, not staged through a bounce buffer), where
        CUDA's runtime library loads; ordinary memory elsewhere."""
        if self.device == "gpu":
            pinned = pinned_array(shape, dtype)
            if pinned is not None:
                return pinned
        return np.zeros(shape, dtype)

    def __repr__(self) -> str:
        return f"OnnxModel({self.path.name!r}, providers={list(self.providers)}, threads={self.intra_op_threads})"


_CUDART_NAMES = ("libcudart.so", "libcudart.so.12", "libcudart.so.13", "libcudart.so.11.0")
_cudart: Any = None


def pinned_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray | None:
    """A zeroed array in page-locked host memory (cudaHostAlloc), or None where CUDA's
    runtime library is not found or the allocation fails (logged once). Never freed: one
    per request thread and input, for the actor's life."""
    import ctypes

    global _cudart
    if _cudart is None:
        _cudart = False
        for name in _CUDART_NAMES + tuple(_pip_cudart()):
            try:
                _cudart = ctypes.CDLL(name)
                break
            except OSError:
                continue
        else:
            log.warning("CUDA's runtime library (libcudart) not found: batch buffers are not pinned")
    if not _cudart:
        return None
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    ptr = ctypes.c_void_p()
    if _cudart.cudaHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), 0) != 0 or not ptr.value:
        log.warning("cudaHostAlloc of %d bytes failed: this batch buffer is not pinned", nbytes)
        return None
    array = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr.value), dtype=dtype).reshape(shape)
    array[...] = 0
    return array


def _pip_cudart() -> list[str]:
    """libcudart from NVIDIA's pip wheels (nvidia-cuda-runtime-cu12), which onnxruntime-gpu uses."""
    try:
        import nvidia.cuda_runtime as rt  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [str(p) for d in rt.__path__ for p in sorted(Path(d, "lib").glob("libcudart.so*"))]


class OnnxRuntimeBackend:
    """Models that are ONNX files, run by ONNX Runtime."""

    name = "onnxruntime"
    options_type = OnnxRuntimeOptions

    @staticmethod
    def handles(model: str) -> bool:
        """An .onnx file or URL, or a local file whose bytes start as an ONNX model does."""
        return is_onnx(model)

    @staticmethod
    def resolve(model: str) -> str:
        return str(Path(model).expanduser().resolve())

    @staticmethod
    def check(model: str) -> str | None:
        """None when the model can be opened here, else why not."""
        return None if Path(model).is_file() else f"model file not found: {model}"

    @staticmethod
    def digest(model: str) -> dict[str, Any]:
        from rayinfer.datasets.base import file_digest

        return file_digest(model)

    @staticmethod
    def options(cfg: ActorSettings) -> OnnxRuntimeOptions:
        return backend_options(cfg, "onnxruntime", OnnxRuntimeOptions)

    @staticmethod
    def device(cfg: ActorSettings) -> str:
        """The device the configuration asks for (the session may get less: OnnxModel.device)."""
        return "gpu" if _session_options(cfg).wants_gpu else "cpu"

    @staticmethod
    def batches(cfg: ActorSettings) -> bool:
        """Whether the device asked for computes a batch for much less than its images one by
        one (a GPU: `--batch auto` measures it there)."""
        return OnnxRuntimeBackend.device(cfg) == "gpu"

    @staticmethod
    def resource(cfg: ActorSettings) -> str | None:
        """No custom Ray resource: a GPU is placement's own `GPU` (`device` says when)."""
        return None

    @staticmethod
    def devices() -> list[str]:
        """The execution providers this onnxruntime build has (for `rayinfer doctor`)."""
        import onnxruntime as ort

        short = {v: k for k, v in PROVIDER_ALIASES.items()}
        return [short.get(p, p) for p in ort.get_available_providers()]

    @staticmethod
    def installed() -> str | None:
        return None  # a dependency of rayinfer

    @staticmethod
    def check_precision(cfg: ActorSettings) -> str | None:
        """ONNX Runtime computes what the graph says; only TensorRT builds an fp16 engine
        (`trt_fp16_enable`). Any other reduced precision would mean converting the model."""
        if cfg.precision == "model" or (cfg.precision == "fp16" and _tensorrt_first(cfg)):
            return None
        return ("ONNX Runtime computes at the model's own precision"
                + (" (fp16 only with the TensorRT provider first: --providers tensorrt)" if cfg.precision == "fp16" else ""))

    @staticmethod
    def build(cfg: ActorSettings, plan: Any, cpus: int) -> OnnxModel:
        """`plan.threads_per_request` intra-op threads (requests share the CPUs)."""
        own = OnnxRuntimeBackend.options(cfg)
        provider_options = dict(own.provider_options)
        if cfg.precision == "fp16" and _tensorrt_first(cfg):
            provider_options["tensorrt"] = {**provider_options.get("tensorrt", {}), "trt_fp16_enable": "True"}
        options = RuntimeOptions(providers=own.providers, provider_options=provider_options,
                                 intra_op_threads=plan.threads_per_request)
        return OnnxModel(cfg.model, options)

    @staticmethod
    def versions() -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}


#: the first bytes of an ONNX file: field 1 (ir_version), a varint (protobuf tag 0x08)
ONNX_MAGIC = b"\x08"


def is_onnx(model: str) -> bool:
    """An ONNX model by its name (`.onnx`, for a URL its path's) or, for a local file named
    otherwise, by its first byte and a readable graph header."""
    from urllib.parse import urlsplit

    if "://" in model:
        return urlsplit(model).path.lower().endswith(".onnx")
    if model.lower().endswith(".onnx"):
        return True
    path = Path(model).expanduser()
    if not path.is_file() or path.suffix.lower() in (".xml", ".bin", ".engine", ".plan", ".rbln"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return False
    # ir_version's value (one byte), then the tag of the next field: producer_name, producer_version,
    # domain, model_version, doc_string, graph or opset_import
    return head[:1] == ONNX_MAGIC and head[2:3] in (b"\x12", b"\x1a", b"\x22", b"\x28", b"\x32", b"\x3a", b"\x42")


def _session_options(cfg: ActorSettings) -> RuntimeOptions:
    return RuntimeOptions(providers=OnnxRuntimeBackend.options(cfg).providers)


def _tensorrt_first(cfg: ActorSettings) -> bool:
    return _session_options(cfg).resolved_providers()[0][0] == "TensorrtExecutionProvider"


BACKEND = OnnxRuntimeBackend()
