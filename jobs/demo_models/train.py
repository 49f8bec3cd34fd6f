"""Train the built-in demo models on the synthetic sets and export them to ONNX.

    pip install -e ".[train]" && python jobs/demo_models/train.py [--out jobs/demo_models]

- `detector.onnx`: a small anchor-free detector for the synthetic shapes. Its output is
  in Ultralytics' YOLOv8 layout ([1, 4 + classes, cells]: cx, cy, w, h in input pixels,
  then per-class scores), so the stock YOLOv8 family decodes it.
- `depth.onnx`: a small U-Net that maps a synthetic NYU-style frame to metric depth.
  Its ONNX metadata declares the `resize` preprocessing profile.

Both train on CPU in a few minutes, on synthetic data generated with seeds that the demo
evaluation set (seed 0) does not use. The files are committed, so users need no torch.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from rayinfer.datasets.images import letterbox
from rayinfer.datasets.synthetic import SHAPES, nyu_scene, shapes_scene

log = logging.getLogger("rayinfer.train_demo")

DET_SIZE = 128
DET_STRIDE = 8
DEPTH_SIZE = 64


# -- data -----------------------------------------------------------------------------------
def detection_batch(rng: np.random.Generator, n: int, size: tuple[int, int] = (240, 320)
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
    """n letterboxed RGB images (uint8, DET_SIZE square) and their boxes (cx, cy, w, h, class)
    in input pixels, drawn like `datasets.synthetic.write_coco` draws them."""
    images, targets = [], []
    for _ in range(n):
        image, rows = shapes_scene(rng, *size)
        if rng.random() < 0.3:  # a little blur and JPEG-like noise
            image = cv2.GaussianBlur(image, (3, 3), 0)
        boxed, lb = letterbox(image, (DET_SIZE, DET_SIZE))
        images.append(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB))
        t = [((x + s / 2) * lb.gain_x + lb.left, (y + s / 2) * lb.gain_y + lb.top, s * lb.gain_x, s * lb.gain_y, c)
             for x, y, s, c in rows]
        targets.append(np.asarray(t, np.float32).reshape(-1, 5))
    return np.stack(images), targets


def depth_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n frames resized to DEPTH_SIZE (RGB uint8) and their depth (nearest, 0 = hole)."""
    rgbs, depths = [], []
    for _ in range(n):
        rgb, depth = nyu_scene(rng, 480, 640)
        rgbs.append(cv2.resize(rgb, (DEPTH_SIZE, DEPTH_SIZE), interpolation=cv2.INTER_LINEAR))
        depths.append(cv2.resize(depth, (DEPTH_SIZE, DEPTH_SIZE), interpolation=cv2.INTER_NEAREST))
    return np.stack(rgbs), np.stack(depths)


