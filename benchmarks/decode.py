"""`decode`: the opt-in reduced-scale JPEG decode (`--reduced-decode`), with and without, for
accuracy and host speed.

It applies only to images at least twice the model input; no COCO val2017 image is (the
largest side is 640, YOLOv8n's input). So the set is measured as it is (the option must
change nothing there) and upscaled by `factor` (each image resized with OpenCV's bicubic
filter and saved again as a quality-95 JPEG, its boxes, areas and sizes scaled): a stand-in
for high-resolution sources, where it decodes at 1/2 instead of decoding whole and
shrinking. For each set and setting:

- AP, AP50: the whole job with the real model (`--model`) on the CPU;
- host ms per image: read + decode + letterbox + blob + output decode + NMS + the row, one
  image at a time (the accel bench's plain loop, with the same real output);
- img/s: the whole job on the set repeated to `--images`, simulated fast devices (as the
  accel bench's `--latency-ms 2 --capacity 8`): the host is the limit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rayinfer.actors.model import available_cpus
from benchmarks.accel import _accel_family, host_costs, real_output
from benchmarks.common import _rayinfer, repeat_coco, start_ray
from rayinfer.jobs.format import format_table

ANNOTATIONS = Path("annotations") / "instances_val2017.json"


def upscale_coco(src: Path, factor: int, dest: Path) -> Path:
    """A COCO-layout copy of `src` with every image `factor` times larger (bicubic, JPEG
    quality 95) and its annotations scaled to match (boxes, polygons, areas, sizes)."""
    ann = json.loads((src / ANNOTATIONS).read_text())
    (dest / "val2017").mkdir(parents=True, exist_ok=True)
    (dest / "annotations").mkdir(exist_ok=True)
    for im in ann["images"]:
        image = cv2.imread(str(src / "val2017" / im["file_name"]), cv2.IMREAD_COLOR)
        big = cv2.resize(image, (image.shape[1] * factor, image.shape[0] * factor), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(dest / "val2017" / im["file_name"]), big, [cv2.IMWRITE_JPEG_QUALITY, 95])
        im["height"], im["width"] = big.shape[:2]
    for a in ann["annotations"]:
        a["bbox"] = [v * factor for v in a["bbox"]]
        a["area"] = a["area"] * factor * factor
        if isinstance(a.get("segmentation"), list):  # polygons; crowd RLEs are not used by bbox eval
            a["segmentation"] = [[v * factor for v in poly] for poly in a["segmentation"]]
    (dest / ANNOTATIONS).write_text(json.dumps(ann))
    return dest


def reduced_images(root: Path, size: tuple[int, int]) -> tuple[int, int]:
    """(images the reduced decode applies to, images) for a model input `size`."""
    from rayinfer.datasets.images import read_image

    ann = json.loads((root / ANNOTATIONS).read_text())
    applies = 0
    for im in ann["images"]:
        full = (im["height"], im["width"])
        applies += read_image(root / "val2017" / im["file_name"], full, draft=size).shape[:2] != full
    return applies, len(ann["images"])


def _job(root: Path, model: str, out: Path, reduced: bool, **kw: Any) -> tuple[float, dict, dict]:
    """(img/s from actor start to the last result, metrics, run.json) of the whole job."""
    rate, run = _rayinfer(dict(task="coco", data_root=str(root), model=model, output=str(out),
                               options={"reduced_decode": reduced}, **kw))
    return rate, json.loads((out / "metrics.json").read_text()), run


def run_decode_bench(data_root: Path, model: Path, images: int, factor: int = 2, repeat: int = 2, devices: int = 2,
                     latency_ms: float = 2.0, capacity: int = 8) -> dict[str, float]:
    import tempfile

    from rayinfer.datasets.coco import CocoDataset

    cpus = available_cpus()
    work = Path(tempfile.mkdtemp(prefix="rayinfer-decode-"))
    sets = {"as_is": data_root, f"x{factor}": upscale_coco(data_root, factor, work / f"coco-x{factor}")}
    first = CocoDataset(data_root)
    output = np.load(real_output(first, first.samples()[0], model, work / "output.npy"))
    uri = (f"sim://?latency_ms={latency_ms:g}&capacity={capacity}&input=1x3x640x640&output=1x84x8400"
           f"&output_file={work / 'output.npy'}")
    start_ray(cpus, {"sim_device": devices})
    rows: list[list[object]] = []
    result: dict[str, float] = {}
    for name, root in sets.items():
        applies, count = reduced_images(root, (640, 640))
        repeated = repeat_coco(root, images, work / f"repeated-{name}")
        ds = CocoDataset(root)
        samples = ds.samples()
        speed: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
        for rep in range(repeat):  # alternating (ABBA...): the machine's drift falls on both
            for reduced in ((False, True) if rep % 2 == 0 else (True, False)):
                host = host_costs(ds, samples, output, 2 * len(samples), 1, _accel_family(ds.category_ids, reduced))
                rate, _, run = _job(repeated, uri, work / "speed", reduced, resource="sim_device")
                actors = run["actors"]
                actor_ms = sum(a["host_cpu_s"] for a in actors) * 1000 / max(1, sum(a["samples"] for a in actors))
                speed[reduced].append((sum(host.values()) * 1e3, actor_ms, rate))
        for reduced in (False, True):
            _, metrics, _ = _job(root, str(model), work / "accuracy", reduced)
            host_ms, actor_ms, rate = (float(np.median(v)) for v in zip(*speed[reduced]))
            setting = "reduced" if reduced else "full"
            rows.append([name, setting, f"{applies}/{count}", f"{metrics['AP']:.4f}", f"{metrics['AP50']:.4f}",
                         host_ms, actor_ms, rate])
            key = f"{name}_{setting}"
            result.update({f"{key}_ap": round(metrics["AP"], 4), f"{key}_ap50": round(metrics["AP50"], 4),
                           f"{key}_host_ms": round(host_ms, 3), f"{key}_actor_ms": round(actor_ms, 3),
                           f"{key}_img_s": round(rate, 2)})
    print(f"decode: {model.name} on {data_root.name} as is and upscaled {factor}x; speed: medians of {repeat} "
          f"alternating runs on {images} images, {devices} simulated devices ({capacity} streams, {latency_ms:g} ms), "
          f"{cpus} CPUs")
    print(format_table(["set", "decode", "reduced", "AP", "AP50", "host ms/img (plain loop)", "actors' CPU ms/img",
                        "img/s"], rows))
    return result
