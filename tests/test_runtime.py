"""The async runtime: request queue, RBLN-style runtime, errors, shutdown, providers."""

from __future__ import annotations

import dataclasses

import asyncio
import logging
import threading
import time

import numpy as np
import pytest

from rayinfer.actors import (
    AsyncInferQueue,
    AsyncRuntime,
    Hint,
    InputError,
    ModelError,
    OnnxModel,
    QueueClosedError,
    RuntimeOptions,
    optimal_requests,
)
from rayinfer.actors.model import TensorSpec
from tests.conftest import need_shared

pytestmark = pytest.mark.timeout(60)


class SleepModel:
    """A model that takes `delay` seconds per request; optionally never returns."""

    device = "cpu"
    intra_op_threads = 1

    def __init__(self, delay: float = 0.02, hang: threading.Event | None = None) -> None:
        self.delay = delay
        self.hang = hang
        self.inputs = (TensorSpec("x", (1,), np.dtype(np.float32)),)
        self.outputs = (TensorSpec("y", (1,), np.dtype(np.float32)),)
        self.threads: set[str] = set()

    def prepare(self, inputs):
        from rayinfer.actors.model import check_inputs

        return check_inputs(self.inputs, inputs)

    def run(self, feed):
        self.threads.add(threading.current_thread().name)
        if self.hang is not None:
            self.hang.wait()
        time.sleep(self.delay)
        return [feed["x"] * 2]


def test_userdata_and_results_stay_matched_over_1000_requests(scale_model):
    seen: dict[int, float] = {}
    lock = threading.Lock()

    def on_done(request, userdata):
        assert request.error is None
        with lock:
            seen[userdata] = float(request.outputs[0][0, 0])

    with AsyncInferQueue(scale_model, jobs=4) as q:
        q.set_callback(on_done)
        for i in range(1000):
            q.start_async(np.full((1, 4), i, dtype=np.float32), userdata=i)
        assert q.wait_all(timeout=30)
    assert len(seen) == 1000
    assert all(seen[i] == 2.0 * i for i in range(1000))
    assert q.completed == 1000 and q.failed == 0


