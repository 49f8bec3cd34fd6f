"""The simulated-device backend: an accelerator of known speed behind the `Model` protocol,
in two shapes: stream-shaped (an NPU, a CPU-like device: parallel single-image requests)
and GPU-shaped (one engine, batches cost little more than one image).

Stream-shaped (`engine=streams`, the default): each request takes a fixed latency during
which it holds neither the GIL nor a core (it sleeps), and at most `capacity` requests run
at once (like streams on a GPU or an NPU). Requests beyond that wait in the device's own
queue and start the moment a stream frees, without the host's help, as a GPU's queued
kernels or an NPU's command queue do. The device reports `optimal_requests = 2 x capacity`: one request computing
per stream and one queued behind it, so a stream never idles while the host notices a
completion and runs its callback. Used by the benchmarks (where the async queue
matters) and by the fault tests (`hang`).

GPU-shaped (`engine=gpu`): `capacity` engines (default 1), each running one request at a
time; a request of B samples takes `fixed_ms + per_item_ms x B` (a kernel launch and the
weights' pass, then each image's share), so its rate grows with B towards
`capacity / per_item_ms`. Its batch axis is dynamic (`batch=N` fixes it at N), it reports
`batches = True` (so `--batch auto` measures it) and `rate(B)` is its declared rate at B.
The same queueing as the streams: `optimal_requests = 2 x capacity`.

URI form, usable as `--model`:
    sim://?latency_ms=20&capacity=4&input=1x3x640x640&output=1x84x8400&hang=0
    sim://?engine=gpu&fixed_ms=4&per_item_ms=0.25&input=1x3x640x640&output=1x84x8400
`output_file=PATH` (a .npy) is returned in place of zeros, its shape the output's: a real
model's output for one image, so the host decodes and filters as many candidates as it
would for real (the accel benchmark). `hang=1` makes every request block forever;
`hang_file=PATH` makes the one request
that claims (deletes) that file block forever. A node whose environment sets
`RAYINFER_SIM_SLOWDOWN=3` has devices 3x slower (a straggling node in the elastic tests
and benchmark).
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np

from rayinfer.actors.settings import ActorSettings
from rayinfer.actors.model import TensorSpec, check_inputs


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().split("x"))


ENGINES = ("streams", "gpu")


class SimulatedModel:
    """A device of known speed (stream- or GPU-shaped); outputs a constant tensor per sample."""

    device = "sim"
    intra_op_threads = 1
    providers = ("SimulatedDevice",)

    def __init__(self, latency_ms: float = 20.0, capacity: int | None = None,
                 input_shape: tuple[int, ...] = (1, 3, 640, 640), output_shape: tuple[int, ...] = (1, 84, 8400),
                 input_name: str = "images", output_name: str = "output0", hang: bool = False,
                 hang_file: str | None = None, output: np.ndarray | None = None, engine: str = "streams",
                 fixed_ms: float = 4.0, per_item_ms: float = 0.25, batch: int | None = None) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        gpu = engine == "gpu"
        capacity = capacity if capacity is not None else (1 if gpu else 4)
        if capacity < 1 or latency_ms < 0 or fixed_ms < 0 or per_item_ms < 0:
            raise ValueError("capacity must be >= 1 and latency_ms, fixed_ms, per_item_ms >= 0")
        if batch is not None and (batch < 1 or not gpu):
            raise ValueError(f"batch={batch}: a batch axis of 1 or more, for engine=gpu only")
        self.engine = engine
        #: whether a batch costs less per sample than single requests (what --batch auto measures)
        self.batches = gpu
        self.latency_s = latency_ms / 1000.0
        self.fixed_s, self.per_item_s = fixed_ms / 1000.0, per_item_ms / 1000.0
        self.capacity = capacity
        self.optimal_requests = 2 * capacity
        #: samples per second with every stream busy, single-sample requests: what the device
        #: takes at most (a GPU-shaped one: `rate(batch)` at the batch it is fed)
        self.device_rate = self.rate(1)
        if output is not None:
            output_shape = output.shape
        if gpu:  # the leading axis is the batch: dynamic unless fixed by `batch`
            input_shape, output_shape = (batch, *input_shape[1:]), (batch, *output_shape[1:])
        self.inputs = (TensorSpec(input_name, tuple(input_shape), np.dtype(np.float32)),)
        self.outputs = (TensorSpec(output_name, tuple(output_shape), np.dtype(np.float32)),)
        self.metadata: dict[str, str] = {}
        one = (1, *output_shape[1:]) if gpu else output_shape  # one sample's output
        self._output = np.zeros(one, np.float32) if output is None else np.asarray(output, np.float32)
        self._output.setflags(write=False)
        self._lock = threading.Lock()
        self._free_at = [0.0] * capacity  # per stream: when it finishes its queued work (a heap)
        self._hang = hang
        self._hang_file = hang_file
        self._never = threading.Event()

    def rate(self, batch: int = 1) -> float | None:
        """Samples per second with every stream busy and requests of `batch` samples."""
        seconds = self.seconds(batch)
        return self.capacity * batch / seconds if seconds > 0 else None

    def seconds(self, batch: int) -> float:
        """How long one request of `batch` samples holds its stream."""
        return self.fixed_s + self.per_item_s * batch if self.batches else self.latency_s

    @classmethod
    def from_uri(cls, uri: str) -> SimulatedModel:
        q = {k: v[-1] for k, v in parse_qs(urlparse(uri).query).items()}
        kwargs: dict[str, Any] = {}
        slowdown = float(os.environ.get("RAYINFER_SIM_SLOWDOWN") or 1.0)
        kwargs["latency_ms"] = float(q.get("latency_ms", 20.0)) * slowdown
        kwargs["engine"] = q.get("engine", "streams")
        kwargs["fixed_ms"] = float(q.get("fixed_ms", 4.0)) * slowdown
        kwargs["per_item_ms"] = float(q.get("per_item_ms", 0.25)) * slowdown
        if "batch" in q:
            kwargs["batch"] = int(q["batch"])
        if "capacity" in q:
            kwargs["capacity"] = int(q["capacity"])
        if "input" in q:
            kwargs["input_shape"] = _shape(q["input"])
        if "output" in q:
            kwargs["output_shape"] = _shape(q["output"])
        if "input_name" in q:
            kwargs["input_name"] = q["input_name"]
        if "output_name" in q:
            kwargs["output_name"] = q["output_name"]
        kwargs["hang"] = q.get("hang", "0") in ("1", "true")
        kwargs["hang_file"] = q.get("hang_file")
        if q.get("output_file"):
            try:
                kwargs["output"] = np.load(q["output_file"], allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"output_file {q['output_file']}: {exc}") from None
        return cls(**kwargs)

    def prepare(self, inputs: Any) -> dict[str, np.ndarray]:
        return check_inputs(self.inputs, inputs)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Queue on the stream that frees first; return when the request has run on it."""
        n = len(next(iter(feed.values()))) if self.batches else 1
        with self._lock:
            free_at = heapq.heappop(self._free_at)
            hang = self._hang or self._claim_hang()
            done_at = math.inf if hang else max(time.monotonic(), free_at) + self.seconds(n)
            heapq.heappush(self._free_at, done_at)  # a hung request holds its stream for good
        if math.isinf(done_at):  # hung, or queued behind a hung request
            self._never.wait()
        time.sleep(max(0.0, done_at - time.monotonic()))
        return [np.broadcast_to(self._output, (n, *self._output.shape[1:])) if self.batches else self._output]

    def _claim_hang(self) -> bool:
        if not self._hang_file:
            return False
        try:
            os.unlink(self._hang_file)
            return True
        except FileNotFoundError:
            return False

    def __repr__(self) -> str:
        if self.batches:
            return (f"SimulatedModel(engine=gpu, fixed={self.fixed_s * 1000:g}ms, "
                    f"per_item={self.per_item_s * 1000:g}ms, capacity={self.capacity})")
        return f"SimulatedModel(latency={self.latency_s * 1000:.0f}ms, capacity={self.capacity})"


