"""Runtime backends: what runs a model, one module each, behind the `Model` protocol.

Each module has a `BACKEND` object: `name`; `options_type` (its options dataclass, whose
fields become flags `--NAME-FIELD` and `runtime_options.NAME` in the config, or None);
`handles(model)` (does it claim this model reference: a suffix, a URI scheme or the file's
first bytes, never "anything not someone else's"), `installed()` (None, or why its package
is missing), `resolve` (the reference every node sees), `check` (can it be opened: None, or
why not), `digest` (what `--resume` compares), `device(cfg)` (the device the configuration
asks for: "cpu", "gpu", "npu", ...), `resource(cfg)` (the custom Ray resource an actor of
that device needs, or None: placement reserves it, `--resource` overrides), `devices()`
(what it sees on this host, for `rayinfer doctor`), optionally `batches(cfg)` (True where
that device computes a batch for much less than its samples one by one, a GPU: `--batch
auto` measures the batch there; absent: False), `check_precision(cfg)`
(None when that device computes the model in `cfg.precision`, else why not: under
`--runtime auto` such a runtime is not a candidate; named, it is refused for a reduced
precision and runs with a warning at the model's, where it computes some of the model's
operators its own way), `build(cfg, plan, cpus)`
(the `Model`) and `versions()` (for run.json).

`open_model` is the one place that picks the runtime (`--runtime`: one by name, or `auto`:
the faster of the installed ones on this model, measured; actors/backends/choice.py) and
plans requests against the device the model really got.

Adding a backend: one module with its `BACKEND`, and its line below (`tests/toy_backend.py`
is one, registered by a test).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any, NamedTuple

from rayinfer.actors.fetch import fetched
from rayinfer.actors.devices import Plan, plan_requests
from rayinfer.actors.model import Model
from rayinfer.actors.settings import ActorSettings
from rayinfer.datasets.base import SetupError

log = logging.getLogger(__name__)

REGISTRY: dict[str, str] = {
    "simulated": "rayinfer.actors.backends.simulated",  # sim://?latency_ms=..
    "onnxruntime": "rayinfer.actors.backends.onnxruntime",  # an .onnx file
    "openvino": "rayinfer.actors.backends.openvino",  # an .onnx file or OpenVINO IR (.xml + .bin)
}


def runtime_names() -> tuple[str, ...]:
    """--runtime values: auto (the faster installed one) or a backend by name."""
    return ("auto", *REGISTRY)


def backend(name: str) -> Any:
    return importlib.import_module(REGISTRY[name]).BACKEND


def register(entries: dict[str, str] | None) -> None:
    """Registry lines the driver has (a backend of the user's, or a test's): an actor or a
    probe task takes them in its own process, so every node knows the backend the job runs."""
    REGISTRY.update(entries or {})


def backends() -> list[Any]:
    """Every registered backend, in registry order."""
    return [backend(name) for name in REGISTRY]


def option_flag(b: Any, f: dataclasses.Field) -> str:
    """The flag of field `f` of backend `b`'s options: `--NAME-FIELD` unless it says otherwise."""
    return f.metadata.get("flag") or f"--{b.name}-{f.name}".replace("_", "-")


def option_key(b: Any, f: dataclasses.Field) -> str:
    """The flat key of that option: its flag's words joined by `_` (`openvino_device`,
    `providers`), as a YAML file, a keyword or an older run.json spells it at the top level."""
    return option_flag(b, f)[2:].replace("-", "_")


def option_keys() -> dict[str, tuple[str, str]]:
    """{flat key: (backend name, field)} for every backend option (`option_key`)."""
    return {option_key(b, f): (b.name, f.name)
            for b in backends() if getattr(b, "options_type", None) for f in dataclasses.fields(b.options_type)}


def resource_for(cfg: ActorSettings) -> str | None:
    """The custom Ray resource an actor's device needs, as the backend that runs the model
    says (None: none, or `--runtime auto` still has to measure between CPU runtimes)."""
    chosen = settled(candidates(cfg.model, cfg.runtime, cfg), cfg)
    return chosen.resource(cfg) if chosen else None


