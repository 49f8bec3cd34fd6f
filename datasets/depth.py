"""Monocular depth: model profiles, the ground truth transform and the standard metrics.

A profile declares a model's geometric transform and normalisation. The ground
truth and the evaluation mask go through the same geometric transform as the input
(nearest-neighbour), so prediction and ground truth are compared pixel for pixel.

Metrics (Eigen et al. 2014; silog as in the KITTI benchmark, x100) are computed per
image on valid pixels, then averaged over images:
abs_rel, sq_rel, rmse, rmse_log, log10, silog, delta1, delta2, delta3.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import pyarrow as pa

from rayinfer.datasets.base import SampleError

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
ALIGNMENTS = ("none", "median", "lsq")
#: Eigen crop of the 480x640 NYU frames: rows 45:471, columns 41:601.
EIGEN_CROP = (45, 471, 41, 601)


@dataclass(frozen=True)
class Profile:
    """Geometric transform + normalisation of one model family's input.

    Steps, each optional: scale so the height is `scale_to_height`; centre-crop
    `crop` (h, w); resize to `size` (h, w; None = the model's input size).
    Pixels: RGB / 255, then (x - mean) / std.
    """

    name: str
    scale_to_height: int | None = None
    crop: tuple[int, int] | None = None
    size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


PROFILES = {
    # FastDepth (Wofk et al. 2019) NYU validation transform.
    "fastdepth": Profile("fastdepth", scale_to_height=250, crop=(228, 304)),
    # Stretch to the model size; mean/std set by overrides (e.g. ImageNet).
    "resize": Profile("resize"),
    # The Keras UNet seed: resize to 512x512, float RGB in [0, 1], NHWC or NCHW.
    "unet": Profile("unet", size=(512, 512)),
}


@dataclass(frozen=True)
class DepthOptions:
    """Depth job options: a named profile plus overrides, alignment and the valid range."""

    # metadata: "help" for the command line (jobs/options.py builds the flags); "eval": the
    # option also applies to `rayinfer eval` (it changes the metrics, not the predictions)
    profile: str = field(default="auto", metadata={  # auto: the model's declared profile (ONNX metadata), else fastdepth
        "help": "depth preprocessing: auto (the model's declared profile) | fastdepth | resize | unet"})
    mean: tuple[float, float, float] | None = field(default=None, metadata={
        "help": "depth input mean R,G,B after /255 (overrides the profile)"})
    std: tuple[float, float, float] | None = field(default=None, metadata={
        "help": "depth input std R,G,B after /255 (overrides the profile)"})
    align: str = field(default="none", metadata={
        "help": "depth alignment for relative models: none | median | lsq", "eval": True})
    eigen_crop: bool = field(default=True, metadata={"help": "evaluate every pixel, not the Eigen crop", "eval": True})
    min_depth: float = field(default=1e-3, metadata={"help": "smallest valid ground-truth depth (m)", "eval": True})
    max_depth: float = field(default=10.0, metadata={"help": "largest valid ground-truth depth (m)", "eval": True})

    def __post_init__(self) -> None:
        if self.profile not in PROFILES and self.profile != "auto":
            raise ValueError(f"profile must be auto or one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {self.align!r}")
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if len(value) != 3:
                    raise ValueError(f"{name} needs 3 values (R, G, B), got {value}")
                object.__setattr__(self, name, tuple(float(v) for v in value))

    def resolved_profile(self, declared: str | None = None) -> Profile:
        """The profile to use: the named one, or for `auto` the one the model declares
        (`rayinfer.depth_profile` in its ONNX metadata), else fastdepth."""
        name = self.profile if self.profile != "auto" else (declared if declared in PROFILES else "fastdepth")
        p = PROFILES[name]
        if self.mean is not None:
            p = replace(p, mean=self.mean)
        if self.std is not None:
            p = replace(p, std=self.std)
        return p


# -- geometry -----------------------------------------------------------------------------
def transform(image: np.ndarray, profile: Profile, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Apply the profile's geometric steps. `nearest` for depth and masks."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if profile.scale_to_height:
        h, w = image.shape[:2]
        new_h = profile.scale_to_height
        new_w = int(w * new_h / h)
        image = cv2.resize(image, (new_w, new_h), interpolation=interp)
    if profile.crop:
        ch, cw = profile.crop
        h, w = image.shape[:2]
        if h < ch or w < cw:
            raise SampleError(f"frame {h}x{w} is smaller than the {ch}x{cw} crop", stage="preprocess")
        top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
        image = image[top : top + ch, left : left + cw]
    target = profile.size or size
    if image.shape[:2] != tuple(target):
        image = cv2.resize(image, (target[1], target[0]), interpolation=interp)
    return image


def eval_mask(shape: tuple[int, int], eigen_crop: bool) -> np.ndarray:
    """Evaluation region before the transform: the Eigen crop on 480x640 frames, else all."""
    mask = np.zeros(shape, np.uint8) if eigen_crop and shape == (480, 640) else np.ones(shape, np.uint8)
    if eigen_crop and shape == (480, 640):
        t, b, l, r = EIGEN_CROP
        mask[t:b, l:r] = 1
    return mask


# -- metrics --------------------------------------------------------------------------------
def align(pred: np.ndarray, gt: np.ndarray, method: str) -> np.ndarray:
    """Scale (median) or scale+shift (least squares) `pred` onto `gt` (valid pixels only)."""
    if method == "median":
        return pred * (np.median(gt) / max(np.median(pred), 1e-12))
    if method == "lsq":
        a = np.stack([pred, np.ones_like(pred)], 1).astype(np.float64)
        (s, t), *_ = np.linalg.lstsq(a, gt.astype(np.float64), rcond=None)
        return (s * pred + t).astype(pred.dtype)
    return pred


def depth_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The nine standard metrics over matching 1-D arrays of valid pixels (metres)."""
    terms = _terms(pred, gt)
    return {m: float(v) for m, v in _from_means([t.mean() for t in terms]).items()}


# Every metric is a mean of a per-pixel term (rmse, rmse_log and silog take roots of means), so
# one image's metrics and its metrics by depth range share the terms: computed once per image,
# summed over all valid pixels and per range (np.bincount).
_LANES = 16
_TERMS = ("abs_rel", "sq_rel", "sq", "log", "log_sq", "log10", "delta1", "delta2", "delta3")


def _terms(pred: np.ndarray, gt: np.ndarray) -> list[np.ndarray]:
    """The per-pixel terms of `_TERMS`, in float64, over matching 1-D arrays."""
    pred = pred.astype(np.float64)
    gt = gt.astype(np.float64)
    diff = pred - gt
    sq = diff * diff
    log_diff = np.log(pred) - np.log(gt)
    abs_log = np.abs(log_diff)
    ratio = np.maximum(pred / gt, gt / pred)
    return [np.abs(diff) / gt, sq / gt, sq, log_diff, log_diff * log_diff, abs_log * (1 / np.log(10)),
            ratio < 1.25, ratio < 1.25**2, ratio < 1.25**3]


def _from_means(means: list) -> dict[str, np.ndarray]:
    """The nine metrics from the means of `_TERMS` (floats, or arrays: one value per group)."""
    m = dict(zip(_TERMS, means))
    return {
        "abs_rel": m["abs_rel"],
        "sq_rel": m["sq_rel"],
        "rmse": np.sqrt(m["sq"]),
        "rmse_log": np.sqrt(m["log_sq"]),
        "log10": m["log10"],
        "silog": np.sqrt(np.maximum(m["log_sq"] - m["log"] ** 2, 0.0)) * 100,
        "delta1": m["delta1"],
        "delta2": m["delta2"],
        "delta3": m["delta3"],
    }


def valid_pixels(gt: np.ndarray, mask: np.ndarray, options: DepthOptions) -> np.ndarray:
    """Pixels that count: ground truth in (min_depth, max_depth] inside the evaluation mask."""
    return (gt > options.min_depth) & (gt <= options.max_depth) & (mask > 0)


def evaluate_image(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, options: DepthOptions
                   ) -> tuple[dict[str, float], dict[str, float] | None, int, dict[str, list]]:
    """One image's metrics: (raw, aligned or None, valid pixels, by depth range).

    `pred` is what was saved (float16 or float32, already at the ground truth's size);
    `gt` and `mask` are at that size. The metrics by depth range, one entry per DEPTH_BINS
    range: `bin_pixels` (its valid pixels) and `bin_<metric>` (NaN where it has none).
    """
    pred = np.clip(pred.astype(np.float32), options.min_depth, options.max_depth)
    valid = valid_pixels(gt, mask, options)
    p, g = pred[valid], gt[valid]
    n = len(g)
    nan = dict.fromkeys(METRIC_NAMES, float("nan"))
    n_bins = len(DEPTH_BINS) - 1
    if n == 0:
        bins = {"bin_pixels": [0] * n_bins, **{f"bin_{m}": [float("nan")] * n_bins for m in METRIC_NAMES}}
        return nan, (dict(nan) if options.align != "none" else None), 0, bins
    terms = _terms(p, g)
    raw = {m: float(v) for m, v in _from_means([t.mean() for t in terms]).items()}
    aligned = None
    if options.align != "none":
        aligned = depth_metrics(np.clip(align(p, g, options.align), options.min_depth, options.max_depth), g)
    # each valid pixel's range (past the last one, gt >= its end: group n_bins, dropped)
    group = np.zeros(n, np.intp)
    for edge in DEPTH_BINS[1:]:
        group += g >= edge
    count = np.bincount(group, minlength=n_bins + 1)[:n_bins]
    # Sums per range, each range spread over _LANES counters (neighbouring pixels, mostly in
    # one range, would add into one counter, each add waiting on the last: 2.2x slower)
    lanes = group * _LANES + np.arange(n) % _LANES
    groups = (n_bins + 1) * _LANES
    with np.errstate(invalid="ignore", divide="ignore"):  # a range without pixels: NaN
        means = [np.bincount(lanes, weights=t, minlength=groups).reshape(-1, _LANES).sum(1)[:n_bins] / count
                 for t in terms]
    bins: dict[str, list] = {"bin_pixels": count.tolist()}
    bins.update({f"bin_{m}": v.tolist() for m, v in _from_means(means).items()})
    return raw, aligned, n, bins


def evaluate_prediction(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, options: DepthOptions
                        ) -> tuple[dict[str, float], dict[str, float] | None, int]:
    """Per-image metrics (raw and, if asked, aligned) and the number of valid pixels (see
    `evaluate_image`)."""
    return evaluate_image(pred, gt, mask, options)[:3]


#: Ground-truth depth ranges (metres) of the sliced metrics: [lo, hi) each.
DEPTH_BINS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0)