# -- models ---------------------------------------------------------------------------------
def build_detector(classes: int):  # noqa: ANN201 - torch is optional
    import torch
    from torch import nn

    def block(i: int, o: int, s: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.SiLU())

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(block(3, 16, 2), block(16, 32, 2), block(32, 48, 2), block(48, 64, 1),
                                      nn.Sequential(nn.Conv2d(64, 64, 3, 1, 2, dilation=2, bias=False),
                                                    nn.BatchNorm2d(64), nn.SiLU()),
                                      block(64, 64, 1))
            self.head = nn.Conv2d(64, 4 + classes, 1)
            g = DET_SIZE // DET_STRIDE
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            self.register_buffer("grid", torch.stack([xs, ys]).float().reshape(1, 2, -1) + 0.5)

        def raw(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x)).flatten(2)  # [B, 4 + C, cells]

        def decode(self, r: torch.Tensor) -> torch.Tensor:
            xy = (self.grid + 2.0 * torch.tanh(r[:, :2])) * DET_STRIDE
            wh = torch.exp(r[:, 2:4].clamp(-4, 4)) * 16.0
            return torch.cat([xy, wh, torch.sigmoid(r[:, 4:])], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decode(self.raw(x))

    return Detector()


def build_depth():  # noqa: ANN201
    import torch
    from torch import nn

    def block(i: int, o: int, s: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.e1, self.e2, self.e3, self.e4 = block(3, 16), block(16, 32, 2), block(32, 48, 2), block(48, 64, 2)
            self.d3, self.d2, self.d1 = block(64 + 48, 48), block(48 + 32, 32), block(32 + 16, 16)
            self.out = nn.Conv2d(16, 1, 1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            e1 = self.e1(x)
            e2 = self.e2(e1)
            e3 = self.e3(e2)
            e4 = self.e4(e3)
            d3 = self.d3(torch.cat([self.up(e4), e3], 1))
            d2 = self.d2(torch.cat([self.up(d3), e2], 1))
            d1 = self.d1(torch.cat([self.up(d2), e1], 1))
            return 10.0 * torch.sigmoid(self.out(d1))  # metres, 0..10

    return UNet()


# -- training -------------------------------------------------------------------------------
def detector_loss(model, images, targets, classes: int):  # noqa: ANN001, ANN201
    """Centre-sampling assignment: every cell within 1.5 cells of an object's centre
    (and inside its box) predicts it; focal-style BCE on scores, L1 + IoU on boxes."""
    import torch
    import torch.nn.functional as F

    raw = model.raw(images)
    pred = model.decode(raw)
    b, _, cells = pred.shape
    centres = model.grid[0].T * DET_STRIDE  # [cells, 2]
    score_target = torch.zeros(b, classes, cells)
    box_loss, n_pos = torch.zeros(()), 0
    for i, t in enumerate(targets):
        if len(t) == 0:
            continue
        t = torch.from_numpy(t)
        d = (centres[None] - t[:, None, :2]).abs()  # [objects, cells, 2]
        inside = (d[..., 0] < t[:, None, 2] / 2) & (d[..., 1] < t[:, None, 3] / 2)
        near = (d.max(-1).values < 1.5 * DET_STRIDE) & inside
        dist = d.pow(2).sum(-1).masked_fill(~near, float("inf"))
        best = dist.argmin(0)  # each cell takes its nearest object
        pos = torch.isfinite(dist.min(0).values)
        if not pos.any():
            continue
        obj = t[best[pos]]
        p = pred[i, :4, pos].T
        score_target[i, obj[:, 4].long(), torch.nonzero(pos).squeeze(1)] = 1.0
        box_loss = box_loss + F.l1_loss(p[:, :2], obj[:, :2], reduction="sum") / DET_STRIDE
        box_loss = box_loss + F.l1_loss(torch.log(p[:, 2:4]), torch.log(obj[:, 2:4]), reduction="sum")
        n_pos += int(pos.sum())
    logits = raw[:, 4:]
    bce = F.binary_cross_entropy_with_logits(logits, score_target, reduction="none")
    prob = torch.sigmoid(logits)
    focal = bce * ((score_target - prob).abs() ** 2)
    n = max(1, n_pos)
    return focal.sum() / n * 4.0 + box_loss / n


def train_detector(seconds: float, seed: int = 1):  # noqa: ANN201
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_detector(len(SHAPES))
    images, targets = detection_batch(rng, 2400)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    t0, step = time.monotonic(), 0
    model.train()
    while time.monotonic() - t0 < seconds:
        idx = rng.integers(0, len(images), 32)
        loss = detector_loss(model, x_all[idx], [targets[i] for i in idx], len(SHAPES))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log.info("detector step %d loss %.3f (%.0fs)", step, float(loss.detach()), time.monotonic() - t0)
        if step == 600:
            for group in opt.param_groups:
                group["lr"] = 1e-3
    model.eval()
    return model


def train_depth(seconds: float, seed: int = 2):  # noqa: ANN201
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_depth()
    rgb, depth = depth_batch(rng, 2000)
    x_all = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    y_all = torch.from_numpy(depth)[:, None]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0, step = time.monotonic(), 0
    model.train()
    while time.monotonic() - t0 < seconds:
        idx = torch.from_numpy(rng.integers(0, len(rgb), 16))
        y = y_all[idx]
        pred = model(x_all[idx])
        valid = y > 1e-3
        loss = (torch.log(pred[valid] + 1e-3) - torch.log(y[valid])).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            log.info("depth step %d loss %.3f (%.0fs)", step, float(loss.detach()), time.monotonic() - t0)
    model.eval()
    return model


def export(model, path: Path, shape: tuple[int, ...], input_name: str, output_name: str,  # noqa: ANN001
           metadata: dict[str, str]) -> None:
    import onnx
    import torch

    torch.onnx.export(model, torch.zeros(shape), str(path), input_names=[input_name], output_names=[output_name],
                      opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    for k, v in metadata.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(m, str(path))
    log.info("wrote %s (%.0f KB)", path, path.stat().st_size / 1024)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seconds", type=float, default=150.0, help="training time per model")
    parser.add_argument("--models", default="detector,depth", help="which to train (comma-separated)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    names = {i: n for i, (_, n) in enumerate(SHAPES)}
    which = set(args.models.split(","))
    if "detector" in which:
        det = train_detector(args.seconds)
        export(det, args.out / "detector.onnx", (1, 3, DET_SIZE, DET_SIZE), "images", "output0",
               {"names": repr(names), "imgsz": repr([DET_SIZE, DET_SIZE]), "stride": str(DET_STRIDE),
                "description": "rayinfer demo detector (synthetic shapes), trained by jobs/demo_models/train.py"})
    if "depth" not in which:
        return 0
    depth = train_depth(args.seconds)
    export(depth, args.out / "depth.onnx", (1, 3, DEPTH_SIZE, DEPTH_SIZE), "input", "depth",
           {"rayinfer.depth_profile": "resize",
            "description": "rayinfer demo depth U-Net (synthetic NYU-style frames), trained by jobs/demo_models/train.py"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
