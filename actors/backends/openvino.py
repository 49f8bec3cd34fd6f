"""The OpenVINO backend: a compiled model run through OpenVINO's own `AsyncInferQueue`.

`OpenVinoModel` reads an `.onnx` file or OpenVINO IR (`model.xml` with its `model.bin`
beside it) and compiles it for one device (`CPU` here; `GPU`, `NPU` or `AUTO` by
configuration) with the performance hint (THROUGHPUT / LATENCY) and, on the CPU, the
threads Ray gave the actor (`INFERENCE_NUM_THREADS`), never the whole node. OpenVINO then
picks its streams and reports `OPTIMAL_NUMBER_OF_INFER_REQUESTS`, which is what `jobs=0`
means here.

`OpenVinoQueue` is the request pool the actor drives: `openvino.AsyncInferQueue` itself
(`set_callback`, `start_async(inputs, userdata)`, `wait_all`), with the bookkeeping the
actor reads from rayinfer's own queue (busy time, counters) and each finished request
handed to the callback as an `InferRequest` (outputs copied out, latency in ms).

    model = OpenVinoModel("yolov8n.onnx", hint="throughput", threads=2)
    queue = OpenVinoQueue(model, jobs=0)           # OpenVINO's optimal request count
    queue.set_callback(lambda request, image_id: print(image_id, request.outputs[0].shape))
    for image_id, blob in blobs:
        queue.start_async({"images": blob}, image_id)
    queue.wait_all()

Precision: left alone, OpenVINO computes in bf16 on a CPU with bf16 units (AMX,
AVX512-BF16) and in f16 on a GPU, so its metrics are not the model's own. `precision="model"`
(the default) therefore asks for f32 (`INFERENCE_PRECISION_HINT`; an int8 model's quantized
layers stay int8); `bf16` and `fp16` ask for those, and are refused on a device whose
`OPTIMIZATION_CAPABILITIES` lack them (OpenVINO would quietly compute in f32 instead). The
precision the compiled model reports is checked against the one asked for, and recorded.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.devices import Plan
from rayinfer.actors.settings import ActorSettings, backend_option, backend_options
from rayinfer.actors.model import ModelError, TensorSpec, available_cpus, check_inputs
from rayinfer.actors.queue import BusyClock, InferRequest, QueueClosedError, RequestSlots

log = logging.getLogger(__name__)

SUFFIXES = (".onnx", ".xml")
#: rayinfer's precision -> OpenVINO's INFERENCE_PRECISION_HINT, and the capability it needs
HINTS = {"model": "f32", "bf16": "bf16", "fp16": "f16"}
CAPABILITIES = {"bf16": "BF16", "fp16": "FP16"}
#: devices whose plugin computes f32 when asked (an NPU computes in f16 whatever it is told)
F32_DEVICES = ("CPU", "GPU")
#: ONNX operators of dynamic quantization (activations quantized at run time, as onnxruntime's
#: quantize_dynamic writes them): OpenVINO computes these graphs its own way, and its outputs
#: differ from the model's as the ONNX specification defines them (docs/accuracy.md)
DYNAMIC_QUANTIZATION = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger")


def installed() -> str | None:
    """None when the openvino package can be imported, else why not."""
    try:
        importlib.import_module("openvino")
    except ImportError as exc:
        return f"the openvino package is not installed ({exc}); pip install 'rayinfer[openvino]'"
    return None


def precision_problem(device: str, precision: str) -> str | None:
    """None when OpenVINO's `device` computes in `precision`, else why not (one line)."""
    if precision == "model":
        return None
    import openvino as ov

    core = ov.Core()
    device = device.upper()
    try:
        capabilities = [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
        name = str(core.get_property(device, "FULL_DEVICE_NAME"))
    except Exception as exc:  # noqa: BLE001 - a device OpenVINO does not have
        return f"OpenVINO has no device {device} ({_first_line(exc)})"
    if CAPABILITIES[precision] in capabilities:
        return None
    return f"OpenVINO's {device} ({name}) has no {precision} units (its capabilities: {', '.join(capabilities)})"


def ops_computed_otherwise(path: str) -> list[str]:
    """The DYNAMIC_QUANTIZATION operators an .onnx file uses: each node's op_type is a
    protobuf string field 4 (tag 0x22, then its length), found without parsing the graph."""
    import mmap

    if Path(path).suffix.lower() != ".onnx":
        return []
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return [op for op in DYNAMIC_QUANTIZATION if data.find(b"\x22" + bytes([len(op)]) + op.encode()) >= 0]
    except (OSError, ValueError):  # unreadable or empty: opening it says why
        return []


def differs_from_model(path: str, precision: str) -> str | None:
    """Why OpenVINO's outputs for `path` at `precision` are not the model's own, or None."""
    ops = ops_computed_otherwise(path) if precision == "model" else []
    return f"OpenVINO computes the model's dynamic quantization ({', '.join(ops)}) its own way" if ops else None


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    names = sorted(port.get_names())
    return TensorSpec(names[0] if names else port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()))


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX file's metadata_props (OpenVINO keeps them under rt_info "framework")."""
    try:
        framework = model.get_rt_info()["framework"].astype(dict)
        return {str(k): v.astype(str) for k, v in framework.items()}
    except Exception:  # noqa: BLE001 - no metadata (IR from elsewhere, or none in the file)
        return {}


