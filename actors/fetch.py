"""A remote model file (s3://, gs://, https://) made a local one, once per node.

Runtimes open local files. The driver fetches a remote `--model` once (`pin`), which
gives its SHA-256; every actor and the runtime probe then find the file on their own node
(`fetched`), in a cache keyed by that hash:

    CACHE/models/<sha256>/<file name>          the model, written whole (renamed into place)
    CACHE/models/by-url/<hash of URL, size, mtime>   the SHA-256 a URL's version had

so a node fetches each model once whatever the number of actors on it (a lock per file),
and an object changed during a job is refused instead of running other weights on some
nodes. CACHE is `cache_dir()`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from rayinfer.actors.settings import ActorSettings
from rayinfer.datasets.base import SetupError
from rayinfer.datasets.storage import Location, is_remote, storage_error

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """rayinfer's cache on this node: `$RAYINFER_CACHE_DIR`, else `$XDG_CACHE_HOME/rayinfer`
    (default `~/.cache/rayinfer`). Models fetched here, runtime probes (backends/choice.py)."""
    if os.environ.get("RAYINFER_CACHE_DIR"):
        return Path(os.environ["RAYINFER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rayinfer"


def pin(cfg: Any) -> Any:
    """`cfg` with `model_sha256` set for a remote model (fetched here, into this node's
    cache); unchanged for a local one."""
    if not is_remote(cfg.model):
        return cfg
    _, sha = fetch(cfg.model, cfg.storage_options, cfg.model_sha256)
    return dataclasses.replace(cfg, model_sha256=sha)


def fetched(cfg: ActorSettings) -> ActorSettings:
    """`cfg` with a remote model replaced by this node's cached copy (fetched if absent)."""
    if not is_remote(cfg.model):
        return cfg
    path, _ = fetch(cfg.model, cfg.storage_options, cfg.model_sha256)
    return dataclasses.replace(cfg, model=str(path))  # type: ignore[type-var]


def fetch(url: str, options: dict[str, Any] | None = None, sha256: str | None = None) -> tuple[Path, str]:
    """(local path, SHA-256) of the model at `url`. With `sha256`, a cached copy is used
    without asking the store, and a download with another hash is refused (SetupError)."""
    source = Location(url, options)
    if source.name.lower().endswith(".xml"):
        raise SetupError(f"{url}: an OpenVINO IR is two files (.xml + .bin); fetch them and pass the local .xml")
    root = cache_dir() / "models"
    if sha256 and (root / sha256 / source.name).is_file():
        return root / sha256 / source.name, sha256
    try:
        size, mtime = source.stat_key()
    except FileNotFoundError:
        raise SetupError(f"model not found: {url}") from None
    except OSError as exc:
        raise SetupError(f"cannot read the model {url}: {storage_error(exc)}") from None
    version = hashlib.sha256(f"{url}\0{size}\0{mtime}".encode()).hexdigest()[:32]
    index = root / "by-url" / version
    root.joinpath("by-url").mkdir(parents=True, exist_ok=True)
    with (root / "by-url" / f"{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node: the other actors wait for it
        known = index.read_text().strip() if index.is_file() else None
        if known and (root / known / source.name).is_file():
            path, digest = root / known / source.name, known
        else:
            path, digest = _download(source, root, size)
            tmp = index.with_name(f".{version}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(digest + "\n")
            os.replace(tmp, index)
    if sha256 and digest != sha256:
        raise SetupError(f"{url} changed during the job: its SHA-256 is {digest}, the job started with {sha256}")
    return path, digest


def _download(source: Location, root: Path, size: int) -> tuple[Path, str]:
    log.info("fetching the model %s (%.1f MB) into %s", source, size / 1e6, root)
    tmp = root / f".part-{uuid.uuid4().hex}"
    h = hashlib.sha256()
    try:
        with source.open() as f, tmp.open("wb") as out:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        digest = h.hexdigest()
        dest = root / digest / source.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    except OSError as exc:
        raise SetupError(f"cannot fetch the model {source}: {storage_error(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest, digest
