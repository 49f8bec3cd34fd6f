"""`OUTPUT/report.html`: one self-contained page (figures embedded) plus the PNGs.

- COCO: precision-recall curves per IoU threshold, per-class AP, and images with
  predicted (red) vs ground-truth (green) boxes.
- Depth: input / ground truth / prediction / error rows, and error vs depth.
- Both: the throughput and utilisation figures from run.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.jobs.evaluate import Evaluation

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, folder: Path, name: str) -> tuple[str, bytes]:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    (folder / name).write_bytes(data)
    return name, data


# -- COCO ---------------------------------------------------------------------------------
def coco_figures(ev: Evaluation, data_root: Path, folder: Path, n_images: int = 6) -> list[tuple[str, str, bytes]]:
    plt = _plt()
    figures = []
    coco_eval = ev.coco_scores
    if coco_eval is not None:
        precision = coco_eval.eval["precision"][:, :, :, 0, -1]  # [T, R, K], all areas, 100 dets
        recall = coco_eval.params.recThrs
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for t, iou in enumerate(coco_eval.params.iouThrs):
            p = precision[t]
            curve = np.array([row[row > -1].mean() if (row > -1).any() else np.nan for row in p])
            ax.plot(recall, curve, label=f"IoU {iou:.2f}", lw=1.2)
        ax.set(xlabel="recall", ylabel="precision (mean over classes)", xlim=(0, 1), ylim=(0, 1.02),
               title="Precision-recall per IoU threshold")
        ax.legend(fontsize=7, ncol=2)
        figures.append(("pr_curves", *_save(fig, folder, "pr_curves.png")))
    rows = [r for r in ev.per_class if r["AP"] is not None]
    if rows:
        rows.sort(key=lambda r: r["AP"])
        fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.18 * len(rows) + 1)))
        ax.barh([r["class"] for r in rows], [r["AP"] for r in rows], color="#4477aa")
        ax.set(xlabel="AP@[.5:.95]", xlim=(0, 1), title="AP per class")
        ax.tick_params(axis="y", labelsize=7)
        figures.append(("per_class_ap", *_save(fig, folder, "per_class_ap.png")))
    if ev.head is not None and ev.head.num_rows:
        figures.append(("detections", *_save(_detection_grid(ev, data_root, n_images), folder, "detections.png")))
    return figures


def _detection_grid(ev: Evaluation, data_root: Path, n_images: int) -> Any:
    import cv2

    from rayinfer.datasets.coco import CocoDataset

    plt = _plt()
    dataset = CocoDataset(data_root)
    rows = ev.head.slice(0, n_images).to_pylist()  # type: ignore[union-attr]
    cols = min(3, len(rows))
    fig, axes = plt.subplots(-(-len(rows) // cols), cols, figsize=(4 * cols, 3.2 * -(-len(rows) // cols)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), rows):
        image = cv2.imread(str(data_root / row["file"]), cv2.IMREAD_COLOR)
        if image is None:
            continue
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        ax.imshow(image)
        for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[row["image_id"]], iscrowd=None)):
            x, y, w, h = ann["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="#22cc44", lw=1.5))
        for (x, y, w, h), score, cat in zip(row["bbox"], row["score"], row["category_id"]):
            if score < 0.3:
                continue
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, ec="#ee3322", lw=1.0, ls="--"))
            ax.text(x, y, f"{dataset.category_names.get(cat, cat)} {score:.2f}", color="white", fontsize=6,
                    bbox={"facecolor": "#ee3322", "alpha": 0.7, "pad": 1, "lw": 0})
        ax.set_title(f"image {row['image_id']}", fontsize=8)
    fig.suptitle("ground truth (green) vs predictions with score >= 0.3 (red)", fontsize=9)
    return fig


# -- depth --------------------------------------------------------------------------------
def depth_figures(ev: Evaluation, data_root: Path, options: Any, folder: Path, n_images: int = 4
                  ) -> list[tuple[str, str, bytes]]:
    from rayinfer.datasets.base import Sample
    from rayinfer.datasets.depth import decode_depth, transform
    from rayinfer.datasets.nyu import NyuDataset

    plt = _plt()
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
        figures.append(("depth_samples", *_save(fig, folder, "depth_samples.png")))
    bins = [b for b in ev.depth_bins if b["images"]]
    if bins:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        labels = [f"{lo:g}-{hi:g}" for lo, hi in (b["range_m"] for b in bins)]
        ax.bar(labels, [b["abs_rel"] for b in bins], color="#4477aa", label="abs_rel")
        ax.set(xlabel="ground-truth depth (m)", ylabel="abs_rel", title="Error vs depth")
        twin = ax.twinx()
        twin.plot(labels, [b["rmse"] for b in bins], "o-", color="#ee6677", label="rmse (m)")
        twin.set_ylabel("rmse (m)")
        figures.append(("error_vs_depth", *_save(fig, folder, "error_vs_depth.png")))
    return figures


# -- page ---------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _throughput_section(run: dict[str, Any] | None) -> str:
    if not run:
        return "<p>No run.json: throughput unknown (evaluated offline from a results file).</p>"
    t, c = run["timings"], run["counts"]
    parts = [_table(["samples/s", "inference s", "setup s", "total s", "samples", "errors", "shards re-queued"],
                    [[run["throughput"]["samples_per_s"], t["inference_s"], t["setup_s"], t["total_s"],
                      c["samples"], c["errors"], c["shards_requeued"]]])]
    stages = t.get("stage_mean_ms") or {}
    if stages:
        parts.append("<h3>Mean time per sample and stage (ms)</h3>")
        parts.append(_table(list(stages), [list(stages.values())]))
    actors = run.get("actors") or []
    if actors:
        parts.append("<h3>Actors</h3>")
        parts.append(_table(["actor", "host", "device", "CPUs", "requests", "samples", "shards", "busy fraction"],
                            [[a.get("name"), a.get("host"), a.get("device"), a.get("cpus"), a.get("requests"),
                              a.get("samples"), a.get("shards"), a.get("busy_fraction")] for a in actors]))
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%}h1{font-size:1.5em}"""


