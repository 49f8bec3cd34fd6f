"""NYU Depth V2: the HDF5 frame reader, the depth models' pre/post-processing, the
Eigen-crop metrics (abs_rel, rmse, delta1, ...), metrics by depth range, and the report's
example rows and error-vs-depth figure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.datasets.base import ModelFamily, Dataset, Sample, SetupError
from rayinfer.datasets.depth import DepthOptions
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import HEAD_ROWS, Evaluation, SavedRun
from rayinfer.jobs.report import Figure, pyplot, save_figure
from rayinfer.jobs.tasks.base import RunningMetric, Table, Task


@dataclass
class DepthEvaluation(Evaluation):
    #: metrics by ground-truth depth range: range_m, images, pixels, and each metric
    depth_bins: list[dict[str, Any]] = field(default_factory=list)
    #: the report's frames: up to `FRAMES` rows (predicted depth maps), highest abs_rel first
    worst: Any = None
    #: abs_rel per frame with valid pixels (sample id -> abs_rel), for `compare`
    per_frame: dict[str, float] = field(default_factory=dict)


class MeanAbsRel(RunningMetric):
    """The mean abs_rel over the images so far that had valid pixels."""

    def __init__(self) -> None:
        self.total, self.images = 0.0, 0

    def add(self, rows: Any) -> None:
        values = [v for v, n in zip(rows.column("abs_rel").to_pylist(), rows.column("valid_pixels").to_pylist()) if n]
        self.total, self.images = self.total + sum(values), self.images + len(values)

    def text(self) -> str:
        return f"abs_rel {self.total / self.images:.4f}" if self.images else ""


class NyuDepth(Task):
    name = "nyu"
    options_key = "depth"
    options_type = DepthOptions
    summary_keys = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
    headline_keys = ("abs_rel", "rmse", "delta1", "silog")
    layout = ("val/official",)
    figure_names = ("depth_samples.jpg", "error_vs_depth.png")
    demo_model = Path(__file__).resolve().parent.parent / "demo_models" / "depth.onnx"

    def dataset(self, cfg: Any) -> Dataset:
        from rayinfer.datasets.nyu import NyuDataset

        return NyuDataset(cfg.data_root, sample_ids=cfg.sample_ids, limit=cfg.limit,
                          storage_options=cfg.storage_options)

    def family(self, cfg: Any, dataset: Dataset, model: Any) -> ModelFamily:
        from rayinfer.actors.families.depth import DepthFamily

        wrong = DepthFamily.matches(model.inputs, model.outputs)
        if wrong:
            raise SetupError(f"the model is not a depth model: {wrong}; a detector runs as `rayinfer run coco`")
        return DepthFamily(model.inputs, self.options(cfg), getattr(model, "metadata", None))

    def resolved_options(self, cfg: Any, family: Any) -> DepthOptions:
        return family.options  # `auto` replaced by the profile the model declares

    def running_metric(self) -> RunningMetric:
        return MeanAbsRel()

    def evaluate(self, run: SavedRun, data_root: Location, options: Any, engine: str | None = None) -> DepthEvaluation:
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
                               rows=rows.num_rows, sample_ids=run.ids, depth_bins=summarize_bins(rows),
                               worst=_worst_rows(rows, FRAMES), per_frame=_per_frame(rows))

    def tables(self, ev: Any, everything: bool = False) -> list[Table]:
        """One row per depth range with ground truth in it (every range with `everything`)."""
        bins = [b for b in ev.depth_bins or [] if everything or b["pixels"]]
        return [Table("By depth range", ["range (m)", "images", "pixels", "abs_rel", "rmse", "delta1"],
                      [[f"{b['range_m'][0]:g}-{b['range_m'][1]:g}", b["images"], b["pixels"], b["abs_rel"],
                        b["rmse"], b["delta1"]] for b in bins])] if bins else []

    def figures(self, ev: Any, data_root: Location, folder: Path, options: Any) -> list[Figure]:
        from rayinfer.datasets.depth import decode_depth, transform
        from rayinfer.datasets.nyu import NyuDataset

        plt = pyplot()
        figures = []
        dataset = NyuDataset(data_root)
        profile = options.resolved_profile()
        frames = ev.worst if ev.worst is not None else ev.head
        rows = frames.to_pylist() if frames is not None else []
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
                    ax.set_title(f"{r + 1}. {row['sample_id']}" if c == 0 else title, fontsize=8)
                    ax.axis("off")
                    if cmap:
                        fig.colorbar(shown, ax=ax, fraction=0.046)
            more = ev.rows - len(rows)
            figures.append(save_figure(
                fig, folder, "depth_samples.jpg",
                f"{'Every frame' if more <= 0 else f'The {len(rows)} frames with the highest abs_rel (of {ev.rows:,})'}, "
                "worst first: the input, the ground truth and the prediction on one colour scale (metres), and the "
                "absolute error where the ground truth is valid (blank: no depth measured).", dpi=80))
        bins = [b for b in ev.depth_bins if b["images"]]
        if bins:
            fig, ax = plt.subplots(figsize=(7, 4))
            labels = [f"{lo:g}-{hi:g}" for lo, hi in (b["range_m"] for b in bins)]
            bars = ax.bar(labels, [b["abs_rel"] for b in bins], color="#4477aa", label="abs_rel (left axis)")
            ax.set(xlabel="ground-truth depth (m)", ylabel="abs_rel", title="Error by ground-truth depth")
            twin = ax.twinx()
            (line,) = twin.plot(labels, [b["rmse"] for b in bins], "o-", color="#ee6677", label="rmse, m (right axis)")
            twin.set_ylabel("rmse (m)")
            ax.legend(handles=[bars, line], fontsize=8, loc="upper left")
            figures.append(save_figure(
                fig, folder, "error_vs_depth.png",
                "Error by ground-truth depth: bars abs_rel (left axis), the line rmse in metres (right axis), over "
                "the valid pixels whose true depth lies in each range. Far pixels usually err more in metres and "
                "less in relative terms."))
        return figures

    def compare_figures(self, a: Any, b: Any, runs: tuple[SavedRun, SavedRun], data_root: Location, folder: Path,
                        labels: tuple[str, str]) -> list[Figure]:
        """abs_rel per frame, B against A (the frames that changed most named)."""
        shared = sorted(set(a.per_frame) & set(b.per_frame))
        if not shared:
            return []
        plt = pyplot()
        x = np.array([a.per_frame[i] for i in shared])
        y = np.array([b.per_frame[i] for i in shared])
        fig, ax = plt.subplots(figsize=(5.5, 5.2))
        top = float(max(x.max(), y.max())) * 1.05 or 1.0
        ax.plot([0, top], [0, top], color="#888", lw=0.8, ls="--", label="no change")
        ax.scatter(x, y, s=12, color="#4477aa", label="a frame")
        for k in np.argsort(-np.abs(y - x))[:5]:
            ax.annotate(shared[k], (x[k], y[k]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"abs_rel, {labels[0]}", ylabel=f"abs_rel, {labels[1]}",
               title="abs_rel per frame")
        ax.legend(fontsize=8)
        return [save_figure(fig, folder, "frame_deltas.png",
                            f"abs_rel of each frame in {labels[0]} (x) and {labels[1]} (y): frames below the dashed "
                            f"line got better in {labels[1]}; the five that changed most are named.")]

    def write_demo(self, dest: Path) -> None:
        from rayinfer.datasets.synthetic import write_nyu

        write_nyu(dest, n_frames=8, seed=0)  # the demo model was trained on other seeds


TASK = NyuDepth()
FRAMES = 12  # the report shows every frame up to this many, worst first


def _per_frame(rows: Any) -> dict[str, float]:
    valid = rows.column("valid_pixels").to_pylist() if "valid_pixels" in rows.column_names else None
    return {i: v for k, (i, v) in enumerate(zip(rows.column("sample_id").to_pylist(), rows.column("abs_rel").to_pylist()))
            if v is not None and (valid is None or valid[k])}


def _worst_rows(rows: Any, n: int) -> Any:
    """Up to `n` rows with valid pixels, the highest abs_rel first."""
    import pyarrow.compute as pc

    valid = rows.filter(pc.greater(rows.column("valid_pixels"), 0)) if "valid_pixels" in rows.column_names else rows
    abs_rel = np.array([np.nan if v is None else v for v in valid.column("abs_rel").to_pylist()], np.float64)
    order = np.argsort(-np.nan_to_num(abs_rel, nan=-1.0), kind="stable")
    return valid.take(order[:n])
