"""The depth model family: an RGB frame in, a metric depth map out, with per-image metrics.

The profile (datasets/depth.py) says how the model wants its input; the ground truth and
mask go through the same geometric transform, so the metrics compare pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SetupError
from rayinfer.datasets.depth import DepthOptions, depth_schema, eval_mask, evaluate_image, transform


class DepthFamily:
    """RGB frame in, metric depth map out (saved as float16), with per-image metrics."""

    def __init__(self, inputs: Sequence[TensorSpec], options: DepthOptions,
                 metadata: dict[str, str] | None = None) -> None:
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise SetupError(f"depth model needs one image input [N, 3, H, W] or [N, H, W, 3], got "
                             f"{[i.describe() for i in inputs]}")
        spec = inputs[0]
        self.input_name = spec.name
        self.nhwc = spec.shape[3] == 3 and spec.shape[1] != 3
        dims = spec.shape[1:3] if self.nhwc else spec.shape[2:4]
        self.profile = options.resolved_profile((metadata or {}).get("rayinfer.depth_profile"))
        self.options = replace(options, profile=self.profile.name)
        if None in dims and self.profile.size is None:
            raise SetupError(f"model input '{spec.name}' has dynamic size {spec.describe()}; "
                             "use a profile with a fixed size")
        self.size: tuple[int, int] = self.profile.size or (int(dims[0]), int(dims[1]))  # type: ignore[arg-type]
        self.schema = depth_schema(options.align != "none")
        self._mean = np.asarray(self.profile.mean, np.float32)
        self._std = np.asarray(self.profile.std, np.float32)
        #: the evaluation mask after the transform, per frame size (frames of a set share one)
        self._masks: dict[tuple[int, ...], np.ndarray] = {}

    @staticmethod
    def matches(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
        """None when the model outputs one depth map per image ([N, 1, H, W], [N, H, W, 1] or
        [N, H, W], shaped about like its image input), else why not: a detector's [1, 84, 8400]
        would otherwise be read as an 84 x 8400 'map' and scored."""
        if len(outputs) != 1:
            return f"it has {len(outputs)} outputs ({[o.describe() for o in outputs]}), not one depth map"
        shape = outputs[0].shape
        if len(shape) == 4 and 1 in (shape[1], shape[3]):
            dims = (shape[2], shape[3]) if shape[1] == 1 else (shape[1], shape[2])
        elif len(shape) == 3:
            dims = (shape[1], shape[2])
        else:
            return (f"its output {outputs[0].describe()} is not one map per image "
                    "([N, 1, H, W], [N, H, W, 1] or [N, H, W])")
        image = inputs[0].shape if len(inputs) == 1 and len(inputs[0].shape) == 4 else None
        if image is not None and None not in dims:
            h, w = (image[1], image[2]) if image[3] == 3 and image[1] != 3 else (image[2], image[3])
            if h and w and not 0.5 <= (dims[0] / dims[1]) / (h / w) <= 2.0:
                return (f"its output {outputs[0].describe()} is not shaped like its {h}x{w} image input "
                        f"(a {dims[0]}x{dims[1]} 'map')")
        return None

    def preprocess(self, raw: tuple[np.ndarray, np.ndarray], sample: Sample
                   ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        rgb, depth = raw
        image = transform(rgb, self.profile, self.size, nearest=False)
        if self.nhwc:
            x = ((image.astype(np.float32) / 255.0 - self._mean) / self._std)[None]
        else:
            # /255, - mean and HWC -> NCHW in one pass (0.15 ms against 1 ms for numpy's three)
            x = cv2.dnn.blobFromImage(image, 1 / 255.0, mean=tuple(float(m) * 255 for m in self._mean))
            if (self._std != 1).any():
                x /= self._std.reshape(1, 3, 1, 1)
        gt = transform(depth, self.profile, self.size, nearest=True)
        mask = self._masks.get(depth.shape)
        if mask is None:
            mask = transform(eval_mask(depth.shape, self.options.eigen_crop), self.profile, self.size, nearest=True)
            mask.flags.writeable = False  # shared by every frame of this size
            self._masks[depth.shape] = mask
        return {self.input_name: np.ascontiguousarray(x, np.float32)}, (gt, mask)

    def postprocess(self, outputs: Sequence[np.ndarray], meta: tuple[np.ndarray, np.ndarray],
                    sample: Sample) -> dict[str, Any]:
        gt, mask = meta
        pred = np.squeeze(outputs[0]).astype(np.float32)
        if pred.ndim != 2:
            raise ValueError(f"depth output has shape {outputs[0].shape}; expected one HxW map")
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
        pred16 = np.clip(pred, self.options.min_depth, self.options.max_depth).astype(np.float16)
        raw, aligned, n, bins = evaluate_image(pred16, gt, mask, self.options)
        row: dict[str, Any] = {
            "height": gt.shape[0],
            "width": gt.shape[1],
            "depth": pred16.tobytes(),
            "valid_pixels": n,
            "gt_mean": float(gt[(gt > self.options.min_depth) & (mask > 0)].mean()) if n else float("nan"),
            **raw,
        }
        if aligned is not None:
            row.update({f"aligned_{k}": v for k, v in aligned.items()})
        row.update(bins)  # the report's metrics by depth range
        return row
