"""What the benchmarks share: a fresh local Ray per mode, a COCO set repeated to N images,
and the whole job run with its throughput."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

def sim_uri(device: str, latency_ms: float, capacity: int, per_item_ms: float = 0.25,
            shape: str = "input=1x1&output=1x1", output_file: str | None = None) -> str:
    """A simulated device of either shape: `streams` (`capacity` streams, `latency_ms` per
    request) or `gpu` (`capacity` engines, `latency_ms` fixed + `per_item_ms` per sample);
    `output_file`: the .npy it returns per sample."""
    if device == "gpu":
        uri = (f"sim://?engine=gpu&fixed_ms={latency_ms:g}&per_item_ms={per_item_ms:g}&capacity={capacity}"
               f"&{shape}")
    else:
        uri = f"sim://?latency_ms={latency_ms:g}&capacity={capacity}&{shape}"
    return uri + (f"&output_file={output_file}" if output_file else "")


def device_rate(run: dict[str, Any]) -> float:
    """The devices' declared samples/s in a job's run.json, summed over its actors (a GPU-shaped
    device's at the batch its actor ran)."""
    return float(sum(a.get("device_rate") or 0.0 for a in run["actors"]))


def start_ray(cpus: int, resources: dict[str, float] | None = None) -> None:
    import ray

    from rayinfer.jobs.cluster import init_local_ray

    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=cpus, resources=resources or {}, include_dashboard=False, log_to_driver=False,
                   logging_level=logging.ERROR)
    try:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    except Exception:  # noqa: BLE001 - Ray Data not installed: its modes are skipped
        pass


def repeat_coco(src: Path, n: int, dest: Path) -> Path:
    """A COCO-layout folder of `n` images: the source images repeated (links) under new ids."""
    ann = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    images = sorted(ann["images"], key=lambda im: im["id"])
    by_image: dict[int, list[dict]] = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    (dest / "val2017").mkdir(parents=True, exist_ok=True)
    (dest / "annotations").mkdir(exist_ok=True)
    out_images, out_anns = [], []
    for i in range(n):
        im = images[i % len(images)]
        new = dict(im, id=i + 1, file_name=f"{i + 1:012d}.jpg")
        link = dest / "val2017" / new["file_name"]
        if not link.exists():
            link.symlink_to((src / "val2017" / im["file_name"]).resolve())
        out_images.append(new)
        out_anns += [dict(a, id=len(out_anns) + k + 1, image_id=i + 1) for k, a in enumerate(by_image.get(im["id"], []))]
    data = dict(ann, images=out_images, annotations=out_anns)
    (dest / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return dest


def _bench_set(data_root: Path, images: int, prefix: str) -> tuple[Path, Path, Any, list, list[str]]:
    """(work folder, repeated COCO root, its dataset, samples, image paths)."""
    import tempfile

    from rayinfer.datasets.coco import CocoDataset

    work = Path(tempfile.mkdtemp(prefix=prefix))
    root = repeat_coco(data_root, images, work / "coco")
    ds = CocoDataset(root)
    samples = ds.samples()
    return work, root, ds, samples, [str(root / s.file) for s in samples]


def _rayinfer(cfg_kwargs: dict) -> tuple[float, dict]:
    """Run the full job; (samples/s from actor start to last result, run.json)."""
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import run_job

    outcome = run_job(JobConfig(progress=False, report=False, overwrite=True, **cfg_kwargs))
    t = outcome.run["timings"]
    return outcome.run["counts"]["processed_this_run"] / (t["setup_s"] + t["inference_s"]), outcome.run