def model_check(path: str) -> str | None:
    """None when `path` looks like a model OpenVINO reads, else why not (naming the file)."""
    p = Path(path)
    if not p.is_file():
        return f"model file not found: {path}"
    if p.suffix.lower() not in SUFFIXES:
        return f"{path}: OpenVINO reads .onnx files and IR (.xml + .bin), not {p.suffix or 'a file without suffix'}"
    if p.suffix.lower() == ".xml" and not p.with_suffix(".bin").is_file():
        return f"{path}: OpenVINO IR needs its weights file {p.with_suffix('.bin').name} beside it"
    return None


class OpenVinoModel:
    """One compiled model. `run` is safe from several threads (one infer request each);
    `async_queue` gives OpenVINO's own request pool."""

    def __init__(self, path: str, device: str = "CPU", hint: str = "throughput", threads: int = 0,
                 precision: str = "model") -> None:
        wrong = installed() or model_check(path)
        if wrong:
            raise ModelError(wrong)
        import openvino as ov

        self.path = Path(path)
        core = ov.Core()
        model = _read(core, self.path)
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        if device.upper() == "CPU":  # threads are the CPU plugin's; other devices choose their own
            self.threads = threads or available_cpus()
            config["INFERENCE_NUM_THREADS"] = self.threads
        else:
            self.threads = 0
        wrong = precision_problem(device, precision)
        if wrong:
            raise ModelError(f"--precision {precision}: {wrong}")
        if precision != "model" or device.upper() in F32_DEVICES:
            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
        try:
            self.compiled = core.compile_model(model, device.upper(), config)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"OpenVINO cannot compile {path} for {device}: {_first_line(exc)}") from None
        #: what the compiled model computes its float layers in, as OpenVINO reports it (f32, bf16, f16)
        self.inference_precision = _property(self.compiled, "INFERENCE_PRECISION_HINT")
        asked = config.get("INFERENCE_PRECISION_HINT")
        if asked and self.inference_precision and _short(self.inference_precision) != asked:
            raise ModelError(f"--precision {precision}: OpenVINO's {device.upper()} computes {path} in "
                             f"{self.inference_precision}, not {asked}")
        self.precision = precision
        self.differs = differs_from_model(path, precision)
        self.inputs = tuple(_spec(p) for p in model.inputs)
        self.outputs = tuple(_spec(p) for p in model.outputs)
        self.metadata = _metadata(model)
        self.device_name = device.upper()  # OpenVINO's name for it
        self.device = "cpu" if self.device_name == "CPU" else device.lower()
        self.optimal_requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.streams = _property(self.compiled, "NUM_STREAMS")
        self.providers = (f"OpenVINO:{self.device_name}",)
        self.intra_op_threads = self.threads
        self._local = threading.local()

    @property
    def details(self) -> dict[str, Any]:
        """What OpenVINO chose, for run.json."""
        return {"device": self.device_name, "streams": self.streams,
                "inference_precision": _short(self.inference_precision) if self.inference_precision else None,
                "optimal_requests": self.optimal_requests,
                **({"differs_from_model": self.differs} if self.differs else {})}

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]:
        return check_inputs(self.inputs, inputs)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Synchronous inference on this thread's own infer request."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer(feed)
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]

    def async_queue(self, requests: int = 0) -> OpenVinoQueue:
        return OpenVinoQueue(self, requests)

    def __repr__(self) -> str:
        return (f"OpenVinoModel({self.path.name!r}, device={self.providers[0]}, threads={self.threads}, "
                f"streams={self.streams}, precision={self.precision}, computed in {self.inference_precision})")


