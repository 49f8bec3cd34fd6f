"""Batched requests (actors/batching.py): a request carries up to B samples where the model's
batch axis allows it, each sample's result is its own, and `--batch auto` batches only where
the device gains from it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from rayinfer.actors.backends.simulated import SimulatedModel
from rayinfer.actors.batching import (BatchedModel, BatchingQueue, asked_batch, batch_axis, choose_batch,
                                      resolve_batch)
from rayinfer.actors.model import TensorSpec
from rayinfer.actors.queue import AsyncInferQueue
from rayinfer.datasets.base import SetupError
from rayinfer.jobs.config import JobConfig
from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.driver import EXIT_OK, run_job
from tests.conftest import ROOT, inference_actor, need_shared
from tests.test_jobs import coco_cfg

GPU_SIM = "sim://?engine=gpu&fixed_ms=1&per_item_ms=0.1&input=1x3x64x64&output=1x7x8"


class Doubler:
    """A model that doubles its input row by row, recording each batch it is given."""

    device = "gpu"

    def __init__(self, batch: int | None) -> None:
        self.inputs = (TensorSpec("x", (batch, 2), np.dtype(np.float32)),)
        self.outputs = (TensorSpec("y", (batch, 2), np.dtype(np.float32)),)
        self.seen: list[np.ndarray] = []

    def prepare(self, inputs):
        return inputs

    def run(self, feed):
        self.seen.append(feed["x"].copy())
        return [feed["x"] * 2]


def _sample(i: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), i, np.float32)}


def _feed(queue: BatchingQueue, callback, n: int, finished) -> None:
    """Samples 0..n-1 through `queue` (userdata: the index), until `finished()` holds; then close it."""
    queue.set_callback(callback)
    try:
        for i in range(n):
            queue.start_async(_sample(i), i)
        assert finished()
    finally:
        queue.close()


def test_a_fixed_batch_axis_is_padded_and_the_padding_never_comes_back():
    fixed = Doubler(4)
    out = BatchedModel(fixed, 4).run([_sample(1), _sample(2), _sample(3)])
    assert fixed.seen[0].shape == (4, 2) and not fixed.seen[0][3].any()  # padded with zeros
    np.testing.assert_array_equal(out[0], [[2, 2], [4, 4], [6, 6]])
    dynamic = Doubler(None)
    out = BatchedModel(dynamic, 8).run([_sample(5), _sample(6)])
    assert dynamic.seen[0].shape == (2, 2)  # a dynamic axis goes short
    np.testing.assert_array_equal(out[0], [[10, 10], [12, 12]])
    assert batch_axis(fixed) == 4 and batch_axis(dynamic) is None
    static = Doubler(None)
    static.static_shapes = True  # a runtime that builds an engine per input shape (TensorRT)
    out = BatchedModel(static, 8).run([_sample(7)] * 3)
    assert static.seen[0].shape == (8, 2) and out[0].shape == (3, 2)  # always the one size, padded


def test_samples_gather_into_batches_and_each_gets_its_own_output():
    model = Doubler(None)
    got: dict[int, np.ndarray] = {}
    sizes: list[int] = []
    done = threading.Event()

    def callback(request, i):
        assert request.error is None
        got[i] = request.outputs[0]
        sizes.append(request.batch)
        if len(got) == 10:
            done.set()

    queue = BatchingQueue(AsyncInferQueue(BatchedModel(model, 4), jobs=1), size=4, wait_ms=200)
    _feed(queue, callback, 10, lambda: done.wait(10))
    assert {i: float(v[0, 0]) for i, v in got.items()} == {i: 2.0 * i for i in range(10)}
    assert all(v.shape == (1, 2) for v in got.values())
    assert max(sizes) == 4 and queue.batches < 10 and queue.mean_fill == 10 / queue.batches


def test_a_batch_goes_short_once_its_oldest_sample_waited_the_batch_wait():
    model = Doubler(None)
    finished: list[float] = []
    queue = BatchingQueue(AsyncInferQueue(BatchedModel(model, 8), jobs=1), size=8, wait_ms=150)
    queue.set_callback(lambda request, _: finished.append(time.perf_counter()))
    try:
        t0 = time.perf_counter()
        queue.start_async(_sample(1), 0)
        queue.start_async(_sample(2), 1)
        assert queue.wait_all(10)
    finally:
        queue.close()
    assert len(finished) == 2 and model.seen[0].shape == (2, 2)
    assert min(finished) - t0 >= 0.14  # held for more, then sent short


def test_batch_n_is_refused_naming_the_axis_where_the_model_cannot_take_it(scale_model):
    from rayinfer.actors.backends.onnxruntime import OnnxModel

    model = OnnxModel(scale_model)
    with pytest.raises(SetupError, match=r"--batch 8: model input 'x' \[1, 4\] float32: its batch axis is fixed at 1"):
        asked_batch("8", model)
    assert asked_batch("1", model) == 1 and asked_batch("auto", model) is None
    fixed = SimulatedModel.from_uri("sim://?engine=gpu&batch=4&input=1x2&output=1x2")
    with pytest.raises(SetupError, match="fixed at 4; use --batch 4 or less"):
        asked_batch("8", fixed)
    assert asked_batch("2", fixed) == 2


def test_batch_8_on_a_model_fixed_at_batch_1_is_one_line_exit_2_and_nothing_written(tmp_path):
    model = need_shared("models", "yolov8n_int8.onnx")
    data = need_shared("data", "coco-val2017-mini")
    out = tmp_path / "out"
    cli = subprocess.run([sys.executable, "-m", "rayinfer.jobs", "run", "coco", "--data-root", str(data), "--model",
                          str(model), "--batch", "8", "--output", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert cli.returncode == 2, cli.stderr
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch 8: model input 'images' [1, 3, 640, 640] float32: its batch axis is fixed " \
                               "at 1" in lines[0], cli.stderr
    assert not out.exists()


def test_auto_batches_where_the_device_gains_from_it_and_nowhere_else(scale_model):
    from rayinfer.actors.backends.onnxruntime import OnnxModel

    def cfg(model: str, **kw) -> JobConfig:
        return JobConfig(task="null", data_root=".", model=model, output="o", **kw)

    gpu = "sim://?engine=gpu&fixed_ms=4&per_item_ms=0.25&input=1x2&output=1x2"
    streams = "sim://?latency_ms=1&capacity=2&input=1x2&output=1x2"
    assert resolve_batch(cfg(str(scale_model)), OnnxModel(scale_model), 2, 1) == (1, None)  # a CPU
    assert resolve_batch(cfg(streams), SimulatedModel.from_uri(streams), 4, 1) == (1, None)
    fixed = "sim://?engine=gpu&batch=4&input=1x2&output=1x2"
    assert resolve_batch(cfg(fixed), SimulatedModel.from_uri(fixed), 2, 1) == (4, None)
    assert resolve_batch(cfg(gpu, preprocess_in="request"), SimulatedModel.from_uri(gpu), 2, 1) == (1, None)
    chosen, probe = resolve_batch(cfg(gpu), SimulatedModel.from_uri(gpu), 2, 1)
    # 4 ms + 0.25 ms per sample: 64 samples take 20 ms, and its rate (3,200/s) is the best by far
    assert chosen == 64 and probe["cached"] is False and probe["rates"]["64"] > 3 * probe["rates"]["1"]
    # 4 ms + 2 ms per sample, two requests in flight on one engine: a request of 32 takes 68 ms and
    # waits as long behind the other, past the 100 ms cap; 16 (36 + 36 ms) is the largest within it
    slow = SimulatedModel.from_uri("sim://?engine=gpu&fixed_ms=4&per_item_ms=2&input=1x2&output=1x2")
    chosen, rates = choose_batch(slow, 2)
    assert chosen == 16 and set(rates) == {1, 2, 4, 8, 16}, rates
    # with one request in flight, 32 fits (68 ms), and 16's 444/s is under 0.95 of its 471/s
    chosen, rates = choose_batch(slow, 1)
    assert chosen == 32 and 64 not in rates, rates


def test_a_sample_that_fails_its_read_fails_alone_in_its_batch(tmp_path):
    root = write_coco(tmp_path / "coco", n_images=20, seed=3)
    images = sorted((root / "val2017").glob("*.jpg"))
    images[0].write_bytes(b"")
    images[5].write_bytes(b"\x89PNG not really" * 20)
    # a batch axis fixed at 4: auto runs batches of 4, the short ones padded
    actor = inference_actor(coco_cfg(root, GPU_SIM + "&batch=4", tmp_path / "out", batch_wait_ms=50))
    try:
        result = actor.process(0, actor.dataset.samples())
        info, stats = actor.info(), actor.stats()
    finally:
        actor.close()
    assert info["batch"] == 4 and info["preprocess_in"] == "loader"
    assert result.errors.num_rows == 2 and result.rows.num_rows == 18
    assert sorted(Path(f).name for f in result.errors.column("file").to_pylist()) == [images[0].name, images[5].name]
    assert 1 < stats["batch_fill"] <= 4
    # queue time includes the wait for the batch: it is recorded per sample, never negative
    assert min(result.rows.column("queue_ms").to_pylist()) >= 0


def test_a_job_on_a_gpu_shaped_device_records_its_batch_and_fill(ray_session, tmp_path):
    model = "sim://?engine=gpu&fixed_ms=2&per_item_ms=0.05&input=1x1&output=1x1"
    outcome = run_job(JobConfig(task="null", data_root=".", model=model, output=str(tmp_path / "out"), limit=600,
                                progress=False, report=False))
    assert outcome.exit_code == EXIT_OK and outcome.samples == 600
    run = json.loads((tmp_path / "out/run.json").read_text())
    actor = run["actors"][0]
    assert actor["batch"] == 64 and actor["batch_probe"]["rates"]["64"] > actor["batch_probe"]["rates"]["1"]
    assert 8 < actor["batch_fill"] <= 64
    assert actor["device_rate"] == pytest.approx(64 / (0.002 + 0.05e-3 * 64))
    # shards of two batches of the largest size auto may pick, so two shards in flight keep batches full
    assert len(run["timeline"]["runs"]) == 600 // 128 + 1


def test_batched_predictions_equal_single_ones_on_a_dynamic_batch_model(ray_session, tmp_path):
    model = need_shared("models", "yolov8n_fp32_dynbatch.onnx")
    data = need_shared("data", "coco-val2017-mini")
    tables, metrics = {}, {}
    for batch in ("1", "8"):
        out = tmp_path / f"b{batch}"
        outcome = run_job(JobConfig(task="coco", data_root=str(data), model=str(model), output=str(out), batch=batch,
                                    runtime="onnxruntime", limit=24, progress=False, report=False))
        assert outcome.exit_code == EXIT_OK
        columns = ["sample_id", "image_id", "height", "width", "bbox", "score", "category_id"]
        tables[batch] = pads.dataset(out / "predictions", format="parquet").to_table(columns=columns).sort_by("sample_id")
        metrics[batch] = outcome.metrics
        run = json.loads((out / "run.json").read_text())
        assert run["actors"][0]["batch"] == int(batch)
    assert tables["8"].num_rows == 24 and tables["8"].equals(tables["1"])  # every row, bit for bit
    assert metrics["8"] == metrics["1"]


def test_rayinfer_bench_has_a_batch_axis_beside_requests(scale_model):
    from rayinfer.jobs.benchmark import format_bench, run_model_bench

    gpu = "sim://?engine=gpu&fixed_ms=4&per_item_ms=0.25&input=1x2&output=1x2"
    result = run_model_bench(gpu, requests=["1"], seconds=0.3)
    rows = {r["batch"]: r for r in result["runs"]}
    # batch 1 at one request, then 8, 32 and auto (64 here) at the device's own count
    assert [r["batch"] for r in result["runs"]] == [1, 8, 32, 64] and not result["skipped"]
    assert rows[8]["img_s"] == pytest.approx(8 / 0.006, rel=0.15) and rows[64]["img_s"] > 2 * rows[8]["img_s"]
    assert "batch" in format_bench(result).splitlines()[1]
    fixed = run_model_bench(str(scale_model), runtimes=["onnxruntime"], requests=["1"], seconds=0.2, batches=["8"])
    assert [r["batch"] for r in fixed["runs"]] == [1]
    assert "its batch axis is fixed at 1" in fixed["skipped"][0]["why"]
    assert "not run: onnxruntime at batch 8: --batch 8: model input 'x'" in format_bench(fixed)


def test_a_batchs_postprocessing_never_holds_the_request_and_spreads_over_the_workers():
    """One request: the first batch's callbacks wait until the model has run the second
    batch, which it can only do once the request is free again."""

    class Counting(Doubler):
        def run(self, feed):
            out = super().run(feed)
            if len(self.seen) == 2:
                second.set()
            return out

    model = Counting(None)
    second = threading.Event()
    threads: set[str] = set()
    done: list[int] = []

    def callback(request, i):
        threads.add(threading.current_thread().name)
        if i < 4:
            assert second.wait(10), "the request stayed busy while its batch was postprocessed"
        done.append(i)

    queue = BatchingQueue(AsyncInferQueue(BatchedModel(model, 4), jobs=1), size=4, wait_ms=1000, workers=2)
    _feed(queue, callback, 8, lambda: queue.wait_all(20))
    assert sorted(done) == list(range(8)) and len(threads) == 2
