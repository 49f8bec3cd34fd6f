"""The output directory: committed shards, errors, metrics and run summary.

Layout:
    OUTPUT/manifest.json                    what this run is (fingerprint) and every file it writes
    OUTPUT/predictions/shard-NNNNN.parquet  one file per work unit; present = committed
    OUTPUT/errors/shard-NNNNN.parquet       that shard's per-sample failures (may be empty)
    OUTPUT/errors.parquet                   all failures, gathered at the end
    OUTPUT/metrics.json, run.json, ...      written at the end

Every file is written to a temporary name and renamed, so a crash leaves either the
whole file or nothing. A shard's errors are committed before its predictions, so
"predictions file present" implies the errors are there too.

One job writes a run at a time: it holds the output's lock (jobs/lock.py, `.rayinfer.lock`)
from before `prepare` until it ends.

Nothing a user wrote is touched:
- the manifest is written only when work starts (after Ray and the actors are up), so a
  run that fails during setup leaves the folder as it was;
- the manifest names every file the run writes before it is written (shards by their
  count and name pattern), and `--overwrite` removes exactly those, then the folders it
  created if they are empty;
- a folder that holds anything but no manifest is refused, with or without `--overwrite`.

Resume skips committed shards, except those with transient errors (a lost actor, a
timeout), which run again; it refuses when the manifest's fingerprint differs, naming
the keys that changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rayinfer.datasets.base import ERROR_SCHEMA, SetupError
from rayinfer.datasets.storage import Location, is_remote, storage_error
from rayinfer.jobs.lock import LOCK_NAME

MANIFEST = "manifest.json"
SHARD_DIRS = ("predictions", "errors")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _replace_atomically(path: Path, write: Any) -> None:
    """`write(tmp)` then rename onto `path`; the temporary file never outlives a failure."""
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    _replace_atomically(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    _replace_atomically(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: fingerprints compared key by key."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _written(path: Path, write: Any, content: Any) -> None:
    """`write(path, content)`, a failure to write (full disk, permission) as one OutputError line."""
    try:
        write(path, content)
    except OSError as exc:
        raise writing(path, exc) from None


class OutputError(SetupError):
    """The output folder cannot be written (permission, full disk): one line, exit 2."""


def writing(path: Path, exc: OSError) -> OutputError:
    hint = "; free some space and rerun with --resume" if exc.errno == errno.ENOSPC else ""
    return OutputError(f"cannot write {path}: {exc.strerror or exc}{hint}")


class RunOutput:
    """One run's output directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.predictions_dir = self.root / "predictions"
        self.errors_dir = self.root / "errors"
        self.manifest_path = self.root / MANIFEST
        self._manifest: dict[str, Any] = {}
        self._previous: dict[str, Any] | None = None  # the manifest found here, if any
        self._replace = False  # --overwrite of a previous run: remove what it recorded at start()
        self._rerun: set[int] = set()

    # -- start -----------------------------------------------------------------------
    def prepare(self, fingerprint: dict[str, Any], resume: bool = False, overwrite: bool = False) -> set[int]:
        """Check the folder (writes nothing); return the shards already committed (resume only).

        Refuses to mix runs: a folder that holds another run needs `--overwrite`, and
        `--resume` needs the same fingerprint.
        """
        root = self.root
        if root.exists() and not root.is_dir():
            raise SetupError(f"output {root} exists and is not a folder")
        for name in SHARD_DIRS:
            if (root / name).exists() and not (root / name).is_dir():
                raise SetupError(f"output {root / name} exists and is not a folder; choose another --output")
        self._manifest = {"tool": "rayinfer", "fingerprint": fingerprint, "shards": 0, "files": []}
        if root.is_dir() and not self.manifest_path.exists() and any(p.name != LOCK_NAME for p in root.iterdir()):
            raise SetupError(f"output folder {root} is not empty and holds no rayinfer run "
                             f"({MANIFEST} missing); nothing there was touched: choose another --output")
        self._check_writable()
        if not self.manifest_path.exists():
            return set()
        try:
            previous = json.loads(self.manifest_path.read_text())
            old_fingerprint = previous["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SetupError(f"{self.manifest_path} is unreadable; cannot tell what this folder holds: "
                             "choose another --output") from None
        self._previous = previous
        if overwrite:
            self._replace = True
            return set()
        if not resume:
            raise SetupError(
                f"output directory {root} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --output"
            )
        old, new = flatten(old_fingerprint), flatten(fingerprint)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            details = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in changed[:6])
            more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
            raise SetupError(f"cannot resume {root}: the configuration changed ({details}{more})")
        self._manifest["files"] = list(previous.get("files", []))
        committed = self.committed_shards()
        self._rerun = self.shards_with_transient_errors() & committed
        return committed - self._rerun

    def _check_writable(self) -> None:
        folder = self.root
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {folder}: permission denied")

    def start(self, shards: int) -> None:
        """Right before the first commit: remove what a previous run recorded (overwrite),
        un-commit the shards that run again (resume), create the folders, write the manifest."""
        try:
            if self._replace and self._previous is not None:
                self._remove_recorded(self._previous)
            for shard in sorted(self._rerun):
                (self.predictions_dir / shard_name(shard)).unlink(missing_ok=True)
                self._delete(f"predictions/{shard_name(shard)}")
            self.root.mkdir(parents=True, exist_ok=True)
            for name in SHARD_DIRS:
                (self.root / name).mkdir(exist_ok=True)
            self._manifest["shards"] = shards
            self._write_manifest()
        except OSError as exc:
            raise writing(Path(exc.filename or self.root), exc) from None

    def _remove_recorded(self, previous: dict[str, Any]) -> None:
        """Remove exactly the files a previous run's manifest names, then its empty folders."""
        present = [f"{folder}/{p.name}" for folder in SHARD_DIRS if (self.root / folder).is_dir()
                   for p in (self.root / folder).glob("shard-[0-9][0-9][0-9][0-9][0-9].parquet")]
        for name in recorded_names(previous, present):
            path = self.root / name
            if path.is_file() and self.root in path.resolve().parents:
                path.unlink()
        for folder in ("report", *SHARD_DIRS):
            try:
                (self.root / folder).rmdir()
            except OSError:
                pass  # not ours, not there, or holds files we did not write
        self.manifest_path.unlink(missing_ok=True)

    # -- where the files also go (RemoteRunOutput: object storage) -------------------------
    def _put(self, name: str) -> None:
        """`name` (relative to the root) was written whole."""

    def _delete(self, name: str) -> None:
        """`name` was removed (a shard that runs again)."""

    def publish(self, *names: str) -> None:
        """Files written into the folder by others (the report) are final."""
        for name in names:
            if (self.root / name).is_file():
                self._put(name)

    @property
    def location(self) -> str:
        """Where the run is kept (the folder, or its URL)."""
        return str(self.root)

    def _write_manifest(self) -> None:
        atomic_write_json(self.manifest_path, self._manifest)
        self._put(MANIFEST)

    def record(self, *names: str) -> None:
        """Name files (relative to the root) in the manifest before they are written."""
        new = [n for n in names if n not in self._manifest["files"]]
        if new:
            self._manifest["files"].extend(new)
            self._write_manifest()

    def write_json(self, name: str, obj: Any) -> None:
        """Write `name`: a JSON object, or a callable writing the bytes to a binary file."""
        self.record(name)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                obj(f)
                f.flush()
                os.fsync(f.fileno())

        if callable(obj):
            _written(self.root / name, _replace_atomically, write)
        else:
            _written(self.root / name, atomic_write_json, obj)
        self._put(name)

    def adopt(self, name: str, path: Path) -> None:
        """The finished file `path` (written in this folder under another name) becomes `name`."""
        self.record(name)
        try:
            os.replace(path, self.root / name)
        except OSError as exc:
            raise writing(self.root / name, exc) from None
        self._put(name)

    def committed_shards(self) -> set[int]:
        if not self.predictions_dir.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.predictions_dir.glob("shard-*.parquet")}

    def shards_with_transient_errors(self) -> set[int]:
        """Committed shards with an error that says nothing about its sample: resume runs them again."""
        out = set()
        for path in self.errors_dir.glob("shard-*.parquet") if self.errors_dir.exists() else []:
            table = pq.read_table(path)
            if "transient" in table.column_names and any(v for v in table.column("transient").to_pylist()):
                out.add(int(path.stem.split("-")[1]))
        return out

    # -- per shard ---------------------------------------------------------------------
    def commit(self, shard: int, rows: pa.Table, errors: pa.Table) -> None:
        """Commit one whole shard: errors first, then predictions (the commit marker)."""
        name = shard_name(shard)
        _written(self.errors_dir / name, atomic_write_table, errors)
        self._put(f"errors/{name}")
        _written(self.predictions_dir / name, atomic_write_table, rows)
        self._put(f"predictions/{name}")

    # -- reading back ------------------------------------------------------------------
    def predictions(self) -> Iterator[pa.Table]:
        """The committed predictions a shard at a time (see iter_shards)."""
        return iter_shards(self.predictions_dir)

    def read_shard(self, shard: int) -> pa.Table:
        """One committed shard's prediction rows."""
        return pq.read_table(self.predictions_dir / shard_name(shard))

    def read_errors(self) -> pa.Table:
        table = read_shards(self.errors_dir)
        return table if table.num_columns else ERROR_SCHEMA.empty_table()

    def gather_errors(self) -> pa.Table:
        errors = self.read_errors()
        self.record("errors.parquet")
        _written(self.root / "errors.parquet", atomic_write_table, errors)
        self._put("errors.parquet")
        return errors


