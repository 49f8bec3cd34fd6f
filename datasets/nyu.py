"""NYU Depth V2 in the `val/official/*.h5` layout (sayakpaul/nyu_depth_v2, FastDepth).

Each HDF5 file holds `rgb` (uint8, 3xHxW or HxWx3) and `depth` (float32 HxW, metres,
0 = no reading). Any frame size works; the Eigen crop applies to 480x640 frames.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from datasets.base import Sample, SampleError, SetupError, safe_join
from datasets.depth import METRIC_NAMES


class NyuDataset:
    """Reader for `DATA_ROOT/val/official/*.h5` (or `*.h5` directly under DATA_ROOT)."""

    name = "nyu"

    def __init__(self, root: str | Path, sample_ids: Sequence[str] | None = None, limit: int | None = None) -> None:
        self.root = Path(root)
        self.sample_ids = tuple(sample_ids) if sample_ids else None
        self.limit = limit

    @property
    def folder(self) -> Path:
        official = self.root / "val" / "official"
        return official if official.is_dir() else self.root

    def samples(self) -> list[Sample]:
        files = sorted(self.folder.glob("*.h5"))
        if not files:
            raise SetupError(f"no .h5 files in {self.root}/val/official (nor in {self.root})")
        samples = [Sample(f.stem, str(f.relative_to(self.root))) for f in files]
        if self.sample_ids:
            wanted = set(self.sample_ids)
            unknown = wanted - {s.sample_id for s in samples}
            if unknown:
                raise SetupError(f"sample ids not found in {self.folder}: {sorted(unknown)[:10]}")
            samples = [s for s in samples if s.sample_id in wanted]
        return samples[: self.limit] if self.limit else samples

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, depth float32 HxW). Raises SampleError naming the file."""
        import h5py

        path = safe_join(self.root, sample.file)
        try:
            with h5py.File(path, "r") as f:
                missing = [k for k in ("rgb", "depth") if k not in f]
                if missing:
                    raise SampleError(f"{path}: no {missing} dataset in the file (has {sorted(f.keys())})")
                rgb = np.asarray(f["rgb"][()])
                depth = np.asarray(f["depth"][()], np.float32)
        except SampleError:
            raise
        except FileNotFoundError:
            raise SampleError(f"{path}: file not found") from None
        except (OSError, KeyError, ValueError) as exc:
            raise SampleError(f"{path}: not a readable HDF5 file ({exc})") from None
        if rgb.ndim == 3 and rgb.shape[0] == 3 and rgb.shape[2] != 3:
            rgb = rgb.transpose(1, 2, 0)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise SampleError(f"{path}: 'rgb' is {rgb.dtype} {list(rgb.shape)}, expected uint8 3xHxW or HxWx3")
        depth = np.squeeze(depth)
        if depth.shape != rgb.shape[:2]:
            raise SampleError(f"{path}: 'depth' is {list(depth.shape)} but 'rgb' is {list(rgb.shape[:2])}")
        return np.ascontiguousarray(rgb), depth

    def fingerprint(self) -> dict[str, Any]:
        return {
            "dataset": self.name,
            "root": str(self.root.resolve()),
            "files": len(list(self.folder.glob("*.h5"))) if self.root.is_dir() else 0,
            "sample_ids": list(self.sample_ids) if self.sample_ids else None,
            "limit": self.limit,
        }

    def exports(self, predictions: pa.Table) -> dict[str, Any]:
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
