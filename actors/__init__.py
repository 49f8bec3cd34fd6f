"""The inference side: a model runtime with an internal request queue, and the Ray
actor that owns exactly one runtime per accelerator.

- `model`: one ONNX Runtime session (providers, threads, input checks);
- `queue`: `AsyncInferQueue`, OpenVINO's request-pool shape;
- `async_runtime`: `AsyncRuntime`, RBLN's asyncio/task shape;
- `actor`: `InferenceActor`, which glues a task adapter to a runtime.
"""

from rayinfer.actors.async_runtime import AsyncRuntime, Task
from rayinfer.actors.model import InputError, ModelError, OnnxModel, RuntimeOptions, TensorSpec
from rayinfer.actors.queue import AsyncInferQueue, Hint, InferRequest, QueueClosedError, optimal_requests

__all__ = [
    "AsyncInferQueue",
    "AsyncRuntime",
    "Hint",
    "InferRequest",
    "InputError",
    "ModelError",
    "OnnxModel",
    "QueueClosedError",
    "RuntimeOptions",
    "Task",
    "TensorSpec",
    "optimal_requests",
]
