"""The CUDA path (actors/backends/onnxruntime.py): IOBinding per request thread, batch
buffers in pinned host memory, outputs copied back once per run. Marked `gpu`: skipped, with
the reason, on a machine without a CUDA GPU and onnxruntime-gpu."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import need_shared

pytestmark = pytest.mark.gpu


def _cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs a GPU: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu on a "
                    "CUDA machine)")
    from rayinfer.actors.backends.onnxruntime import pinned_array

    if pinned_array((1,), np.float32) is None:
        pytest.skip("needs a GPU: CUDA cannot allocate pinned memory here (no device, or no libcudart)")


def test_batches_on_cuda_go_through_iobinding_from_pinned_buffers_and_match_the_cpu():
    _cuda()
    from rayinfer.actors.backends.onnxruntime import OnnxModel, RuntimeOptions
    from rayinfer.actors.batching import BatchedModel

    path = need_shared("models", "yolov8n_fp32_dynbatch.onnx")
    gpu = OnnxModel(path, RuntimeOptions(providers=("cuda",)))
    cpu = OnnxModel(path, RuntimeOptions(intra_op_threads=2))
    assert gpu.device == "gpu" and gpu.batches
    rng = np.random.default_rng(0)
    samples = [{"images": rng.random((1, 3, 640, 640), dtype=np.float32)} for _ in range(8)]
    batched = BatchedModel(gpu, 8)
    out = batched.run(samples)[0]
    buffer = batched._local.buffers["images"]
    assert buffer.base is not None  # over cudaHostAlloc's memory, not numpy's own
    assert getattr(gpu._bindings, "binding", None) is not None  # this thread's IOBinding
    again = batched.run(samples)[0]  # the same buffer and binding, reused
    np.testing.assert_array_equal(out, again)
    for i, sample in enumerate(samples):
        np.testing.assert_allclose(out[i:i + 1], cpu.run(sample)[0], rtol=1e-3, atol=1e-2)


def test_a_coco_job_on_cuda_batches_and_keeps_its_accuracy(ray_session, tmp_path):
    _cuda()
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import EXIT_OK, run_job

    model = need_shared("models", "yolov8n_fp32_dynbatch.onnx")
    data = need_shared("data", "coco-val2017-mini")
    outcome = run_job(JobConfig(task="coco", data_root=str(data), model=str(model), output=str(tmp_path / "out"),
                                runtime="onnxruntime", runtime_options={"onnxruntime": {"providers": ("cuda",)}},
                                progress=False, report=False))
    assert outcome.exit_code == EXIT_OK
    actor = json.loads((tmp_path / "out/run.json").read_text())["actors"][0]
    assert actor["device"] == "gpu" and actor["batch"] > 1
    assert outcome.metrics["AP"] == pytest.approx(0.4254, abs=0.005)
