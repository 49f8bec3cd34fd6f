"""The job's configuration: one typed, validated object, passed down everywhere.

Built from CLI flags and/or a YAML file (`--config job.yaml`, flags win), written
into run.json, and shipped to every actor. No module-level settings exist.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rayinfer.actors.backends import backend, option_keys, runtime_names
from rayinfer.actors.batching import parse_batch
from rayinfer.actors.families import family_names
from rayinfer.actors.model import PRECISIONS
from rayinfer.actors.settings import backend_options
from rayinfer.datasets.cocoeval import ENGINES
from rayinfer.datasets.storage import Location, check_options, check_url, is_remote

PREPROCESS_IN = ("auto", "request", "loader")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           factory: Any = dataclasses.MISSING, choices: tuple[str, ...] | None = None, eval: bool = False) -> Any:
    """A JobConfig field with its command-line help (and its flag, where it is not
    `--field-name`, or `--no-field-name` for a switch that is on by default; its `choices`,
    where a registry names them; `eval`: `rayinfer eval` takes it too)."""
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"choices": choices} if choices else {}),
                **({"eval": True} if eval else {})}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class JobConfig:
    """Everything a run depends on. Defaults are the automatic, tuned choices.

    Each field carries its command-line help; `rayinfer run` and `submit` build their flags
    from the fields and their types (jobs/options.py), so a field added here is a flag
    without another table to edit. The task's own options are not fields here: each task
    declares its options dataclass (`Task.options_type`), `options` holds the values set,
    and `rayinfer run TASK` has a flag for each of that task's fields.
    """

    task: str = field(metadata={"positional": True})
    data_root: str = option(help="dataset folder or URL (s3://, gs://, https://) in the dataset's layout (COCO: "
                                 "val2017/ + annotations/; NYU: val/official/*.h5); leave out with --model for "
                                 "the built-in demo")
    model: str = option(help="ONNX model file or URL (s3://, gs://, https://: fetched once per node), "
                             "or sim://... for a simulated device")
    output: str = option(help="output folder (default: runs/TASK, numbered if taken)")
    storage_options: dict[str, Any] = option(
        help="options of the s3:// / gs:// file system, as key=value,... or JSON, e.g. "
             "endpoint_override=http://127.0.0.1:9000 (AWS_ENDPOINT_URL works too); credentials come from the "
             "environment, a profile or an instance role, never from here", factory=dict)
    model_sha256: str | None = option(None, "the model file's SHA-256: other bytes are refused (set by the job for "
                                            "a remote --model, so every node runs the same file)")
    model_family: str = option("auto", "the detection family; auto takes the one family whose output signature "
                                       "(and metadata) the model has", choices=("auto", *family_names()))
    # Ray and placement
    address: str | None = option(None, "Ray cluster to join (e.g. auto, ray://host:10001); default: start Ray here")
    actors: int = option(0, "inference actors; 0 = one per GPU, or one per node's CPUs (on a cluster the job "
                            "joined: as many as it gives, growing as nodes join)")
    min_actors: int = option(0, "on a cluster the job joined: actors asked for at start, even where no node is "
                                "up yet (an autoscaler brings nodes up for them); 0 = what fits now, at least 1")
    max_actors: int = option(0, "on a cluster the job joined: most actors it grows to; 0 = no limit")
    actor_wait_s: float = option(600.0, "seconds to wait for the first actor (an autoscaler starting a node) "
                                        "before the job stops with what it asked for and what the cluster offers",
                                 flag="--actor-wait")
    cpus_per_actor: float = option(0.0, "CPUs reserved per actor; 0 = automatic (all of a node's, or its CPUs per GPU)")
    gpus_per_actor: float = option(1.0, "GPUs per actor when a GPU provider is chosen")
    # runtime
    runtime: str = option("auto", "auto, or a runtime backend by name: auto measures the installed runtimes that "
                                  "claim the model for a few seconds (cached) and takes the faster")
    # each runtime backend's own options, as set, by backend name ({"openvino": {"device": "GPU"}});
    # each is a flag of its own (`--openvino-device`), generated from the backend's dataclass
    runtime_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"runtime_options": True})
    requests: int = option(0, "requests in flight per actor; 0 = optimal for the device")
    batch: str = option("auto", "samples per request: auto (1 on CPUs and NPUs, where parallel single-sample "
                                "requests win; on a GPU the smallest batch whose rate measured is within 0.95 of the best) "
                                "or N (the model's batch axis must take it)")
    batch_wait_ms: float = option(5.0, "ms a batch waits after its oldest sample for more before it goes short",
                                  flag="--batch-wait")
    hint: str = option("throughput", "throughput | latency")
    precision: str = option("model", "model | bf16 | fp16: model computes at the model's own precision (its metrics "
                                     "are the model's); bf16 / fp16 compute in reduced precision where the device "
                                     "has the units (faster; metrics can differ: rayinfer bench shows by how much)")
    loader_threads: int = option(0, "read+preprocess threads per actor; 0 = its CPUs + 1")
    # "request": in the request's own thread (RBLN parallel=1); "loader": loader threads
    # prepare the next inputs while the device computes (parallel=2)
    preprocess_in: str = option("auto", "auto | request | loader: read+preprocess in the request's thread "
                                        "(auto on CPU) or in loader threads ahead of the device (auto otherwise)")
    # work units
    shard_size: int = option(0, "samples per work unit (committed together); 0 = 16, or two of the largest "
                                "batch a request may carry where that is more")
    shards_in_flight: int = option(0, "outstanding shards per actor; 0 = 2, or 3 where the data root is remote "
                                      "(a shard's fetches start the moment it arrives, ahead of the device)")
    limit: int | None = option(None, "only the first N samples")
    sample_ids: tuple[str, ...] | None = option(None, "comma-separated sample ids (COCO image ids)")
    # reliability
    resume: bool = option(False, "continue a crashed run in --output, skipping committed shards")
    overwrite: bool = option(False, "replace a previous run in --output")
    max_shard_attempts: int = option(3, "tries per shard before its samples become errors")
    max_actor_restarts: int = option(3, "restarts Ray may give each actor")
    request_timeout_s: float = option(120.0, "seconds per sample before its shard is retried elsewhere",
                                      flag="--request-timeout")
    load_timeout_s: float = option(60.0, "seconds to read + preprocess one sample before it is an error",
                                   flag="--load-timeout")
    actor_restart_timeout_s: float = option(
        120.0, "seconds a lost actor that Ray may restart is waited for before it is retired",
        flag="--actor-restart-timeout")
    speculation: bool = option(True, "no speculative copies of straggling shards")
    speculation_factor: float = option(1.5, "with the queue empty, a shard running this many times the median "
                                            "shard time gets a copy on an idle actor; the first result commits")
    # bad input
    max_image_pixels: int = option(100_000_000, "images with more pixels are errors, refused before decoding")
    hash_samples: bool = option(False, "the --resume fingerprint hashes every sample file's content too")
    resource: str | None = option(None, "a custom Ray resource per actor (default: the one the runtime's device "
                                        "needs, e.g. NPU for --openvino-device NPU; sim_device for simulated devices)")
    # the task's options, as set (YAML `options: {conf_thres: 0.1}`, or each as its flag
    # `--conf-thres 0.1`); `Task.options(cfg)` checks them against the task's dataclass and
    # fills in its defaults
    options: dict[str, Any] = field(default_factory=dict, metadata={"task_options": True})
    # evaluation
    coco_engine: str = option(ENGINES[0], "how COCO mAP matches detections to objects: numpy (all of a batch's "
                                          "images at once) or pycocotools (the reference, its own code; slower); "
                                          "the same numbers", choices=ENGINES, eval=True)
    # presentation
    quiet: bool = option(False, "no progress bar; only warnings and the summary")
    progress: bool = option(True, "no progress bar on a terminal, no progress lines in logs")
    progress_interval_s: float = option(10.0, "seconds between progress lines where no bar can show "
                                              "(logs, pipes, CI)", flag="--progress-interval")
    report: bool = option(True, "skip OUTPUT/report.html")

    def __post_init__(self) -> None:
        if not self.task:
            raise ConfigError("task: missing")
        if dataclasses.is_dataclass(self.options):  # a task's options object: kept as plain data
            object.__setattr__(self, "options", dataclasses.asdict(self.options))
        if not isinstance(self.options, dict):
            raise ConfigError(f"options: expected a mapping of the task's options, got {self.options!r}")
        if self.max_shard_attempts < 1:
            raise ConfigError(f"max_shard_attempts: must be >= 1, got {self.max_shard_attempts}")
        for name in ("shard_size", "actors", "min_actors", "max_actors", "requests", "loader_threads", "shards_in_flight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.max_actors and self.min_actors > self.max_actors:
            raise ConfigError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        if self.actors and (self.min_actors or self.max_actors):
            raise ConfigError("actors: a fixed count, or min_actors / max_actors for a range, not both")
        if self.speculation_factor <= 1:
            raise ConfigError(f"speculation_factor: must be > 1, got {self.speculation_factor}")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            raise ConfigError("cpus_per_actor / gpus_per_actor: must be >= 0")
        try:
            object.__setattr__(self, "batch", str(self.batch))
            asked = parse_batch(self.batch)
        except ValueError:
            raise ConfigError(f"batch: must be auto or a number >= 1, got {self.batch!r}") from None
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms: must be >= 0, got {self.batch_wait_ms}")
        if asked and asked > 1 and self.preprocess_in == "request":
            raise ConfigError(f"batch: {asked} gathers samples prepared in loader threads; preprocess_in request "
                              "prepares each in its own request (leave it at auto, or set loader)")
        if self.preprocess_in not in PREPROCESS_IN:
            raise ConfigError(f"preprocess_in: must be one of {PREPROCESS_IN}, got {self.preprocess_in!r}")
        if self.runtime not in runtime_names():
            raise ConfigError(f"runtime: must be one of {', '.join(runtime_names())}, got {self.runtime!r}")
        object.__setattr__(self, "runtime_options", checked_runtime_options(self.runtime_options))
        if self.model_family not in ("auto", *family_names()):
            raise ConfigError(f"model_family: must be auto or one of {', '.join(family_names())}, "
                              f"got {self.model_family!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.hint not in ("throughput", "latency"):
            raise ConfigError(f"hint: must be throughput or latency, got {self.hint!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit: must be >= 1, got {self.limit}")
        for name in ("request_timeout_s", "load_timeout_s", "actor_restart_timeout_s", "progress_interval_s",
                     "actor_wait_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels: must be >= 1, got {self.max_image_pixels}")
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite: choose one")
        try:
            check_options(self.storage_options)
            check_url(self.data_root)
            check_url(self.model)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def shard_samples(self) -> int:
        """Samples per shard: as set, else 16, or two of the largest batch a request may carry
        (`batch_cap`) where that is more, so an actor's shards in flight keep its requests'
        batches full (two shards of 16 never fill a batch of 64)."""
        from rayinfer.actors.batching import batch_cap

        return self.shard_size or max(16, 2 * batch_cap(self))

    @property
    def in_flight(self) -> int:
        """Shards outstanding per actor: as set, else 2 (one running, one waiting), or 3 for a
        remote data root. The samples of a shard are fetched when it reaches its actor; with two,
        a far store's round trip (50 ms in the storage bench) at each shard's start left the
        device waiting: 4 ms per sample, 0.5 with three."""
        return self.shards_in_flight or (3 if is_remote(self.data_root) else 2)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobConfig:
        """Build from plain data (YAML, run.json), naming unknown or mistyped keys."""
        data = dict(data)
        if "jobs" in data and "requests" not in data:  # its earlier name (the run.json of older runs)
            data["requests"] = data.pop("jobs")
        if type(data.get("batch")) is int:  # `batch: 8` in YAML: a size, as the flag's text is
            data["batch"] = str(data["batch"])
        if "openvino_precision" in data and "precision" not in data:  # older runs: OpenVINO's own names
            old = data.pop("openvino_precision")
            data["precision"] = {"bf16": "bf16", "f16": "fp16"}.get(old, "model")
        # a backend's option at the top level (`openvino_device: GPU`, `providers: [cuda]`): how a
        # flag, a YAML file, a keyword and the run.json of older runs spell it
        own = {f.name for f in fields(cls)}
        for key, (name, option_name) in option_keys().items():
            if key in data and key not in own:
                section = dict((data.get("runtime_options") or {}).get(name, {}))
                section[option_name] = data.pop(key)
                data["runtime_options"] = {**(data.get("runtime_options") or {}), name: section}
        return from_data(cls, data, "")

    def runtime_option(self, key: str) -> Any:
        """A backend option by its flat key (`openvino_device`): as set, else its default."""
        name, option_name = option_keys()[key]
        return getattr(backend_options(self, name, backend(name).options_type), option_name)


def checked_runtime_options(given: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`runtime_options` with each backend's values checked and converted by its options
    dataclass (a list to a tuple, "a,b" to a tuple of strings); errors name the key."""
    if not isinstance(given, dict):
        raise ConfigError(f"runtime_options: expected a mapping by runtime backend, got {given!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, values in given.items():
        kind = backend(name).options_type if name in runtime_names()[1:] else None
        if kind is None:
            takes = [b for b in runtime_names()[1:] if backend(b).options_type]
            raise ConfigError(f"runtime_options.{name}: not a runtime backend with options (one of {', '.join(takes)})")
        checked = from_data(kind, values, f"runtime_options.{name}.")
        out[name] = {k: getattr(checked, k) for k in values}
    return out


def from_data(kind: type, data: Any, prefix: str) -> Any:
    """A config dataclass from plain data, each value checked (and converted: a list to a
    tuple, "a,b" to a tuple of strings, a section's mapping to its dataclass) against its
    field's type; errors name the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'configuration'}: expected a mapping, got {data!r}")
    known = {f.name: f for f in fields(kind)}
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"unknown keys under {prefix.rstrip('.')}: {sorted(unknown)}" if prefix
                          else f"unknown configuration keys: {sorted(unknown)}")
    missing = [n for n, f in known.items()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and n not in data]
    if missing:
        raise ConfigError(f"missing required configuration: {[prefix + n for n in missing]}")
    hints = typing.get_type_hints(kind)
    values = {name: _value(prefix + name, value, hints[name]) for name, value in data.items()}
    try:
        return kind(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.')}: {exc}" if prefix else str(exc)) from None


def optional_of(hint: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, True) for an optional annotation, else (hint, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1 and len(inner) < len(typing.get_args(hint)):
            return inner[0], True
    return hint, False


def _value(key: str, value: Any, hint: Any) -> Any:
    """`value` checked against the type `hint` (the resolved annotation)."""
    hint, optional = optional_of(hint)
    if value is None and optional:
        return None
    args = typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_data(hint, value, key + ".")
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        if args and args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {list(value)}")
        return tuple(_value(key, v, item) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if hint is Any:
        return value
    if hint is str and isinstance(value, Path):
        return str(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def resolve_paths(cfg: JobConfig) -> JobConfig:
    """Absolute paths, so actors on any node and the Jobs API see the same files (URLs stay
    as they are)."""
    from rayinfer.actors.backends import backend_for

    model = cfg.model if is_remote(cfg.model) else backend_for(cfg.model, cfg.runtime).resolve(cfg.model)
    return dataclasses.replace(cfg, data_root=Location(cfg.data_root).resolved(), model=model,
                               output=Location(cfg.output).resolved())
