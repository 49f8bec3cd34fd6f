"""The command-line spelling of JobConfig's fields: flag, config key, parser, help.

`rayinfer run` builds its flags from `OPTIONS` (jobs/cli.py) and `rayinfer submit` writes a
config back as the same flags (jobs/submit.py), so both read this one table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _floats3(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in csv_list(text))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (R,G,B), got {text!r}")
    return values  # type: ignore[return-value]


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


#: (flag, config key, type, help). Nested keys use "section.key".
OPTIONS: list[tuple[str, str, Callable[[str], Any] | None, str]] = [
    ("--data-root", "data_root", str, "dataset folder (COCO: val2017/ + annotations/; NYU: val/official/*.h5); "
                                      "leave out with --model for the built-in demo"),
    ("--model", "model", str, "ONNX model file (or sim://... for a simulated device)"),
    ("--output", "output", str, "output folder (default: runs/TASK, numbered if taken)"),
    ("--model-family", "model_family", str, "auto | yolov8 | yolox (detection); auto reads the output signature"),
    ("--address", "address", str, "Ray cluster to join (e.g. auto, ray://host:10001); default: start Ray here"),
    ("--actors", "actors", int, "inference actors; 0 = one per GPU, or one per node's CPUs"),
    ("--cpus-per-actor", "cpus_per_actor", float, "CPUs reserved per actor; 0 = automatic"),
    ("--gpus-per-actor", "gpus_per_actor", float, "GPUs per actor when a GPU provider is chosen"),
    ("--providers", "providers", csv_list, "execution providers in order: cpu, cuda, tensorrt"),
    ("--provider-options", "provider_options", _json_object,
     'per-provider options as JSON, e.g. \'{"cuda": {"device_id": "0"}}\''),
    ("--resource", "resource", str, "a custom Ray resource per actor (an NPU, sim_device)"),
    ("--requests", "requests", int, "requests in flight per actor; 0 = optimal for the device"),
    ("--hint", "hint", str, "throughput | latency"),
    ("--loader-threads", "loader_threads", int, "read+preprocess threads per actor; 0 = its CPUs + 1"),
    ("--preprocess-in", "preprocess_in", str, ("auto | request | loader: read+preprocess in the request's thread "
                                               "(auto on CPU) or in loader threads ahead of the device (auto otherwise)")),
    ("--shard-size", "shard_size", int, "samples per work unit (committed together)"),
    ("--shards-in-flight", "shards_in_flight", int, "outstanding shards per actor"),
    ("--limit", "limit", int, "only the first N samples"),
    ("--sample-ids", "sample_ids", csv_list, "comma-separated sample ids (COCO image ids)"),
    ("--resume", "resume", None, "continue a crashed run in --output, skipping committed shards"),
    ("--overwrite", "overwrite", None, "replace a previous run in --output"),
    ("--max-shard-attempts", "max_shard_attempts", int, "tries per shard before its samples become errors"),
    ("--max-actor-restarts", "max_actor_restarts", int, "restarts Ray may give each actor"),
    ("--request-timeout", "request_timeout_s", float, "seconds per sample before its shard is retried elsewhere"),
    ("--load-timeout", "load_timeout_s", float, "seconds to read + preprocess one sample before it is an error"),
    ("--actor-restart-timeout", "actor_restart_timeout_s", float,
     "seconds a lost actor that Ray may restart is waited for before it is retired"),
    ("--max-image-pixels", "max_image_pixels", int, "images with more pixels are errors, refused before decoding"),
    ("--hash-samples", "hash_samples", None, "the --resume fingerprint hashes every sample file's content too"),
    ("--conf-thres", "detection.conf_thres", float, "detection confidence threshold"),
    ("--iou-thres", "detection.iou_thres", float, "class-aware NMS IoU threshold"),
    ("--max-det", "detection.max_det", int, "detections kept per image"),
    ("--multi-label", "detection.multi_label", _bool, "every class above the threshold is a candidate (default: by family)"),
    ("--max-nms", "detection.max_nms", int, "candidates kept (best scores) before NMS"),
    ("--max-wh", "detection.max_wh", float, "class offset for class-aware NMS (pixels)"),
    ("--profile", "depth.profile", str, "depth preprocessing: auto (the model's declared profile) | fastdepth | resize | unet"),
    ("--mean", "depth.mean", _floats3, "depth input mean R,G,B after /255 (overrides the profile)"),
    ("--std", "depth.std", _floats3, "depth input std R,G,B after /255 (overrides the profile)"),
    ("--align", "depth.align", str, "depth alignment for relative models: none | median | lsq"),
    ("--no-eigen-crop", "depth.eigen_crop", None, "evaluate every pixel, not the Eigen crop"),
    ("--min-depth", "depth.min_depth", float, "smallest valid ground-truth depth (m)"),
    ("--max-depth", "depth.max_depth", float, "largest valid ground-truth depth (m)"),
    ("--quiet", "quiet", None, "no progress bar; only warnings and the summary"),
    ("--no-report", "report", None, "skip OUTPUT/report.html"),
    ("--no-progress", "progress", None, "no progress bar (it only shows on a terminal anyway)"),
]

#: Switches that turn a default-on option off.
NEGATIVE_SWITCHES = {"depth.eigen_crop", "report", "progress"}