def recorded_names(previous: dict[str, Any], shard_files: Sequence[str]) -> list[str]:
    """The files (relative names) a previous run's manifest says it wrote; for a manifest
    from before files were recorded, our own names among `shard_files` and the fixed ones."""
    if "files" in previous:
        names = list(previous["files"])
        for folder in SHARD_DIRS:
            names += [f"{folder}/{shard_name(i)}" for i in range(int(previous.get("shards", 0)))]
        return names
    return list(shard_files) + ["errors.parquet", "metrics.json", "run.json", "coco_results.json", "report.html"]


class RemoteRunOutput(RunOutput):
    """A run kept in object storage (`--output s3://bucket/runs/x`), worked on in a local
    staging folder under the same protocol, each file then put as one object.

    An object store shows an object only once its upload is complete (a single PUT, or a
    multipart upload completed at close), so each object is whole or absent, as a renamed
    file is on disk. A shard's errors object is put before its predictions object, the
    commit marker, and `--resume` takes the committed shards from the objects under
    `predictions/`. `prepare` first makes the staging folder a copy of the remote run (its
    manifest; for `--resume` also its shards and rows, which the evaluation reads);
    the folder is the cache's (`$RAYINFER_CACHE_DIR/runs/`), never a user's.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        from rayinfer.actors.fetch import cache_dir

        self.remote = Location(url, options)
        super().__init__(cache_dir() / "runs" / hashlib.sha256(self.remote.url.encode()).hexdigest()[:16])

    @property
    def location(self) -> str:
        return self.remote.url

    def prepare(self, fingerprint: dict[str, Any], resume: bool = False, overwrite: bool = False) -> set[int]:
        # the shards only where they are read: --resume skips the committed ones (a new run,
        # one refused, and --overwrite need the manifest alone)
        self._listed = pull_run(self.remote, self.root, whole=resume)
        return super().prepare(fingerprint, resume=resume, overwrite=overwrite)

    def _check_writable(self) -> None:
        pass  # the store answers at the first put, in one line

    def _put(self, name: str) -> None:
        try:
            (self.remote / name).write_bytes((self.root / name).read_bytes())
        except OSError as exc:
            raise OutputError(f"cannot write {self.remote}/{name}: {storage_error(exc)}") from None

    def _delete(self, name: str) -> None:
        try:
            (self.remote / name).delete()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OutputError(f"cannot remove {self.remote}/{name}: {storage_error(exc)}") from None

    def _remove_recorded(self, previous: dict[str, Any]) -> None:
        """The objects a previous run's manifest names, and only those, then the staging copy."""
        listed = set(self._listed)
        shards = [n for n in listed if n.split("/")[0] in SHARD_DIRS]
        for name in recorded_names(previous, shards):
            if name in listed:
                self._delete(name)
        self._delete(MANIFEST)
        super()._remove_recorded(previous)


