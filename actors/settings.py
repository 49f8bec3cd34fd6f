"""`ActorSettings`: what the inference side reads from a job's configuration.

The job's configuration type lives above (`rayinfer.jobs.config.JobConfig`, which the
inference side never imports); this Protocol names the fields the actor and the runtime
backends read, with their types, so code here is typed against them and a field renamed
there fails `tests/test_layers.py` instead of an actor at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol


class ActorSettings(Protocol):
    """The fields of a job's configuration an `InferenceActor` and the backends read."""

    #: the model reference: a file (.onnx, OpenVINO IR .xml), a URL (s3://, gs://, https://:
    #: fetched into the node's cache, see actors/fetch.py) or a URI (sim://...)
    model: str
    #: the model's SHA-256 where the job pinned it (a remote model), and the storage options
    model_sha256: str | None
    storage_options: dict[str, Any]
    #: auto, or a runtime backend's name (actors/backends.REGISTRY)
    runtime: str
    #: each backend's own options as set, by backend name ({"openvino": {"device": "GPU"}});
    #: a backend reads its own through `backend_options`
    runtime_options: dict[str, dict[str, Any]]
    #: model | bf16 | fp16: the precision the runtime computes in (actors/model.PRECISIONS)
    precision: str
    #: requests in flight (0 = the device's optimal count) and the hint (throughput | latency)
    requests: int
    hint: str
    #: samples per request: "auto" or a number (actors/batching.py), and how long (ms) a
    #: batch waits after its oldest sample for more before it goes short
    batch: str
    batch_wait_ms: float
    #: auto | request | loader: where a sample is read and preprocessed
    preprocess_in: str
    #: read + preprocess threads (0 = CPUs + 1)
    loader_threads: int
    #: seconds per request before its shard is retried, and per read + preprocess
    request_timeout_s: float
    load_timeout_s: float


def backend_option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
                   factory: Any = dataclasses.MISSING) -> Any:
    """A field of a runtime backend's options dataclass, with its command-line help. Its flag
    is `--BACKEND-FIELD` (`--openvino-device`), or `flag` where it differs (`--providers`)."""
    metadata = {"help": help, **({"flag": flag} if flag else {})}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def backend_options(cfg: ActorSettings, name: str, kind: type) -> Any:
    """Backend `name`'s options (dataclass `kind`): its defaults, with what `cfg` sets (the
    job's configuration has checked and converted the values)."""
    return kind(**(getattr(cfg, "runtime_options", None) or {}).get(name, {}))
