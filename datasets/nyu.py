"""NYU Depth V2 in the `val/official/*.h5` layout (sayakpaul/nyu_depth_v2, FastDepth).

Each HDF5 file holds `rgb` (uint8, 3xHxW or HxWx3) and `depth` (float32 HxW, metres,
0 = no reading). Any frame size works; the Eigen crop applies to 480x640 frames.
"""

from __future__ import annotations

import io
import math
import posixpath
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from rayinfer.datasets.base import Sample, SampleError, SetupError, sample_location
from rayinfer.datasets.depth import METRIC_NAMES
from rayinfer.datasets.images import read_bytes
from rayinfer.datasets.packed import PackedReading
from rayinfer.datasets.storage import Location, storage_error


#: Larger ground-truth depths mean the file is not in metres (NYU's Kinect reads up to ~10 m).
MAX_METRES = 100.0


class NyuDataset(PackedReading):
    """Reader for `DATA_ROOT/val/official/*.h5` (or `*.h5` directly under DATA_ROOT)."""

    name = "nyu"

    def __init__(self, root: str | Path | Location, sample_ids: Sequence[str] | None = None, limit: int | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        """`root`: a folder or a URL (`storage_options`: its file system's, see datasets/storage.py)."""
        self.root = Location.of(root, storage_options)
        self.sample_ids = tuple(sample_ids) if sample_ids else None
        self.limit = limit

    @property
    def folder(self) -> Location:
        official = self.root / "val/official"
        return official if official.is_dir() else self.root

    def files(self) -> list[Location]:
        """The frames' files, sorted by name."""
        try:
            return self.folder.glob("*.h5")
        except OSError as exc:
            raise SetupError(f"{self.root}: cannot list the frames: {storage_error(exc)}") from None

    def samples(self) -> list[Sample]:
        if self.pack is not None:  # the frames the packed shards hold, by their loose names
            samples = [Sample(posixpath.basename(k), f"{k}.h5", {"pack": self.pack.shard_of[k]})
                       for k in sorted(self.pack.keys())]
        else:
            samples = [Sample(f.stem, f.relative_to(self.root)) for f in self.files()]
        if not samples:
            raise SetupError(f"no .h5 files in {self.root}/val/official (nor in {self.root})")
        if self.sample_ids:
            wanted = set(self.sample_ids)
            unknown = wanted - {s.sample_id for s in samples}
            if unknown:
                raise SetupError(f"sample ids not found in {self.folder}: {sorted(unknown)[:10]}")
            samples = [s for s in samples if s.sample_id in wanted]
        return samples[: self.limit] if self.limit else samples

    def load(self, sample: Sample, data: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, depth float32 HxW); `data`: the file's bytes, where `fetch`
        (PackedReading) read them already. Raises SampleError naming the file."""
        import h5py

        path = sample_location(self.root, sample.file)
        # a local file is opened in place (h5py reads only the datasets), a remote one
        # fetched in one request and read from memory
        if data is not None:
            source: Any = io.BytesIO(data)
        elif self.reader is not None:  # a packed set: the member of its shard
            source = io.BytesIO(self.packed_member(sample, sample.file))
        else:
            source = path.path if path.is_local else io.BytesIO(read_bytes(path))
        try:
            with h5py.File(source, "r") as f:
                missing = [k for k in ("rgb", "depth") if k not in f]
                if missing:
                    raise SampleError(f"{path}: no {missing} dataset in the file (has {sorted(f.keys())})")
                rgb = np.asarray(f["rgb"][()])
                stored = np.asarray(f["depth"][()])
                depth = stored.astype(np.float32, copy=False)
        except SampleError:
            raise
        except FileNotFoundError:
            raise SampleError(f"{path}: file not found") from None
        except (OSError, KeyError, ValueError) as exc:
            raise SampleError(f"{path}: not a readable HDF5 file ({exc})") from None
        if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[2] != 3:
            # planes to interleaved pixels: OpenCV's merge, 0.08 ms for a 480x640 frame against
            # 2.3 ms for numpy's transposed copy (the largest host cost of an NYU sample);
            # another dtype is refused below, by the shape it had
            rgb = cv2.merge(list(rgb)) if rgb.dtype == np.uint8 else rgb.transpose(1, 2, 0)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise SampleError(f"{path}: 'rgb' is {rgb.dtype} {list(rgb.shape)}, expected uint8 3xHxW or HxWx3")
        depth = np.squeeze(depth)
        if depth.shape != rgb.shape[:2]:
            raise SampleError(f"{path}: 'depth' is {list(depth.shape)} but 'rgb' is {list(rgb.shape[:2])}")
        finite = np.isfinite(depth)
        all_finite = bool(finite.all())
        if not all_finite and not finite.any():
            raise SampleError(f"{path}: 'depth' has no finite value (all NaN or inf)")
        deepest = float(depth.max() if all_finite else depth[finite].max())
        if stored.dtype.kind in "iu" or deepest > MAX_METRES:
            raise SampleError(f"{path}: 'depth' looks like millimetres ({stored.dtype}, max "
                              f"{deepest:g}); expected float metres (<= {MAX_METRES:g})")
        if not all_finite:
            depth = np.where(finite, depth, np.float32(0))  # no reading, as the dataset marks holes
        return np.ascontiguousarray(rgb), depth

    def pack_members(self, sample: Sample) -> dict[str, bytes]:
        """What `rayinfer pack` stores for a frame: its HDF5 file's bytes (WebDataset's `h5`)."""
        return {"h5": read_bytes(sample_location(self.root, sample.file))}

    def pack_extras(self) -> dict[str, Location]:
        return {}

    def fingerprint(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "root": self.root.resolved(),
            "files": (len(self.pack.keys()) if self.pack is not None else len(self.files())) if self.root.is_dir() else 0,
            **({"packed": self.pack.fingerprint()} if self.pack is not None else {}),
            "sample_ids": list(self.sample_ids) if self.sample_ids else None,
            "limit": self.limit,
        }

    def exports(self, tables: Callable[[], Iterable[pa.Table]]) -> dict[str, Any]:
        return {}

    def evaluate(self, predictions: pa.Table, sample_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Mean of the per-image metrics over images with valid pixels.

        Samples without a row (failed) or without valid pixels are counted, not averaged.
        """
        rows = predictions.to_pydict() if predictions.num_rows else {}
        n_rows = predictions.num_rows
        valid = [i for i in range(n_rows) if rows["valid_pixels"][i] > 0]
        metrics: dict[str, Any] = {}
        for m in METRIC_NAMES:
            values = [rows[m][i] for i in valid]
            metrics[m] = float(np.mean(values)) if values else math.nan
        aligned = [c for c in predictions.column_names if c.startswith("aligned_")]
        if aligned:
            metrics["aligned"] = {c[len("aligned_"):]: float(np.mean([rows[c][i] for i in valid])) if valid else math.nan
                                  for c in aligned}
        metrics["images"] = len(sample_ids) if sample_ids is not None else n_rows
        metrics["evaluated_images"] = len(valid)
        return metrics