def candidates(model: str, runtime: str = "auto", settings: ActorSettings | None = None) -> list[Any]:
    """The backends that may run `model` under `--runtime`, installed, in registry order;
    with `settings`, only those whose device computes in `settings.precision`.

    A named runtime that is missing, cannot run this kind of model or cannot compute in the
    precision asked for is a `SetupError` naming why; under `auto`, such a runtime is simply
    not a candidate, and none left is a `SetupError` naming each one's reason.
    """
    if runtime != "auto":
        if runtime not in REGISTRY:
            raise SetupError(f"--runtime {runtime}: not a runtime (choose from {', '.join(runtime_names())})")
        chosen = backend(runtime)
        if not chosen.handles(model):
            raise SetupError(f"--runtime {runtime} does not run {model!r}")
        missing = chosen.installed()
        if missing:
            raise SetupError(f"--runtime {runtime}: {missing}")
        wrong = settings is not None and chosen.check_precision(settings)
        if wrong and settings.precision != "model":  # at "model", the driver warns (jobs/driver.check_setup)
            raise SetupError(f"--precision {settings.precision} with --runtime {runtime}: {wrong}; "
                             "leave --precision at model")
        return [chosen]
    found = [b for b in map(backend, REGISTRY) if b.handles(model)]
    installed = [b for b in found if not b.installed()]
    if not installed:
        raise SetupError(f"no installed runtime runs {model!r} (backends: {', '.join(REGISTRY)})"
                         if not found else f"{model}: {found[0].installed()}")
    if settings is None:
        return installed
    why = {b.name: b.check_precision(settings) for b in installed}
    able = [b for b in installed if not why[b.name]]
    if not able:
        raise SetupError(f"--precision {settings.precision}: no installed runtime computes in it here ("
                         + "; ".join(f"{name}: {reason}" for name, reason in why.items())
                         + "); leave --precision at model")
    return able


def backend_for(model: str, runtime: str = "auto", settings: ActorSettings | None = None) -> Any:
    """The first backend that runs `model` (at `settings.precision`, given settings): the one
    that checks, digests and describes it on the driver (the actors may pick a faster one
    under `auto`)."""
    return candidates(model, runtime, settings)[0]


def settled(found: list[Any], cfg: ActorSettings) -> Any | None:
    """The runtime among `found` that needs no measuring: the only one, or the first whose
    device the configuration makes an accelerator (a GPU asked for is never measured against
    CPU runtimes); None when `--runtime auto` must measure."""
    accelerator = [b for b in found if b.device(cfg) != "cpu"]
    return (accelerator or found)[0] if accelerator or len(found) == 1 else None


def device_for(cfg: ActorSettings) -> str:
    """The device an actor's model asks for: an accelerator if the configuration names one,
    else "cpu" (what `auto` measures between)."""
    chosen = settled(candidates(cfg.model, cfg.runtime, cfg), cfg)
    return chosen.device(cfg) if chosen else "cpu"


class Runtime(NamedTuple):
    """What an actor runs its model with, for run.json: the backend's name and version,
    and the probe's figures (img/s per runtime; None when nothing was measured)."""

    name: str
    version: str
    probe: dict[str, float] | None = None
    probe_cached: bool = False
    #: model | bf16 | fp16, as asked for (--precision)
    precision: str = "model"

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "precision": self.precision, "probe": self.probe,
                "probe_cached": self.probe_cached}


class Opened(NamedTuple):
    model: Model
    plan: Plan
    runtime: Runtime


def build(chosen: Any, cfg: ActorSettings, cpus: int) -> tuple[Model, Plan]:
    """`chosen`'s model for a job config, and the requests to keep in flight on it.

    Planned for the device the configuration asks for; if the model got another one (CUDA
    asked for, the session fell back to the CPU), planned again for that one and rebuilt,
    so requests always suit what really runs them.
    """
    wanted = chosen.device(cfg)
    plan = plan_requests(wanted, cpus, cfg.hint, cfg.requests)
    model = chosen.build(cfg, plan, cpus)
    if model.device != wanted:
        log.warning("%s: asked for %s but the model runs on %s; planning requests for %s",
                    cfg.model, wanted, model.device, model.device)
        plan = plan_requests(model.device, cpus, cfg.hint, cfg.requests)
        model = chosen.build(cfg, plan, cpus)
    if not cfg.requests and getattr(model, "optimal_requests", None):  # the device says (OpenVINO, simulated)
        plan = plan._replace(requests=1 if cfg.hint == "latency" else int(model.optimal_requests))  # type: ignore[attr-defined]
    return model, plan


