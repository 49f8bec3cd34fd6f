"""`ActorSettings`: what the inference side reads from a job's configuration.

The job's configuration type lives above (`rayinfer.jobs.config.JobConfig`, which the
inference side never imports); this Protocol names the fields the actor and the runtime
backends read, with their types, so code here is typed against them and a field renamed
there fails `tests/test_layers.py` instead of an actor at run time.
"""

from __future__ import annotations

from typing import Any, Protocol


class ActorSettings(Protocol):
    """The fields of a job's configuration an `InferenceActor` and the backends read."""

    #: the model reference: a file (.onnx, OpenVINO IR .xml), a URL (s3://, gs://, https://:
    #: fetched into the node's cache, see actors/fetch.py) or a URI (sim://...)
    model: str
    #: the model's SHA-256 where the job pinned it (a remote model), and the storage options
    model_sha256: str | None
    storage_options: dict[str, Any]
    #: auto | onnxruntime | openvino
    runtime: str
    #: ONNX Runtime execution providers in order (cpu, cuda, tensorrt) and their options
    providers: tuple[str, ...]
    provider_options: dict[str, dict[str, Any]]
    #: model | bf16 | fp16: the precision the runtime computes in (actors/model.PRECISIONS)
    precision: str
    #: OpenVINO's device (CPU, GPU, NPU, AUTO)
    openvino_device: str
    #: requests in flight (0 = the device's optimal count) and the hint (throughput | latency)
    requests: int
    hint: str
    #: auto | request | loader: where a sample is read and preprocessed
    preprocess_in: str
    #: read + preprocess threads (0 = CPUs + 1)
    loader_threads: int
    #: seconds per request before its shard is retried, and per read + preprocess
    request_timeout_s: float
    load_timeout_s: float