class SimulatedBackend:
    """Models named by a `sim://` URI."""

    name = "simulated"
    options_type = None  # its settings are the URI's query

    @staticmethod
    def handles(model: str) -> bool:
        return model.startswith("sim://")

    @staticmethod
    def resolve(model: str) -> str:
        return model

    @staticmethod
    def check(model: str) -> str | None:
        try:
            SimulatedModel.from_uri(model)
        except ValueError as exc:
            return f"{model}: {exc}"
        return None

    @staticmethod
    def digest(model: str) -> dict[str, Any]:
        return {"uri": model}

    @staticmethod
    def device(cfg: ActorSettings) -> str:
        return SimulatedModel.device

    @staticmethod
    def batches(cfg: ActorSettings) -> bool:
        """A GPU-shaped device (`engine=gpu`) batches; a stream-shaped one does not."""
        try:
            return SimulatedModel.from_uri(cfg.model).batches
        except ValueError:
            return False

    @staticmethod
    def resource(cfg: ActorSettings) -> str | None:
        """None: a simulated device needs no resource of its own; benches and tests that give
        their nodes one (`sim_device`) name it with --resource."""
        return None

    @staticmethod
    def devices() -> list[str]:
        return ["sim://"]

    @staticmethod
    def installed() -> str | None:
        return None

    @staticmethod
    def check_precision(cfg: ActorSettings) -> str | None:
        """The simulated device computes nothing, so it runs at any precision alike."""
        return None

    @staticmethod
    def build(cfg: ActorSettings, plan: Any, cpus: int) -> SimulatedModel:
        return SimulatedModel.from_uri(cfg.model)

    @staticmethod
    def versions() -> dict[str, str]:
        return {}


BACKEND = SimulatedBackend()