def open_model(cfg: ActorSettings, cpus: int) -> Opened:
    """The model an actor runs: the runtime `--runtime` names, or under `auto` the faster
    of the installed ones, measured on this model with `cpus` (choice.py). A remote model
    is opened from this node's copy (actors/fetch.py)."""
    cfg = fetched(cfg)
    found = candidates(cfg.model, cfg.runtime, cfg)
    chosen = settled(found, cfg)
    if chosen:
        model, plan = build(chosen, cfg, cpus)
        return Opened(model, plan, Runtime(chosen.name, _version(chosen), precision=cfg.precision))
    return pick(found, cfg, cpus)


def choose_runtime(cfg: ActorSettings, cpus: int) -> Runtime:
    """The runtime `open_model` would run `cfg.model` with on `cpus`, without building it
    where nothing is measured (a runtime named, a GPU asked for, a choice cached): what the
    driver's one probe per job asks (jobs/placement.resolve_runtime)."""
    cfg = fetched(cfg)
    found = candidates(cfg.model, cfg.runtime, cfg)
    chosen = settled(found, cfg)
    if chosen:
        return Runtime(chosen.name, _version(chosen), precision=cfg.precision)
    return remembered_runtime(cfg, cpus) or pick(found, cfg, cpus).runtime


def remembered_runtime(cfg: ActorSettings, cpus: int) -> Runtime | None:
    """The runtime measured the faster before for `cfg.model` on this host's CPU with
    `cpus` (choice.py's cache; reading it costs no measuring), or None."""
    from rayinfer.actors.backends import choice

    cfg = fetched(cfg)
    found = candidates(cfg.model, cfg.runtime, cfg)
    remembered = _remembered(found, choice.cache_key(found, cfg, cpus), cfg.precision)
    return remembered[1] if remembered else None


def _remembered(found: list[Any], key: str, precision: str) -> tuple[Any, Runtime] | None:
    """The backend among `found` measured the faster before under `key` (choice.py's cache)
    and its Runtime record, or None."""
    from rayinfer.actors.backends import choice

    before = choice.cached(key)
    names = [b.name for b in found]
    if not before or before["choice"] not in names:
        return None
    chosen = found[names.index(before["choice"])]
    return chosen, Runtime(chosen.name, _version(chosen), before["probe"], True, precision)


def pick(found: list[Any], cfg: ActorSettings, cpus: int) -> Opened:
    """The faster of `found` (backends that all run `cfg.model` on the CPU), measured, or
    as measured before on this hardware. One that cannot load the model is skipped."""
    from rayinfer.actors.backends import choice

    key = choice.cache_key(found, cfg, cpus)
    remembered = _remembered(found, key, cfg.precision)
    if remembered:
        chosen, runtime = remembered
        model, plan = build(chosen, cfg, cpus)
        log.info("runtime %s for %s (measured before, img/s: %s)", chosen.name, cfg.model, runtime.probe)
        return Opened(model, plan, runtime)
    built: dict[str, tuple[Any, Model, Plan]] = {}
    for b in found:
        try:
            built[b.name] = (b, *build(b, cfg, cpus))
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot load the model is skipped
            log.warning("--runtime auto: %s cannot run %s, skipped: %s", b.name, cfg.model, exc)
    if not built:
        raise SetupError(f"no installed runtime can run {cfg.model}")
    if len(built) == 1:
        chosen, model, plan = next(iter(built.values()))
        return Opened(model, plan, Runtime(chosen.name, _version(chosen), precision=cfg.precision))
    rates = choice.measure({name: (model, plan.requests) for name, (_, model, plan) in built.items()}, cfg.hint, cpus)
    winner = max(rates, key=lambda n: rates[n])
    chosen, model, plan = built[winner]
    log.info("runtime %s for %s (measured, img/s: %s)", winner, cfg.model, rates)
    choice.remember(key, winner, rates, cpus)
    return Opened(model, plan, Runtime(winner, _version(chosen), rates, False, cfg.precision))


def _version(chosen: Any) -> str:
    versions = chosen.versions()
    return versions.get(chosen.name, next(iter(versions.values()), ""))
