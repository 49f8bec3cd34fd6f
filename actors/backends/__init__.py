"""Runtime backends: what runs a model, one module each, behind the `Model` protocol.

Each module has a `BACKEND` object: `handles(model)` (is this model reference mine?),
`resolve` (the reference every node sees), `check` (can it be opened: None, or why not),
`digest` (what `--resume` compares), `device(cfg)` (the device the configuration asks
for), `build(cfg, threads_per_request)` (the `Model`) and `versions()` (for run.json).
`open_model` is the one place that plans requests against the device a model really got.

Adding a backend (OpenVINO, say): one module with its `BACKEND`, and its line below
(the first that handles a model reference wins).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from rayinfer.actors.model import Model
from rayinfer.actors.devices import Plan, plan_requests
from rayinfer.datasets.base import SetupError

log = logging.getLogger(__name__)

REGISTRY: dict[str, str] = {
    "simulated": "rayinfer.actors.backends.simulated",  # sim://?latency_ms=..
    "onnxruntime": "rayinfer.actors.backends.onnxruntime",  # an .onnx file
}


def backend_for(model: str) -> Any:
    """The backend that runs `model` (a file or a URI)."""
    for module in REGISTRY.values():
        backend = importlib.import_module(module).BACKEND
        if backend.handles(model):
            return backend
    raise SetupError(f"no runtime backend runs {model!r} (backends: {', '.join(REGISTRY)})")


def open_model(cfg: Any, cpus: int) -> tuple[Model, Plan]:
    """The model for a job config, and the requests to keep in flight on it.

    Planned for the device the configuration asks for; if the model got another one (CUDA
    asked for, the session fell back to the CPU), planned again for that one and rebuilt,
    so requests always suit what really runs them.
    """
    backend = backend_for(cfg.model)
    wanted = backend.device(cfg)
    plan = plan_requests(wanted, cpus, cfg.hint, cfg.requests)
    model = backend.build(cfg, plan.threads_per_request)
    if model.device != wanted:
        log.warning("%s: asked for %s but the model runs on %s; planning requests for %s",
                    cfg.model, wanted, model.device, model.device)
        plan = plan_requests(model.device, cpus, cfg.hint, cfg.requests)
        model = backend.build(cfg, plan.threads_per_request)
    if not cfg.requests and getattr(model, "optimal_requests", None):  # the device says (simulated, NPU)
        plan = plan._replace(requests=1 if cfg.hint == "latency" else int(model.optimal_requests))  # type: ignore[attr-defined]
    return model, plan
