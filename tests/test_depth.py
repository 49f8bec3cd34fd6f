"""Depth pieces on synthetic data: reader, profiles, transform, metrics, alignment."""

from __future__ import annotations

import sys
import subprocess
import h5py
import numpy as np
import pytest

from rayinfer.actors.model import TensorSpec
from rayinfer.datasets.base import Sample, SampleError, SetupError
from rayinfer.actors.families.depth import DepthFamily
from rayinfer.datasets.depth import (
    DEPTH_BINS,
    METRIC_NAMES,
    DepthOptions,
    PROFILES,
    evaluate_image,
    decode_depth,
    depth_metrics,
    eval_mask,
    evaluate_prediction,
    transform,
)
from rayinfer.datasets.nyu import NyuDataset
from rayinfer.datasets.synthetic import write_nyu


def test_metrics_on_known_values():
    gt = np.array([1.0, 2.0, 4.0])
    m = depth_metrics(gt, gt)
    assert m["abs_rel"] == 0 and m["rmse"] == 0 and m["delta1"] == 1 and m["silog"] == 0
    m = depth_metrics(gt * 2, gt)  # a pure scale error: silog is scale-invariant
    assert m["abs_rel"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(gt**2)))
    assert m["rmse_log"] == pytest.approx(np.log(2))
    assert m["log10"] == pytest.approx(np.log10(2))
    assert m["silog"] == pytest.approx(0.0, abs=1e-6)
    assert m["delta1"] == 0 and m["delta2"] == 0 and m["delta3"] == 0  # 2 > 1.25**3
    m = depth_metrics(gt * 1.5, gt)
    assert m["delta1"] == 0 and m["delta2"] == 1 and m["delta3"] == 1  # 1.25 < 1.5 < 1.25**2


def test_alignment_is_reported_separately():
    gt = np.full((8, 8), 3.0, np.float32)
    mask = np.ones((8, 8), np.uint8)
    raw, aligned, n = evaluate_prediction(np.full((8, 8), 1.5, np.float32), gt, mask, DepthOptions(align="median"))
    assert n == 64 and raw["abs_rel"] == pytest.approx(0.5) and aligned["abs_rel"] == pytest.approx(0.0)
    pred = np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8)
    _, lsq, _ = evaluate_prediction(pred, 2 * pred + 1, mask, DepthOptions(align="lsq", max_depth=10))
    assert lsq["rmse"] == pytest.approx(0.0, abs=1e-4)
    _, none, _ = evaluate_prediction(pred, gt, mask, DepthOptions())
    assert none is None


def test_one_pass_metrics_equal_their_definition_per_image_and_per_depth_range():
    """evaluate_image sums per-pixel terms once for the image and each depth range (one pass);
    each figure must equal the metrics computed on that range's pixels alone, NaN for an
    empty range, and a pixel at exactly max_depth (10 m, past the last range) only in the whole."""
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.2, 4.5, (60, 80)).astype(np.float32)  # no pixel at 5-10 m: empty ranges
    gt[0, :5] = 10.0
    gt[1, :5] = 0.0  # holes
    mask = np.ones_like(gt, np.uint8)
    mask[-5:] = 0
    pred = (gt * rng.uniform(0.6, 1.5, gt.shape) + 0.01).astype(np.float16)
    options = DepthOptions(align="median")
    raw, aligned, n, bins = evaluate_image(pred, gt, mask, options)
    p = np.clip(pred.astype(np.float32), options.min_depth, options.max_depth)
    valid = (gt > options.min_depth) & (gt <= options.max_depth) & (mask > 0)
    assert n == valid.sum()
    for m, v in depth_metrics(p[valid], gt[valid]).items():
        assert raw[m] == pytest.approx(v, rel=1e-12, abs=1e-12), m
    scaled = np.clip(p[valid] * (np.median(gt[valid]) / np.median(p[valid])), options.min_depth, options.max_depth)
    assert aligned == pytest.approx(depth_metrics(scaled, gt[valid]), rel=1e-12)
    for b, (lo, hi) in enumerate(zip(DEPTH_BINS[:-1], DEPTH_BINS[1:])):
        sel = valid & (gt >= lo) & (gt < hi)
        assert bins["bin_pixels"][b] == sel.sum()
        expected = depth_metrics(p[sel], gt[sel]) if sel.any() else dict.fromkeys(METRIC_NAMES, float("nan"))
        for m in METRIC_NAMES:
            assert bins[f"bin_{m}"][b] == pytest.approx(expected[m], rel=1e-12, abs=1e-12, nan_ok=True), (lo, m)
    assert sum(bins["bin_pixels"]) == n - 5  # the five 10 m pixels are in no range
    empty = evaluate_image(pred, gt, np.zeros_like(mask), options)
    assert empty[2] == 0 and np.isnan(empty[0]["rmse"]) and empty[3]["bin_pixels"] == [0] * (len(DEPTH_BINS) - 1)