def recompute(dataset: NyuDataset, predictions: pa.Table, options: Any) -> pa.Table:
    """Every per-image metric again, from the saved float16 maps and the ground truth under
    `options`: for an evaluation with other options than the job's (a job's own rows
    already hold them, computed in the actor on the same float16 maps).

    Returns the predictions table with freshly computed metric columns (aligned ones if
    `options` align, `bin_*` ones for the metrics by depth range).
    """
    from rayinfer.datasets.depth import decode_depth, depth_schema, eval_mask, evaluate_image, transform

    profile = options.resolved_profile()
    rows = predictions.to_pylist()
    for row in rows:
        _, depth = dataset.load(Sample(row["sample_id"], row["file"]))
        size = (row["height"], row["width"])
        gt = transform(depth, profile, size, nearest=True)
        mask = transform(eval_mask(depth.shape, options.eigen_crop), profile, size, nearest=True)
        pred = decode_depth(row["depth"], *size)
        raw, aligned, n, bins = evaluate_image(pred, gt, mask, options)
        row.update(raw, valid_pixels=n)
        if aligned is not None:
            row.update({f"aligned_{k}": v for k, v in aligned.items()})
        row.update(bins)
    computed = depth_schema(options.align != "none")
    schema = pa.schema([f for f in predictions.schema if not f.name.startswith("aligned_") or options.align != "none"]
                       + [f for f in computed if f.name not in predictions.schema.names])
    return pa.Table.from_pylist(rows, schema=schema)
