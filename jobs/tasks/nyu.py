"""NYU Depth V2: the HDF5 frame reader, the depth models' pre/post-processing, the
Eigen-crop metrics (abs_rel, rmse, delta1, ...), metrics by depth range, and the report's
example rows and error-vs-depth figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.datasets.base import Adapter, Dataset, Sample, SetupError
from rayinfer.datasets.depth import DepthOptions
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import HEAD_ROWS, Evaluation, SavedRun
from rayinfer.jobs.report import pyplot, save_png
from rayinfer.jobs.tasks.base import RunningMetric, Table, Task


@dataclass
class DepthEvaluation(Evaluation):
    #: metrics by ground-truth depth range: range_m, images, pixels, and each metric
    depth_bins: list[dict[str, Any]] = field(default_factory=list)


class MeanAbsRel(RunningMetric):
    """The mean abs_rel over the images so far that had valid pixels."""

    def __init__(self) -> None:
        self.total, self.images = 0.0, 0

    def add(self, records: Any) -> None:
        values = [v for v, n in zip(records.column("abs_rel").to_pylist(), records.column("valid_pixels").to_pylist()) if n]
        self.total, self.images = self.total + sum(values), self.images + len(values)

    def text(self) -> str:
        return f"abs_rel {self.total / self.images:.4f}" if self.images else ""


class NyuDepth(Task):
    name = "nyu"
    options_key = "depth"
    options_type = DepthOptions
    summary_keys = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
    figure_names = ("depth_samples", "error_vs_depth")
    demo_model = Path(__file__).resolve().parent.parent / "demo_models" / "depth.onnx"

    def dataset(self, cfg: Any) -> Dataset:
        from rayinfer.datasets.nyu import NyuDataset

        return NyuDataset(cfg.data_root, sample_ids=cfg.sample_ids, limit=cfg.limit,
                          storage_options=cfg.storage_options)

    def adapter(self, cfg: Any, dataset: Dataset, model: Any) -> Adapter:
        from rayinfer.actors.families.depth import DepthAdapter

        wrong = DepthAdapter.matches(model.inputs, model.outputs)
        if wrong:
            raise SetupError(f"the model is not a depth model: {wrong}; a detector runs as `rayinfer run coco`")
        return DepthAdapter(model.inputs, cfg.depth, getattr(model, "metadata", None))

    def resolved_options(self, cfg: Any, adapter: Any) -> DepthOptions:
        return adapter.options  # `auto` replaced by the profile the model declares

    def running_metric(self) -> RunningMetric:
        return MeanAbsRel()

    def evaluate(self, run: SavedRun, data_root: Location, options: Any) -> DepthEvaluation:
        """From the rows: the actor computed every per-image metric on the saved float16 map.
        Only options other than the job's (`rayinfer eval nyu --max-depth 8`, say) or a run
        written before the rows held metrics by depth range go back to the HDF5 files."""
        from rayinfer.datasets.depth import summarize_bins
        from rayinfer.datasets.nyu import NyuDataset, recompute

        saved = self.saved_options(run)
        options = options or saved
        if options is None:
            raise SetupError(f"{run.path}/run.json is missing: pass the depth options used by the job")
        dataset = NyuDataset(data_root)
        rows = run.table()
        if options != saved or "bin_pixels" not in rows.column_names:
            rows = recompute(dataset, rows, options)
        return DepthEvaluation(self.name, dataset.evaluate(rows, run.ids), head=rows.slice(0, HEAD_ROWS),
                               rows=rows.num_rows, sample_ids=run.ids, depth_bins=summarize_bins(rows))

    def tables(self, ev: Any, everything: bool = False) -> list[Table]:
        """One row per depth range with ground truth in it (every range with `everything`)."""
        bins = [b for b in ev.depth_bins or [] if everything or b["pixels"]]
        return [Table("By depth range", ["range (m)", "images", "pixels", "abs_rel", "rmse", "delta1"],
                      [[f"{b['range_m'][0]:g}-{b['range_m'][1]:g}", b["images"], b["pixels"], b["abs_rel"],
                        b["rmse"], b["delta1"]] for b in bins])] if bins else []

    def figures(self, ev: Any, data_root: Location, folder: Path, options: Any, n_images: int = 4
                ) -> list[tuple[str, bytes]]:
        from rayinfer.datasets.depth import decode_depth, transform
        from rayinfer.datasets.nyu import NyuDataset

        plt = pyplot()
        figures = []
        dataset = NyuDataset(data_root)
        profile = options.resolved_profile()
        rows = ev.head.slice(0, n_images).to_pylist() if ev.head is not None else []
        if rows:
            fig, axes = plt.subplots(len(rows), 4, figsize=(12, 2.6 * len(rows)), squeeze=False)
            for r, row in enumerate(rows):
                rgb, depth = dataset.load(Sample(row["sample_id"], row["file"]))
                size = (row["height"], row["width"])
                gt = transform(depth, profile, size, nearest=True)
                pred = decode_depth(row["depth"], *size).astype(np.float32)
                err = np.where(gt > options.min_depth, np.abs(pred - gt), np.nan)
                vmax = float(np.nanmax(np.where(gt > 0, gt, np.nan))) if (gt > 0).any() else options.max_depth
                panels = [(transform(rgb, profile, size, nearest=False), "input", None),
                          (np.where(gt > 0, gt, np.nan), "ground truth (m)", "viridis"),
                          (pred, f"prediction (abs_rel {row['abs_rel']:.3f})", "viridis"),
                          (err, "|error| (m)", "magma")]
                for c, (img, title, cmap) in enumerate(panels):
                    ax = axes[r, c]
                    shown = ax.imshow(img, cmap=cmap, vmin=0 if cmap else None, vmax=vmax if cmap == "viridis" else None)
                    ax.set_title(row["sample_id"] if c == 0 else title, fontsize=8)
                    ax.axis("off")
                    if cmap:
                        fig.colorbar(shown, ax=ax, fraction=0.046)
            figures.append(("depth_samples", save_png(fig, folder, "depth_samples")))
        bins = [b for b in ev.depth_bins if b["images"]]
        if bins:
            fig, ax = plt.subplots(figsize=(6.5, 3.8))
            labels = [f"{lo:g}-{hi:g}" for lo, hi in (b["range_m"] for b in bins)]
            ax.bar(labels, [b["abs_rel"] for b in bins], color="#4477aa", label="abs_rel")
            ax.set(xlabel="ground-truth depth (m)", ylabel="abs_rel", title="Error vs depth")
            twin = ax.twinx()
            twin.plot(labels, [b["rmse"] for b in bins], "o-", color="#ee6677", label="rmse (m)")
            twin.set_ylabel("rmse (m)")
            figures.append(("error_vs_depth", save_png(fig, folder, "error_vs_depth")))
        return figures

    def write_demo(self, dest: Path) -> None:
        from rayinfer.datasets.synthetic import write_nyu

        write_nyu(dest, n_frames=8, seed=0)  # the demo model was trained on other seeds


TASK = NyuDepth()