def test_planar_rgb_reads_and_normalises_as_numpy_does(tmp_path):
    """The reader turns 3xHxW planes into HxWx3 with OpenCV and the family normalises with
    OpenCV's blobFromImage (both for speed): the same pixels as numpy's transpose and
    (x / 255 - mean) / std, to a float32 rounding."""
    rng = np.random.default_rng(4)
    planes = rng.integers(0, 256, (3, 48, 64), dtype=np.uint8)
    folder = tmp_path / "val/official"
    folder.mkdir(parents=True)
    with h5py.File(folder / "a.h5", "w") as f:
        f.create_dataset("rgb", data=planes)
        f.create_dataset("depth", data=rng.uniform(0.5, 5, (48, 64)).astype(np.float32))
    ds = NyuDataset(tmp_path)
    rgb, depth = ds.load(ds.samples()[0])
    assert rgb.shape == (48, 64, 3) and rgb.flags.c_contiguous and (rgb == planes.transpose(1, 2, 0)).all()
    options = DepthOptions(profile="resize", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    family = DepthFamily([TensorSpec("x", (1, 3, 32, 40), np.dtype(np.float32))], options)
    feed, _ = family.preprocess((rgb, depth), Sample("a", "a.h5"))
    image = transform(rgb, family.profile, (32, 40), nearest=False).astype(np.float32) / 255.0
    expected = ((image - np.float32(options.mean)) / np.float32(options.std)).transpose(2, 0, 1)[None]
    assert feed["x"].dtype == np.float32 and feed["x"].flags.c_contiguous
    np.testing.assert_allclose(feed["x"], expected, rtol=0, atol=1e-6)


def test_valid_range_and_empty_mask():
    gt = np.array([[0.0, 0.5, 5.0, 12.0]], np.float32)
    raw, _, n = evaluate_prediction(np.ones_like(gt), gt, np.ones_like(gt, np.uint8), DepthOptions())
    assert n == 2  # 0 (hole) and 12 m (past max_depth) are excluded
    raw, _, n = evaluate_prediction(np.ones_like(gt), gt, np.zeros_like(gt, np.uint8), DepthOptions())
    assert n == 0 and np.isnan(raw["rmse"])


def test_fastdepth_transform_geometry():
    depth = np.arange(480 * 640, dtype=np.float32).reshape(480, 640)
    out = transform(depth, PROFILES["fastdepth"], (224, 224), nearest=True)
    assert out.shape == (224, 224)
    assert set(np.unique(out)) <= set(np.unique(depth))  # nearest: no new values
    mask = transform(eval_mask((480, 640), True), PROFILES["fastdepth"], (224, 224), nearest=True)
    assert mask.any() and not mask.all()
    assert eval_mask((240, 320), True).all()  # the Eigen crop is for 480x640 frames only
    assert not eval_mask((480, 640), True)[:45].any()
    assert eval_mask((480, 640), False).all()


def test_profiles_and_options_validation():
    with pytest.raises(ValueError, match="profile"):
        DepthOptions(profile="nope")
    with pytest.raises(ValueError, match="align"):
        DepthOptions(align="scale")
    assert DepthOptions(profile="resize", mean=(0.5, 0.5, 0.5)).resolved_profile().mean == (0.5, 0.5, 0.5)
    spec_nhwc = TensorSpec("x", (1, 512, 512, 3), np.dtype(np.float32))
    family = DepthFamily([spec_nhwc], DepthOptions(profile="unet"))
    rgb = np.zeros((100, 120, 3), np.uint8)
    feed, (gt, _) = family.preprocess((rgb, np.ones((100, 120), np.float32)), Sample("a", "a.h5"))
    assert feed["x"].shape == (1, 512, 512, 3) and gt.shape == (512, 512)
    with pytest.raises(SetupError, match="image input"):
        DepthFamily([TensorSpec("x", (1, 3), np.dtype(np.float32))], DepthOptions())


def test_a_depth_model_is_one_map_per_image_and_a_detector_is_refused(tmp_path):
    def spec(*shape):
        return [TensorSpec("t", shape, np.dtype(np.float32))]

    image = spec(1, 3, 224, 224)
    for ok in ((1, 1, 224, 224), (1, 112, 112), (1, 224, 224, 1), (1, 1, None, None)):
        assert DepthFamily.matches(image, spec(*ok)) is None, ok
    assert DepthFamily.matches(spec(1, 480, 640, 3), spec(1, 240, 320)) is None  # NHWC input
    assert "not shaped like its 640x640 image input" in DepthFamily.matches(spec(1, 3, 640, 640), spec(1, 84, 8400))
    assert "not one map per image" in DepthFamily.matches(image, spec(1, 3, 224, 224))
    assert "2 outputs" in DepthFamily.matches(image, spec(1, 1, 8, 8) + spec(1, 1, 8, 8))
    # through the command line: a detector given to the depth task is one line, exit 2, nothing run
    from tests.conftest import make_const_detector

    detector = make_const_detector(tmp_path / "det.onnx", 64, np.zeros((0, 6)), nc=80)  # [1, 84, 8] output
    root = write_nyu(tmp_path / "nyu", n_frames=2, size=(48, 64), seed=1)
    proc = subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", "nyu", "--data-root", str(root), "--model",
                           str(detector), "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "the model is not a depth model" in lines[0] and "rayinfer run coco" in lines[0]
    assert not (tmp_path / "out").exists()


def test_depth_family_saves_float16_and_metrics_match_the_saved_map():
    spec = TensorSpec("input", (1, 3, 224, 224), np.dtype(np.float32))
    family = DepthFamily([spec], DepthOptions())
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 8, (480, 640)).astype(np.float32)
    feed, meta = family.preprocess((rgb, depth), Sample("s", "s.h5"))
    assert feed["input"].shape == (1, 3, 224, 224) and feed["input"].max() <= 1.0
    pred = rng.uniform(0.5, 8, (1, 1, 112, 112)).astype(np.float32)  # smaller: resized to the gt
    record = family.postprocess([pred], meta, Sample("s", "s.h5"))
    saved = decode_depth(record["depth"], record["height"], record["width"])
    assert saved.dtype == np.float16 and saved.shape == (224, 224)
    again, _, _ = evaluate_prediction(saved, *meta, DepthOptions())
    assert again["abs_rel"] == record["abs_rel"]