def summarize_bins(predictions: pa.Table) -> list[dict]:
    """Metrics by depth range over a run's rows (`bin_*` columns, as `evaluate_image` makes
    them): per range, `range_m` [lo, hi], `images` with pixels in it, `pixels` summed, and
    each metric averaged over those images."""
    n_bins = len(DEPTH_BINS) - 1
    pixels = np.asarray(predictions.column("bin_pixels").to_pylist(), np.int64).reshape(-1, n_bins)
    has = pixels > 0
    summary = []
    for b, (lo, hi) in enumerate(zip(DEPTH_BINS[:-1], DEPTH_BINS[1:])):
        entry: dict = {"range_m": [lo, hi], "images": int(has[:, b].sum()), "pixels": int(pixels[:, b].sum())}
        summary.append(entry)
    for m in METRIC_NAMES:
        values = np.asarray(predictions.column(f"bin_{m}").to_pylist(), np.float64).reshape(-1, n_bins)
        for b, entry in enumerate(summary):
            entry[m] = float(np.mean(values[has[:, b], b])) if has[:, b].any() else float("nan")
    return summary


def depth_schema(aligned: bool) -> pa.Schema:
    fields = [
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("depth", pa.binary()),  # float16, row-major, metres, `height` x `width`
        pa.field("valid_pixels", pa.int64()),
        pa.field("gt_mean", pa.float32()),
    ]
    fields += [pa.field(m, pa.float64()) for m in METRIC_NAMES]
    if aligned:
        fields += [pa.field(f"aligned_{m}", pa.float64()) for m in METRIC_NAMES]
    n_bins = len(DEPTH_BINS) - 1
    fields += [pa.field("bin_pixels", pa.list_(pa.int64(), n_bins))]
    fields += [pa.field(f"bin_{m}", pa.list_(pa.float64(), n_bins)) for m in METRIC_NAMES]
    return pa.schema(fields)


def decode_depth(blob: bytes, height: int, width: int) -> np.ndarray:
    """A saved prediction back as a float16 array."""
    return np.frombuffer(blob, np.float16).reshape(height, width)