def pull_run(remote: Location, staging: Path, whole: bool = True) -> dict[str, tuple[int, int]]:
    """Make `staging` a copy of the run at `remote` (all but its report and coco_results.json;
    its manifest only, unless `whole`); an empty folder for a prefix that holds nothing.
    Returns the remote listing. A prefix with objects but no manifest is refused: not a
    rayinfer run, and nothing is touched."""
    try:
        listed = remote.listing()
    except OSError as exc:
        raise SetupError(f"output {remote}: {storage_error(exc)}") from None
    listed = {name: v for name, v in listed.items() if name != LOCK_NAME}  # the run's lock: not the run's
    if listed and MANIFEST not in listed:
        raise SetupError(f"output {remote} holds objects but no rayinfer run ({MANIFEST} missing); nothing there "
                         "was touched: choose another --output")
    shutil.rmtree(staging, ignore_errors=True)  # the cache's copy of an earlier pull
    staging.mkdir(parents=True)
    try:
        for name in listed:
            if not whole and name != MANIFEST:
                continue
            if name.startswith("report") or name == "coco_results.json" or "/." in f"/{name}":
                continue
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes((remote / name).read_bytes())
    except OSError as exc:
        raise SetupError(f"cannot read the run at {remote}: {storage_error(exc)}") from None
    return listed


def local_run(url: str | Path, options: dict[str, Any] | None = None) -> RunOutput:
    """A saved run to read (`rayinfer eval`, `compare`): a folder as it is, a run in object
    storage copied into the cache first (its `root` is then that copy)."""
    if not is_remote(str(url)):
        return RunOutput(url)
    run = RemoteRunOutput(str(url), options)
    pull_run(run.remote, run.root)
    return run


def open_output(url: str, options: dict[str, Any] | None = None) -> RunOutput:
    """The run at `url`: a folder, or a prefix in object storage."""
    return RemoteRunOutput(url, options) if is_remote(url) else RunOutput(url)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def iter_shards(folder: Path, columns: Sequence[str] | None = None) -> Iterator[pa.Table]:
    """The shard files of a folder one table at a time, in shard order: a whole run's
    predictions never need to be in memory at once."""
    for f in sorted(folder.glob("shard-*.parquet")):
        yield pq.read_table(f, columns=list(columns) if columns else None)


def read_shards(folder: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """All shard files of a folder as one table, in shard order."""
    tables = list(iter_shards(folder, columns))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="default")