def test_nyu_reader_and_bad_files(tmp_path):
    root = write_nyu(tmp_path / "nyu", n_frames=3, size=(120, 160))
    ds = NyuDataset(root)
    samples = ds.samples()
    assert [s.sample_id for s in samples] == ["00000", "00001", "00002"]
    rgb, depth = ds.load(samples[0])
    assert rgb.shape == (120, 160, 3) and depth.shape == (120, 160) and (depth == 0).any()
    folder = root / "val/official"
    good = (folder / "00000.h5").read_bytes()
    (folder / "truncated.h5").write_bytes(good[: len(good) // 3])
    with h5py.File(folder / "nodepth.h5", "w") as f:
        f.create_dataset("rgb", data=np.zeros((3, 8, 8), np.uint8))
    with h5py.File(folder / "badshape.h5", "w") as f:
        f.create_dataset("rgb", data=np.zeros((3, 8, 8), np.uint8))
        f.create_dataset("depth", data=np.zeros((4, 4), np.float32))
    with pytest.raises(SampleError, match="truncated.h5: not a readable HDF5"):
        ds.load(Sample("truncated", "val/official/truncated.h5"))
    with pytest.raises(SampleError, match=r"nodepth.h5: no \['depth'\] dataset"):
        ds.load(Sample("nodepth", "val/official/nodepth.h5"))
    with pytest.raises(SampleError, match=r"badshape.h5: 'depth' is \[4, 4\]"):
        ds.load(Sample("badshape", "val/official/badshape.h5"))
    with pytest.raises(SetupError, match="no .h5 files"):
        NyuDataset(tmp_path / "empty").samples()
    assert [s.sample_id for s in NyuDataset(root, sample_ids=["00001"]).samples()] == ["00001"]