class OpenVinoQueue(RequestSlots):
    """`openvino.AsyncInferQueue` over an `OpenVinoModel`, with the surface of rayinfer's
    `AsyncInferQueue`: `set_callback(fn(request, userdata))`, `start_async`, `wait_all`,
    `close`, `len(queue)`, `in_flight`, `busy_seconds` and the failure counters.

    `start_async` is serialised (OpenVINO's picks an idle request, then fills it: two
    threads at once could fill one request). A callback that raises is logged and counted,
    never let through: an exception escaping an OpenVINO callback aborts the process.
    """

    def __init__(self, model: OpenVinoModel, jobs: int = 0) -> None:
        import openvino as ov

        self.model = model
        self._queue = ov.AsyncInferQueue(model.compiled, jobs)  # jobs=0: OPTIMAL_NUMBER_OF_INFER_REQUESTS
        self._requests = [InferRequest(i) for i in range(len(self._queue))]
        self._callback: Any = None
        self._start_lock = threading.Lock()
        self._lock = threading.Condition()
        self._closed = False
        self._running = 0  # requests started and not yet called back
        self._busy = BusyClock()
        self.completed = 0
        self.failed = 0
        self.callback_errors = 0
        self._queue.set_callback(self._done)

    def set_callback(self, fn: Any) -> None:
        """`fn(request, userdata)` runs in an OpenVINO thread once per finished request."""
        self._callback = fn

    def start_async(self, inputs: Any, userdata: Any = None) -> int:
        """Start one request; block while every request is busy. Returns its id."""
        feed = self.model.prepare(inputs)
        with self._start_lock:
            if self._closed:
                raise QueueClosedError("OpenVinoQueue is closed")
            rid = self._queue.get_idle_request_id()  # blocks until one is idle; the one start_async takes
            self._enter()
            try:
                self._queue.start_async(feed, (rid, userdata))
            except BaseException:
                self._leave()  # it never started: not counted as completed
                raise
        return rid

    def wait_all(self, timeout: float | None = None) -> bool:
        """Wait until every request is idle. False if the timeout passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new requests and let running ones finish. Idempotent."""
        with self._start_lock:
            self._closed = True
        if not self.wait_all(timeout):
            log.warning("OpenVINO requests still running after %.1fs", timeout)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._running

    @property
    def busy_seconds(self) -> float:
        """Wall time with at least one request started and not yet finished."""
        return self._busy.seconds

    def _enter(self) -> None:
        self._busy.enter()
        with self._lock:
            self._running += 1

    def _leave(self) -> None:
        self._busy.leave()
        with self._lock:
            self._running -= 1
            self._lock.notify_all()

    def _finished(self, failed: bool, callback_failed: bool) -> None:
        with self._lock:
            self.completed += 1
            self.failed += failed
            self.callback_errors += callback_failed
        self._leave()

    def _done(self, ov_request: Any, userdata: Any) -> None:
        """OpenVINO's callback: nothing may escape it (it would abort the process)."""
        callback_failed = False
        request: InferRequest | None = None
        try:
            rid, user = userdata
            request = self._requests[rid]
            try:
                request.outputs = [ov_request.get_output_tensor(i).data.copy() for i in range(len(self.model.outputs))]
                request.error = None
            except BaseException as exc:  # noqa: BLE001 - surfaced through the callback
                request.outputs, request.error = None, exc
            request.latency = float(ov_request.latency)
            request.completed += 1
            callback = self._callback
            if callback is not None:
                try:
                    callback(request, user)
                except BaseException:  # noqa: BLE001
                    callback_failed = True
                    log.exception("callback for request %d raised; the queue goes on", rid)
        except BaseException:  # noqa: BLE001
            callback_failed = True
            log.exception("OpenVINO callback failed")
        finally:
            self._finished(failed=request is None or request.error is not None, callback_failed=callback_failed)


