"""Devices and request planning, in one place: how many requests to keep in flight on a
device, and how many intra-op threads each gets.

Devices are named in one vocabulary (a `Model`'s `device`): "cpu" (requests share the
node's cores), "gpu" (CUDA / TensorRT) and "sim" (the simulated accelerator); any device
other than "cpu" is an accelerator, fed by one host thread per request.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


class Hint(str, Enum):
    """Performance hint, as in OpenVINO: many requests for throughput, one for latency."""

    THROUGHPUT = "throughput"
    LATENCY = "latency"


class Plan(NamedTuple):
    """Requests in flight and intra-op threads per request."""

    requests: int
    threads_per_request: int


def optimal_requests(device: str, cpus: int, hint: Hint | str = Hint.THROUGHPUT) -> Plan:
    """The rule behind `AsyncInferQueue(jobs=0)` (OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS).

    - LATENCY: one request that may use every core.
    - THROUGHPUT on CPU: one single-threaded request per core. A small model's
      operators scale poorly across threads (thread sync per op), while independent
      requests scale almost linearly until the cores are full.
    - THROUGHPUT on an accelerator: 4 requests (two computing while two are in copy or
      host post-processing), each driven by one host thread.
    `python -m benchmarks runtime` measures 1, 2 and 4 requests against this choice.
    """
    hint = Hint(hint)
    cpus = max(1, cpus)
    if hint is Hint.LATENCY:
        return Plan(1, cpus if device == "cpu" else 1)
    if device == "cpu":
        return Plan(cpus, 1)
    return Plan(4, 1)


def plan_requests(device: str, cpus: int, hint: Hint | str = Hint.THROUGHPUT, requests: int = 0) -> Plan:
    """`optimal_requests`, or `requests` when given: on the CPU they share its cores
    (cpus // requests threads each), on an accelerator each has one host thread."""
    if requests <= 0:
        return optimal_requests(device, cpus, hint)
    return Plan(requests, max(1, max(1, cpus) // requests) if device == "cpu" else 1)
