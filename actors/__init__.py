"""The inference side: a model runtime with an internal request queue, and the Ray
actor that owns exactly one runtime per accelerator.

- `model`: the `Model` protocol every runtime backend implements;
- `backends/`: the runtime backends, one module each (ONNX Runtime, the simulated device);
- `devices`: the device vocabulary and request planning (`optimal_requests`);
- `queue`: `AsyncInferQueue`, OpenVINO's request-pool shape;
- `async_runtime`: `AsyncRuntime`, RBLN's asyncio/task shape;
- `families/`: model families, one module each (pre/post-processing around the runtime);
- `actor`: `InferenceActor`, which glues a model family's family to a runtime.
"""

from rayinfer.actors.async_runtime import AsyncResult, AsyncRuntime
from rayinfer.actors.backends.onnxruntime import OnnxModel, RuntimeOptions
from rayinfer.actors.devices import Hint, optimal_requests
from rayinfer.actors.model import InputError, ModelError, TensorSpec
from rayinfer.actors.queue import AsyncInferQueue, InferRequest, QueueClosedError

__all__ = [
    "AsyncInferQueue",
    "AsyncResult",
    "AsyncRuntime",
    "Hint",
    "InferRequest",
    "InputError",
    "ModelError",
    "OnnxModel",
    "QueueClosedError",
    "RuntimeOptions",
    "TensorSpec",
    "optimal_requests",
]