def _read(core: Any, path: Path) -> Any:
    """The model in `path`; an .onnx file through the ONNX frontend alone (`read_model`
    tries every frontend on a file that is not ONNX, and TensorFlow's writes to stderr)."""
    try:
        if path.suffix.lower() == ".onnx":
            from openvino.frontend import FrontEndManager

            frontend = FrontEndManager().load_by_framework("onnx")
            if not frontend.supported(str(path)):
                raise ModelError(f"OpenVINO cannot read {path}: not an ONNX model")
            return frontend.convert(frontend.load(str(path)))
        return core.read_model(str(path))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenVINO's message, on one line
        raise ModelError(f"OpenVINO cannot read {path}: {_first_line(exc)}") from None


def _property(compiled: Any, name: str) -> str | None:
    try:
        value = compiled.get_property(name)
        return value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # ov.Type: "bf16"
    except Exception:  # noqa: BLE001 - not every device reports every property
        return None


def _short(precision: str) -> str:
    """OpenVINO's type name as its hint spells it: "float32" -> "f32", "bfloat16" -> "bf16"."""
    return {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(precision, precision)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # OpenVINO's messages start with "Exception from src/...cpp:NN:"; the reason follows
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0][:300]


@dataclass(frozen=True)
class OpenVinoOptions:
    """The OpenVINO backend's options (`--openvino-device`)."""

    device: str = backend_option("CPU", "OpenVINO device: CPU, GPU, NPU or AUTO (GPU/NPU: with --runtime openvino)")

    def __post_init__(self) -> None:
        if not self.device or not self.device.replace(".", "").replace(":", "").replace(",", "").isalnum():
            raise ValueError(f"device: expected an OpenVINO device name such as CPU, GPU.0 or NPU, got {self.device!r}")


class OpenVinoBackend:
    """.onnx and OpenVINO IR files, run by OpenVINO."""

    name = "openvino"
    options_type = OpenVinoOptions

    @staticmethod
    def handles(model: str) -> bool:
        return not model.startswith("sim://") and Path(model).suffix.lower() in SUFFIXES

    @staticmethod
    def installed() -> str | None:
        return installed()

    @staticmethod
    def resolve(model: str) -> str:
        return str(Path(model).expanduser().resolve())

    @staticmethod
    def check(model: str) -> str | None:
        return installed() or model_check(model)

    @staticmethod
    def digest(model: str) -> dict[str, Any]:
        from rayinfer.datasets.base import file_digest, sha256_file

        p = Path(model)
        out = file_digest(p)  # an .onnx file digests as under ONNX Runtime: --resume may switch runtimes
        if p.suffix.lower() == ".xml" and p.with_suffix(".bin").is_file():
            out["weights_sha256"] = sha256_file(p.with_suffix(".bin"))
        return out

    @staticmethod
    def options(cfg: ActorSettings) -> OpenVinoOptions:
        return backend_options(cfg, "openvino", OpenVinoOptions)

    @staticmethod
    def device(cfg: ActorSettings) -> str:
        device = OpenVinoBackend.options(cfg).device
        return "cpu" if device.upper() == "CPU" else device.split(".")[0].lower()

    @staticmethod
    def resource(cfg: ActorSettings) -> str | None:
        """An NPU is a custom Ray resource its nodes declare (`ray start --resources '{"NPU": 1}'`);
        a GPU is placement's own `GPU`, the CPU needs none."""
        return "NPU" if OpenVinoBackend.device(cfg) == "npu" else None

    @staticmethod
    def devices() -> list[str]:
        """The devices OpenVINO sees here (for `rayinfer doctor`); none where it is not installed."""
        if installed():
            return []
        import openvino as ov

        return list(ov.Core().available_devices)

    @staticmethod
    def check_precision(cfg: ActorSettings) -> str | None:
        """None when the device computes the model in `cfg.precision`, else why not."""
        if cfg.precision == "model":
            return differs_from_model(cfg.model, "model")
        return installed() or precision_problem(OpenVinoBackend.options(cfg).device, cfg.precision)

    @staticmethod
    def build(cfg: ActorSettings, plan: Plan, cpus: int) -> OpenVinoModel:
        """Compiled with every CPU the actor has (OpenVINO splits them into streams itself)."""
        return OpenVinoModel(cfg.model, OpenVinoBackend.options(cfg).device, cfg.hint, threads=cpus,
                             precision=cfg.precision)

    @staticmethod
    def versions() -> dict[str, str]:
        import openvino

        return {"openvino": openvino.__version__.split("-")[0]}


BACKEND = OpenVinoBackend()
