"""End-to-end detectors (YOLO26, YOLOv10, any Ultralytics export with `nms=True`): output
[B, N, 6] = x1, y1, x2, y2 in model-input pixels, score, class index, with NMS done inside
the graph (zero-padded, normally best first); input as YOLOv8's (RGB / 255, letterboxed to
the centre with grey 114).

Decoding keeps the rows scoring above `conf_thres`, best first whatever order the model
returns them in, at most `max_det`, and maps them back from the letterbox, clipped. There is
no NMS to do, so the NMS options are not this family's. The class count comes from the
model's `names` metadata where it has one (Ultralytics' exports do), else from the dataset.
Recognised by its output shape; Ultralytics' `end2end` metadata, where present, must agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rayinfer.actors.families.detection import DetectionFamily, best_first, names_count, one_3d_output
from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample
from rayinfer.datasets.images import Letterbox


class EndToEnd(DetectionFamily):
    name = "end2end"

    @classmethod
    def matches(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                metadata: Mapping[str, str] | None = None) -> str | None:
        wrong = one_3d_output(outputs)
        if wrong:
            return wrong
        if outputs[0].shape[2] != 6:
            return f"output {outputs[0].describe()} is not [B, N, 6] (x1, y1, x2, y2, score, class)"
        if str((metadata or {}).get("end2end", "True")).lower() == "false":
            return "its metadata says end2end: False"
        return None

    @classmethod
    def num_classes(cls, outputs: Sequence[TensorSpec], metadata: Mapping[str, str] | None = None) -> int | None:
        return names_count(metadata)

    def preprocess(self, raw: np.ndarray, sample: Sample) -> tuple[dict[str, np.ndarray], Letterbox]:
        return self.ultralytics_letterbox(raw, sample)

    def decode(self, outputs: Sequence[np.ndarray], geometry: Letterbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.asarray(outputs[0][0], np.float32)
        keep = best_first(rows[:, 4], self.options.conf_thres, self.options.max_det)
        rows = rows[keep]
        return geometry.to_image(rows[:, :4]), rows[:, 4], rows[:, 5].round().astype(np.int64)
