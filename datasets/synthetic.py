"""Small synthetic datasets in the real layouts, generated on demand.

- `write_coco`: `val2017/*.jpg` + `annotations/instances_val2017.json`, images of
  coloured shapes on textured backgrounds, one category per shape kind.
- `write_nyu`: `val/official/*.h5` with `rgb` 3xHxW uint8 and `depth` HxW float32
  (0 = no reading), scenes of a tilted floor plane and boxes at known depths.

Used by the tests and by the built-in demo; deterministic for a given seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

#: Synthetic detection categories (COCO-style non-contiguous ids on purpose).
SHAPES = [(1, "square"), (3, "disc"), (7, "triangle")]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.integers(40, 200, size=3)
    noise = rng.normal(0, 12, size=(h, w, 3))
    ramp = np.linspace(-20, 20, w)[None, :, None]
    return np.clip(base + noise + ramp, 0, 255).astype(np.uint8)


def _draw(image: np.ndarray, kind: str, x: int, y: int, s: int, color: tuple[int, int, int]) -> None:
    if kind == "square":
        cv2.rectangle(image, (x, y), (x + s - 1, y + s - 1), color, -1)
    elif kind == "disc":
        cv2.circle(image, (x + s // 2, y + s // 2), s // 2, color, -1)
    else:
        pts = np.array([[x + s // 2, y], [x, y + s - 1], [x + s - 1, y + s - 1]], np.int32)
        cv2.fillPoly(image, [pts], color)


def shapes_scene(rng: np.random.Generator, h: int, w: int, max_objects: int = 4
                 ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """One BGR image of non-overlapping shapes on a textured background, and its objects
    as (x, y, side, index into SHAPES)."""
    image = _background(rng, h, w)
    objects: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        s = int(rng.integers(min(h, w) // 8, min(h, w) // 3))
        for _attempt in range(20):
            x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            if all(x + s <= bx or bx + bs <= x or y + s <= by or by + bs <= y for bx, by, bs, _ in objects):
                break
        else:
            continue
        shape = int(rng.integers(len(SHAPES)))
        _draw(image, SHAPES[shape][1], x, y, s, tuple(int(c) for c in rng.integers(0, 256, 3)))
        objects.append((x, y, s, shape))
    return image, objects


def write_coco(root: str | Path, n_images: int = 24, size: tuple[int, int] = (240, 320), seed: int = 0,
               max_objects: int = 4) -> Path:
    """A COCO-format detection set; returns `root`."""
    root = Path(root)
    (root / "val2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    h, w = size
    for i in range(n_images):
        image_id = 1000 + i
        image, objects = shapes_scene(rng, h, w, max_objects)
        for x, y, s, shape in objects:
            cat, kind = SHAPES[shape]
            area = {"square": s * s, "disc": np.pi * s * s / 4, "triangle": s * s / 2}[kind]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                "bbox": [x, y, s, s], "area": float(area), "iscrowd": 0})
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(root / "val2017" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    data = {
        "info": {"description": "rayinfer synthetic shapes", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": n, "supercategory": "shape"} for c, n in SHAPES],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def nyu_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic frame: (rgb HxWx3 uint8, depth HxW float32 metres, 0 = hole)."""
    rows = np.arange(h, dtype=np.float32)[:, None]
    horizon = h * rng.uniform(0.3, 0.45)
    floor = np.where(rows > horizon, 1.5 * h / np.maximum(rows - horizon, 1.0), 9.0)
    depth = np.broadcast_to(np.minimum(floor, rng.uniform(5.0, 9.0)), (h, w)).astype(np.float32).copy()
    shade = np.clip(255 - depth * 22, 0, 255)
    rgb = np.stack([shade * 0.8, shade * 0.9, shade], -1)
    for _ in range(int(rng.integers(1, 4))):
        bh, bw = int(rng.integers(h // 6, h // 3)), int(rng.integers(w // 8, w // 3))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        d = float(rng.uniform(1.0, 4.0))
        depth[y : y + bh, x : x + bw] = d
        tint = rng.uniform(0.6, 1.0, 3)
        # lit like the floor: the brightest channel says how far the box is, the tint varies
        rgb[y : y + bh, x : x + bw] = (255 - d * 22) * tint / tint.max()
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    holes = rng.random((h, w)) < 0.02
    depth[holes] = 0.0
    return rgb, depth


def write_nyu(root: str | Path, n_frames: int = 6, size: tuple[int, int] = (480, 640), seed: int = 0) -> Path:
    """An NYU-format depth set (`val/official/*.h5`); returns `root`."""
    import h5py

    root = Path(root)
    folder = root / "val" / "official"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n_frames):
        rgb, depth = nyu_scene(rng, *size)
        with h5py.File(folder / f"{i:05d}.h5", "w") as f:
            f.create_dataset("rgb", data=rgb.transpose(2, 0, 1))
            f.create_dataset("depth", data=depth)
    return root