#: Every file a report may write, relative to the output folder (recorded in the run's manifest).
REPORT_FILES = ("report.html", *(f"report/{name}.png" for name in
                                 ("pr_curves", "per_class_ap", "detections", "depth_samples", "error_vs_depth")))


def write_report(output: Path, ev: Evaluation, data_root: Path, run: dict[str, Any] | None = None,
                 depth_options: Any = None) -> Path:
    """Write OUTPUT/report.html and OUTPUT/report/*.png; returns the HTML path."""
    output = Path(output)
    folder = output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    if ev.task == "coco":
        figures = coco_figures(ev, Path(data_root), folder)
        keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
        slices = "<h2>Per class</h2>" + _table(
            ["class", "AP", "AP50", "APs", "APm", "APl", "objects"],
            [[r["class"], r["AP"], r["AP50"], r["APs"], r["APm"], r["APl"], r["objects"]] for r in ev.per_class])
    elif ev.task == "nyu":
        figures = depth_figures(ev, Path(data_root), depth_options, folder)
        keys = ["abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3"]
        slices = "<h2>By depth range</h2>" + _table(
            ["range (m)", "images", "pixels", "abs_rel", "rmse", "delta1"],
            [[f"{b['range_m'][0]:g}-{b['range_m'][1]:g}", b["images"], b["pixels"], b["abs_rel"], b["rmse"], b["delta1"]]
             for b in ev.depth_bins])
    else:  # null: counts only, no data to draw
        figures, keys, slices = [], [k for k, v in ev.metrics.items() if isinstance(v, (int, float))], ""
    title = f"rayinfer {ev.task} report"
    model = html.escape(str(run["config"]["model"])) if run else ""
    figs = "".join(
        f'<figure id="fig-{name}"><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name, _file, data in figures
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><h1>{title}</h1><p>model: {model}<br>data: {html.escape(str(data_root))}<br>images: {ev.metrics.get('images')}</p>
<h2>Metrics</h2>{_table(keys, [[ev.metrics.get(k) for k in keys]])}
{slices}<h2>Figures</h2>{figs}
<h2>Throughput and utilisation</h2>{_throughput_section(run)}
<script>window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figuresShown = shown; }});</script>
<script type="application/json" id="metrics">{html.escape(json.dumps({k: ev.metrics.get(k) for k in keys}))}</script>
</body></html>"""
    path = output / "report.html"
    path.write_text(page)
    log.info("report: %s", path)
    return path
