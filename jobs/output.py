"""The output directory: committed shards, errors, metrics and run summary.

Layout:
    OUTPUT/manifest.json                    what this run is (fingerprint), written first
    OUTPUT/predictions/shard-NNNNN.parquet  one file per work unit; present = committed
    OUTPUT/errors/shard-NNNNN.parquet       that shard's per-sample failures (may be empty)
    OUTPUT/errors.parquet                   all failures, gathered at the end
    OUTPUT/metrics.json, run.json           written at the end

Every file is written to a temporary name and renamed, so a crash leaves either the
whole file or nothing. A shard's errors are committed before its predictions, so
"predictions file present" implies the errors are there too. Resume skips committed
shards; it refuses when the manifest's fingerprint differs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from datasets.base import ERROR_SCHEMA, SetupError

MANIFEST = "manifest.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def atomic_write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


class RunOutput:
    """One run's output directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.predictions_dir = self.root / "predictions"
        self.errors_dir = self.root / "errors"

    # -- start -----------------------------------------------------------------------
    def open(self, fingerprint: dict[str, Any], resume: bool = False, overwrite: bool = False) -> set[int]:
        """Prepare the directory; return the shards already committed (resume only).

        Refuses to mix runs: an output directory that holds another run needs
        `--overwrite`, and `--resume` needs the same fingerprint.
        """
        manifest_path = self.root / MANIFEST
        has_run = manifest_path.exists() or self.predictions_dir.exists()
        if has_run and overwrite:
            for name in ("predictions", "errors"):
                shutil.rmtree(self.root / name, ignore_errors=True)
            for name in (MANIFEST, "errors.parquet", "metrics.json", "run.json", "coco_results.json"):
                (self.root / name).unlink(missing_ok=True)
            has_run = False
        if has_run and not resume:
            raise SetupError(
                f"output directory {self.root} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another --output"
            )
        committed: set[int] = set()
        if has_run:
            try:
                previous = json.loads(manifest_path.read_text())["fingerprint"]
            except (OSError, ValueError, KeyError):
                raise SetupError(f"{manifest_path} is missing or unreadable; cannot resume, use --overwrite") from None
            changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
            if changed:
                details = "; ".join(f"{k}: {previous.get(k)!r} -> {fingerprint.get(k)!r}" for k in changed)
                raise SetupError(f"cannot resume {self.root}: the configuration changed ({details})")
            committed = self.committed_shards()
        self.root.mkdir(parents=True, exist_ok=True)
        self.predictions_dir.mkdir(exist_ok=True)
        self.errors_dir.mkdir(exist_ok=True)
        atomic_write_json(manifest_path, {"fingerprint": fingerprint})
        return committed

    def committed_shards(self) -> set[int]:
        if not self.predictions_dir.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.predictions_dir.glob("shard-*.parquet")}

    # -- per shard ---------------------------------------------------------------------
    def commit(self, shard: int, records: pa.Table, errors: pa.Table) -> None:
        """Commit one whole shard: errors first, then predictions (the commit marker)."""
        atomic_write_table(self.errors_dir / f"shard-{shard:05d}.parquet", errors)
        atomic_write_table(self.predictions_dir / f"shard-{shard:05d}.parquet", records)

    # -- reading back ------------------------------------------------------------------
    def read_predictions(self) -> pa.Table:
        return read_shards(self.predictions_dir)

    def read_errors(self) -> pa.Table:
        table = read_shards(self.errors_dir)
        return table if table.num_columns else ERROR_SCHEMA.empty_table()

    def gather_errors(self) -> pa.Table:
        errors = self.read_errors()
        atomic_write_table(self.root / "errors.parquet", errors)
        return errors


def read_shards(folder: Path) -> pa.Table:
    """All shard files of a folder as one table, in shard order."""
    files = sorted(folder.glob("shard-*.parquet"))
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