def test_many_threads_submitting_at_once(scale_model):
    seen: list[tuple[int, float]] = []
    lock = threading.Lock()

    def on_done(request, userdata):
        with lock:
            seen.append((userdata, float(request.outputs[0][0, 1])))

    q = AsyncInferQueue(scale_model, jobs=3)
    q.set_callback(on_done)

    def produce(base: int) -> None:
        for i in range(base, base + 250):
            q.start_async({"x": np.full((1, 4), i, np.float32)}, i)

    threads = [threading.Thread(target=produce, args=(k * 250,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert q.wait_all(timeout=20)
    q.close()
    assert sorted(u for u, _ in seen) == list(range(1000))
    assert all(v == 2.0 * u for u, v in seen)


def test_request_slots_latency_and_idle_ids(scale_model):
    with AsyncInferQueue(scale_model, jobs=2) as q:
        assert len(q) == 2 and q.is_ready()
        rid = q.get_idle_request_id()
        assert rid in (0, 1)
        q.start_async(np.zeros((1, 4), np.float32))
        q.wait_all()
        assert sum(q[i].completed for i in range(2)) == 1
        done = [q[i] for i in range(2) if q[i].completed]
        assert done[0].latency > 0
        assert np.array_equal(done[0].results[0], np.zeros((1, 4), np.float32))


def test_busy_time_and_latency_count_only_the_model():
    """Preparation in the request and the callback are host work, not device time."""
    q = AsyncInferQueue(SleepModel(delay=0.05), jobs=1, prepare=lambda x: (time.sleep(0.1), x)[1])
    q.set_callback(lambda request, _: time.sleep(0.1))
    with q:
        q.start_async({"x": np.ones(1, np.float32)})
        q.wait_all()
        busy, latency = q.busy_seconds, q[0].latency
    assert 0.045 <= busy < 0.1, busy
    assert 45 <= latency < 100, latency


def test_start_async_blocks_only_when_all_requests_are_busy():
    gate = threading.Event()
    q = AsyncInferQueue(SleepModel(0.0, hang=gate), jobs=2)
    q.start_async(np.ones(1, np.float32))
    q.start_async(np.ones(1, np.float32))  # returns at once: 2 slots
    assert not q.is_ready()
    blocked = threading.Event()
    returned = threading.Event()

    def third():
        blocked.set()
        q.start_async(np.ones(1, np.float32))
        returned.set()

    threading.Thread(target=third, daemon=True).start()
    blocked.wait(1)
    assert not returned.wait(0.2), "start_async must block while every request is busy"
    gate.set()
    assert returned.wait(5)
    assert q.wait_all(5)
    q.close()


def test_inputs_waiting_for_a_busy_queue_start_in_arrival_order():
    """A finishing request takes the oldest waiting input itself (it does not go idle
    and wait for a producer to wake up), so waiting inputs start in arrival order."""
    gate = threading.Event()
    q = AsyncInferQueue(SleepModel(0.0, hang=gate), jobs=1)
    started: list[int] = []
    q.set_callback(lambda request, userdata: started.append(userdata))
    q.start_async(np.ones(1, np.float32), 0)
    producers = []
    for i in range(1, 6):
        t = threading.Thread(target=q.start_async, args=(np.ones(1, np.float32), i), daemon=True)
        t.start()
        producers.append(t)
        while len(q._waiting) < i:  # each one waits before the next arrives
            time.sleep(0.001)
    gate.set()
    for t in producers:
        t.join(5)
    assert q.wait_all(5)
    assert started == [0, 1, 2, 3, 4, 5]
    assert q.completed == 6 and not q._waiting
    q.close()


def test_close_releases_producers_waiting_for_a_request():
    gate = threading.Event()
    q = AsyncInferQueue(SleepModel(0.0, hang=gate), jobs=1)
    q.start_async(np.ones(1, np.float32))
    errors: list[BaseException] = []

    def waiting():
        try:
            q.start_async(np.ones(1, np.float32))
        except QueueClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiting, daemon=True)
    t.start()
    while not q._waiting:
        time.sleep(0.001)
    closer = threading.Thread(target=q.close, daemon=True)
    closer.start()
    t.join(5)
    assert len(errors) == 1 and not q._waiting
    gate.set()
    closer.join(5)
    assert not closer.is_alive()


def test_input_checks_name_the_input_and_shapes(scale_model):
    with AsyncInferQueue(scale_model, jobs=1) as q:
        with pytest.raises(InputError, match=r"input 'x': expected \[1, 4\] float32, got \[1, 3\] float32"):
            q.start_async(np.zeros((1, 3), np.float32))
        with pytest.raises(InputError, match=r"input 'x': expected \[1, 4\] float32, got \[1, 4\] float64"):
            q.start_async(np.zeros((1, 4)))
        with pytest.raises(InputError, match="missing \\['x'\\], unknown \\['images'\\]"):
            q.start_async({"images": np.zeros((1, 4), np.float32)})


def test_inference_error_reaches_callback_task_and_await(reshape_model):
    errors = []
    with AsyncInferQueue(reshape_model, jobs=2) as q:
        q.set_callback(lambda r, u: errors.append((u, r.error)))
        q.start_async(np.zeros(5, np.float32), "bad")
        q.start_async(np.zeros(6, np.float32), "good")
        q.wait_all(10)
    by_name = dict(errors)
    assert by_name["good"] is None
    assert "reshape" in str(by_name["bad"]).lower()
    assert q.failed == 1

    with AsyncRuntime(reshape_model) as rt:
        with pytest.raises(Exception, match="(?i)reshape"):
            rt.run(np.zeros(5, np.float32)).wait(10)
        assert rt.run(np.arange(6, dtype=np.float32)).wait(10)[0].shape == (2, 3)

        async def main():
            with pytest.raises(Exception, match="(?i)reshape"):
                await rt.async_run(np.zeros(7, np.float32))

        asyncio.run(main())


def test_callback_that_raises_is_logged_counted_and_does_not_stop_the_queue(scale_model, caplog):
    done = []

    def on_done(request, userdata):
        if userdata % 2:
            raise ValueError(f"callback bug {userdata}")
        done.append(userdata)

    with caplog.at_level(logging.ERROR, logger="rayinfer.actors.queue"):
        with AsyncInferQueue(scale_model, jobs=2) as q:
            q.set_callback(on_done)
            for i in range(100):
                q.start_async(np.zeros((1, 4), np.float32), i)
            assert q.wait_all(10)
    assert q.callback_errors == 50
    assert sorted(done) == list(range(0, 100, 2))
    assert "callback for request" in caplog.text


def test_close_under_load_finishes_or_cancels_everything():
    model = SleepModel(0.01)
    q = AsyncInferQueue(model, jobs=2)
    finished, refused = [], []
    q.set_callback(lambda r, u: finished.append(u))

    def produce():
        for i in range(200):
            try:
                q.start_async(np.ones(1, np.float32), i)
            except QueueClosedError:
                refused.append(i)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    q.close()
    t.join(5)
    assert not t.is_alive()
    assert time.monotonic() - t0 < 5
    assert finished and refused
    assert sorted(finished + refused) == list(range(200))


def test_runtime_close_cancels_pending_tasks_with_an_error():
    rt = AsyncRuntime(SleepModel(0.01), requests=1)
    tasks = [rt.run(np.ones(1, np.float32)) for _ in range(50)]
    time.sleep(0.05)
    rt.close()
    outcomes = {"ok": 0, "cancelled": 0}
    for task in tasks:
        try:
            task.wait(5)
            outcomes["ok"] += 1
        except QueueClosedError:
            outcomes["cancelled"] += 1
    assert outcomes["ok"] >= 1 and outcomes["cancelled"] >= 1
    assert sum(outcomes.values()) == 50
    with pytest.raises(QueueClosedError):
        rt.run(np.ones(1, np.float32))


def test_asyncio_gather_over_hundreds_of_inputs(scale_model):
    async def main(rt: AsyncRuntime):
        xs = [np.full((1, 4), i, np.float32) for i in range(300)]
        outs = await asyncio.gather(*(rt.async_run(x) for x in xs))
        return [float(o[0][0, 0]) for o in outs]

    with AsyncRuntime(scale_model, requests=2) as rt:
        assert asyncio.run(main(rt)) == [2.0 * i for i in range(300)]


def test_task_wait_timeout():
    gate = threading.Event()
    with AsyncRuntime(SleepModel(0.0, hang=gate)) as rt:
        task = rt.run(np.ones(1, np.float32))
        with pytest.raises(TimeoutError):
            task.wait(timeout=0.1)
        gate.set()
        assert task.wait(5)[0][0] == 2.0


def test_parallel_2_prepares_in_a_separate_thread():
    model = SleepModel(0.005)
    prep_threads = set()

    def preprocess(v: int):
        prep_threads.add(threading.current_thread().name)
        return np.full(1, v, np.float32)

    with AsyncRuntime(model, parallel=2, preprocess=preprocess) as rt:
        outs = [t.wait(5)[0][0] for t in [rt.run(i) for i in range(20)]]
    assert outs == [2.0 * i for i in range(20)]
    assert prep_threads == {"runtime-feeder"}
    assert prep_threads.isdisjoint(model.threads)

    model1, prep1 = SleepModel(0.0), set()

    def preprocess1(v: int):
        prep1.add(threading.current_thread().name)
        return np.full(1, v, np.float32)

    with AsyncRuntime(model1, parallel=1, preprocess=preprocess1) as rt:
        rt.run(1).wait(5)
    assert prep1 == model1.threads  # parallel=1: prepared in the request's own thread

    with pytest.raises(ValueError):
        AsyncRuntime(model1, parallel=3)


def test_simulated_device_runs_capacity_at_once_and_queues_the_rest():
    """Two streams, six requests at once: waves end at 1, 2 and 3 latencies (a device
    queue, not host threads, starts each queued request)."""
    from rayinfer.actors.backends.simulated import SimulatedModel

    device = SimulatedModel(latency_ms=60, capacity=2, input_shape=(1, 1), output_shape=(1, 1))
    assert device.optimal_requests == 4
    barrier = threading.Barrier(6)
    t0 = time.monotonic()
    ends: list[float] = []

    def one():
        barrier.wait()
        device.run({"images": np.zeros((1, 1), np.float32)})
        ends.append(time.monotonic() - t0)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    ends.sort()
    assert len(ends) == 6
    assert ends[1] < 0.115, ends  # the first two ran side by side
    assert ends[2] >= 0.12 and ends[4] >= 0.18, ends  # the rest waited for a free stream
    assert ends[5] < 0.6, ends


def test_optimal_requests_rule():
    assert optimal_requests("cpu", 2, Hint.THROUGHPUT) == (2, 1)
    assert optimal_requests("cpu", 8, "latency") == (1, 8)
    assert optimal_requests("gpu", 8, Hint.THROUGHPUT) == (4, 1)
    assert optimal_requests("gpu", 8, Hint.LATENCY) == (1, 1)


def test_jobs_zero_builds_one_single_thread_request_per_cpu(scale_model):
    with AsyncInferQueue(scale_model, jobs=0, cpus=3) as q:
        assert len(q) == 3
        assert q.model.intra_op_threads == 1
    with AsyncInferQueue(scale_model, jobs=0, hint="latency", cpus=3) as q:
        assert len(q) == 1 and q.model.intra_op_threads == 3


def test_providers_resolve_with_cpu_fallback_and_options(scale_model, caplog):
    opts = RuntimeOptions(providers=("tensorrt", "cuda"), provider_options={"cuda": {"device_id": "0"}})
    assert opts.resolved_providers() == [
        ("TensorrtExecutionProvider", {}),
        ("CUDAExecutionProvider", {"device_id": "0"}),
        ("CPUExecutionProvider", {}),
    ]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        model = OnnxModel(scale_model, RuntimeOptions(providers=("cuda",)))
        assert model.providers[0] == "CUDAExecutionProvider" and model.device == "gpu"
    else:
        with caplog.at_level(logging.WARNING):
            model = OnnxModel(scale_model, RuntimeOptions(providers=("cuda",)))
        assert model.providers == ("CPUExecutionProvider",)
        assert "not available" in caplog.text


def test_requests_are_planned_for_the_device_the_model_really_got(scale_model, caplog):
    """CUDA asked for: GPU-style requests (4, one thread each) when the session got CUDA;
    when it fell back to the CPU, the CPU's plan (one single-thread request per core)."""
    import onnxruntime as ort

    from rayinfer.actors.backends import open_model
    from rayinfer.jobs.config import JobConfig

    cfg = JobConfig.from_dict({"task": "null", "data_root": ".", "model": str(scale_model), "output": "o",
                               "providers": ("cuda", "cpu"), "runtime": "onnxruntime"})
    assert cfg.runtime_options == {"onnxruntime": {"providers": ("cuda", "cpu")}}  # the flat key, filed
    with caplog.at_level(logging.WARNING):
        model, plan, _ = open_model(cfg, cpus=3)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert model.device == "gpu" and tuple(plan) == (4, 1)
    else:
        assert model.device == "cpu" and tuple(plan) == (3, 1) and model.intra_op_threads == 1
        assert "asked for gpu but the model runs on cpu" in caplog.text
    cpu, cpu_plan, _ = open_model(dataclasses.replace(cfg, runtime_options={"onnxruntime": {"providers": ("cpu",)}}, requests=1),
                                 cpus=3)
    assert cpu.device == "cpu" and tuple(cpu_plan) == (1, 3) and cpu.intra_op_threads == 3
    sim, sim_plan, _ = open_model(dataclasses.replace(cfg, runtime="auto", model="sim://?latency_ms=1&capacity=3"), cpus=3)
    assert sim.device == "sim" and tuple(sim_plan) == (6, 1)  # the device's own optimal count


def test_model_file_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        OnnxModel(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="bad.onnx"):
        OnnxModel(bad)


@pytest.mark.shared
def test_real_yolov8n_smoke():
    path = need_shared("models", "yolov8n_int8.onnx")
    with AsyncInferQueue(path, jobs=2) as q:
        outs = []
        q.set_callback(lambda r, u: outs.append(r.outputs[0].shape))
        for _ in range(4):
            q.start_async(np.zeros((1, 3, 640, 640), np.float32))
        assert q.wait_all(60)
    assert outs == [(1, 84, 8400)] * 4
