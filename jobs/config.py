"""The job's configuration: one typed, validated object, passed down everywhere.

Built from CLI flags and/or a YAML file (`--config job.yaml`, flags win), written
into run.json, and shipped to every actor. No module-level settings exist.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rayinfer.actors.families.detection import DetectionOptions
from rayinfer.datasets.depth import DepthOptions

PREPROCESS_IN = ("auto", "request", "loader")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True)
class JobConfig:
    """Everything a run depends on. Defaults are the automatic, tuned choices."""

    task: str
    data_root: str
    model: str
    output: str
    model_family: str = "auto"
    # Ray and placement
    address: str | None = None
    actors: int = 0  # 0: one per GPU, else one per node's CPUs (cpus_per_actor)
    cpus_per_actor: float = 0.0  # 0: all CPUs of a node (CPU), or its CPUs per GPU (GPU)
    gpus_per_actor: float = 1.0  # used when the providers include a GPU one
    # runtime
    providers: tuple[str, ...] = ("cpu",)
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0  # requests in flight per actor; 0: optimal_requests()
    hint: str = "throughput"
    loader_threads: int = 0  # per actor; 0: CPUs + 1
    # where a sample is read and preprocessed: "request" (in the request's own thread, RBLN
    # parallel=1), "loader" (loader threads prepare the next inputs while the device computes,
    # parallel=2) or "auto" (request when the model runs on the CPU, loader otherwise)
    preprocess_in: str = "auto"
    # work units
    shard_size: int = 16
    shards_in_flight: int = 2  # per actor
    limit: int | None = None
    sample_ids: tuple[str, ...] | None = None
    # reliability
    resume: bool = False
    overwrite: bool = False
    max_shard_attempts: int = 3
    max_actor_restarts: int = 3
    request_timeout_s: float = 120.0
    load_timeout_s: float = 60.0  # per sample: reading + preprocessing
    actor_restart_timeout_s: float = 120.0  # how long a lost actor Ray may restart is waited for
    # bad input
    max_image_pixels: int = 100_000_000  # larger images are error rows, refused before decoding
    hash_samples: bool = False  # --resume fingerprint also hashes every sample file's content
    # a custom Ray resource, one unit per actor (e.g. "sim_device"; NPUs registered as resources)
    resource: str | None = None
    # task options
    detection: DetectionOptions = field(default_factory=DetectionOptions)
    depth: DepthOptions = field(default_factory=DepthOptions)
    # presentation
    quiet: bool = False
    progress: bool = True
    report: bool = True  # OUTPUT/report.html at the end

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("task: missing")
        for name in ("shard_size", "shards_in_flight", "max_shard_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("actors", "requests", "loader_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ConfigError("cpus_per_actor / gpus_per_actor: must be >= 0")
        if self.preprocess_in not in PREPROCESS_IN:
            raise ConfigError(f"preprocess_in: must be one of {PREPROCESS_IN}, got {self.preprocess_in!r}")
        if self.hint not in ("throughput", "latency"):
            raise ConfigError(f"hint: must be throughput or latency, got {self.hint!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        for name in ("request_timeout_s", "load_timeout_s", "actor_restart_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels: must be >= 1, got {self.max_image_pixels}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite: choose one")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        """Build from plain data (YAML, run.json), naming unknown or mistyped keys."""
        data = dict(data)
        if "jobs" in data and "requests" not in data:  # its earlier name (the run.json of older runs)
            data["requests"] = data.pop("jobs")
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
        try:
            if isinstance(data.get("detection"), dict):
                data["detection"] = _nested(DetectionOptions, data["detection"], "detection")
            if isinstance(data.get("depth"), dict):
                data["depth"] = _nested(DepthOptions, data["depth"], "depth")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key in ("providers", "sample_ids"):
            if isinstance(data.get(key), list):
                data[key] = tuple(str(v) for v in data[key])
            elif isinstance(data.get(key), str) and key == "providers":
                data[key] = tuple(p.strip() for p in data[key].split(",") if p.strip())
        for key in ("data_root", "model", "output"):
            if key in data and isinstance(data[key], Path):
                data[key] = str(data[key])
        missing = [n for n, f in known.items()
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data]
        if missing:
            raise ConfigError(f"missing required configuration: {missing}")
        _check_types(data, known)
        return cls(**data)


def _nested(kind: type, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown keys under {prefix}: {sorted(unknown)}")
    try:
        return kind(**data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from None


def _check_types(data: dict[str, Any], known: dict[str, dataclasses.Field[Any]]) -> None:
    simple = {"int": int, "float": (int, float), "str": str, "bool": bool}
    for key, value in data.items():
        t = str(known[key].type).replace(" ", "")
        base = t.split("|")[0]
        if value is None and "None" in t:
            continue
        expected = simple.get(base)
        if expected is None:
            continue
        if base in ("int", "float") and isinstance(value, bool):
            raise ConfigError(f"{key}: expected {base}, got {value!r}")
        if not isinstance(value, expected):
            raise ConfigError(f"{key}: expected {base}, got {type(value).__name__} {value!r}")


def resolve_paths(cfg: JobConfig) -> JobConfig:
    """Absolute paths, so actors on any node and the Jobs API see the same files."""
    from rayinfer.actors.backends import backend_for

    model = backend_for(cfg.model).resolve(cfg.model)
    return dataclasses.replace(
        cfg,
        data_root=str(Path(cfg.data_root).expanduser().resolve()),
        model=model,
        output=str(Path(cfg.output).expanduser().resolve()),
    )
