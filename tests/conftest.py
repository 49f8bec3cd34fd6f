"""Shared fixtures: small ONNX models built here, and the real ../shared files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.s3server import use_dummy_credentials

ROOT = Path(__file__).resolve().parent.parent

# `--runtime auto` caches its probes; the tests keep theirs apart from the user's (set before
# any Ray starts, so actors inherit it)
os.environ.setdefault("RAYINFER_CACHE_DIR", tempfile.mkdtemp(prefix="rayinfer-test-cache-"))
# Object storage in tests is moto's S3 server on 127.0.0.1 (the `s3` fixture), which takes
# any credentials: dummy ones, set before any Ray starts so actors inherit them, and no
# instance-metadata lookups.
use_dummy_credentials()


def inference_actor(cfg: Any, name: str = "actor-0", actor_class: Any = None) -> Any:
    """An InferenceActor in this process, with the dataset and family the driver would give it."""
    from rayinfer.actors.actor import InferenceActor
    from rayinfer.jobs.driver import check_setup

    setup = check_setup(cfg)
    return (actor_class or InferenceActor)(cfg, name, setup.dataset, setup.family)


def shared_dir() -> Path:
    return Path(os.environ.get("RAYINFER_SHARED", ROOT.parent / "shared")).resolve()


def need_shared(*parts: str) -> Path:
    """Path inside RAYINFER_SHARED, or skip the test saying what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: set RAYINFER_SHARED to the shared data folder to run this test")
    return path


def wait_for(predicate, timeout: float = 60.0) -> None:
    """Poll `predicate` every 50 ms until it holds; TimeoutError after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def save_graph(graph: Any, path: Path, opset: int) -> Path:
    """Save an onnx.helper graph as a model ONNX Runtime 1.17+ loads (IR version 8)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def make_onnx(path: Path, kind: str = "scale") -> Path:
    """Tiny models for runtime tests.

    - scale: y = 2 * x, x float32 [1, 4];
    - reshape: y = reshape(x, [2, 3]) with x float32 [N]: fails at run time unless N == 6;
    - heavy: a stack of 512x512 matmuls, so requests take a few milliseconds.
    """
    from onnx import TensorProto, helper

    if kind == "scale":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
        nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
        graph = helper.make_graph(nodes, "scale", [x], [y], [two])
    elif kind == "reshape":
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
        shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, 3])
        nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
        graph = helper.make_graph(nodes, "reshape", [x], [y], [shape])
    elif kind == "heavy":
        rng = np.random.default_rng(0)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 512])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 512])
        inits, nodes, prev = [], [], "x"
        for i in range(8):
            w = (rng.standard_normal((512, 512)) / 23).astype(np.float32)
            inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [512, 512], w.ravel()))
            nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
            prev = f"h{i}"
        nodes.append(helper.make_node("Identity", [prev], ["y"]))
        graph = helper.make_graph(nodes, "heavy", [x], [y], inits)
    else:
        raise ValueError(kind)
    return save_graph(graph, path, opset=17)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def scale_model(model_dir: Path) -> Path:
    return make_onnx(model_dir / "scale.onnx", "scale")


@pytest.fixture(scope="session")
def reshape_model(model_dir: Path) -> Path:
    return make_onnx(model_dir / "reshape.onnx", "reshape")


@pytest.fixture(scope="session")
def heavy_model(model_dir: Path) -> Path:
    return make_onnx(model_dir / "heavy.onnx", "heavy")


def make_const_detector(path: Path, size: int, boxes: np.ndarray, nc: int = 3, family: str = "yolov8") -> Path:
    """A detector whose output ignores the image (but still reads it): `boxes` rows are
    (cx, cy, w, h, class, score) in model-input pixels."""
    from onnx import TensorProto, helper

    n = max(8, len(boxes))
    if family == "yolov8":
        out = np.zeros((1, 4 + nc, n), np.float32)
        for i, (cx, cy, w, h, c, s) in enumerate(boxes):
            out[0, :4, i] = (cx, cy, w, h)
            out[0, 4 + int(c), i] = s
        oshape = [1, 4 + nc, n]
    else:
        raise ValueError(family)
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, oshape)
    const = helper.make_tensor("const", TensorProto.FLOAT, oshape, out.ravel())
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "const_detector", [x], [y], [const, zero])
    return save_graph(graph, path, opset=13)


def make_const_depth(path: Path, size: int, value: float) -> Path:
    """A depth model that predicts `value` metres everywhere (reading the image)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    y = helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 1, size, size])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    val = helper.make_tensor("val", TensorProto.FLOAT, [], [value])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["z", "val"], ["depth"]),
    ]
    graph = helper.make_graph(nodes, "const_depth", [x], [y], [zero, val])
    return save_graph(graph, path, opset=13)


@pytest.fixture(scope="module")
def ray_session(_embedded_ray_stops_at_the_end):
    """An embedded Ray, started by the first module that asks for one and kept for the next
    ones (a start is about 5 s here). Modules with clusters of their own (tests/test_cluster.py,
    tests/test_nodes.py) shut it down first (`no_embedded_ray`); the next module to ask starts another."""
    import ray

    from rayinfer.jobs.cluster import init_local_ray

    if not ray.is_initialized():
        init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                       namespace="rayinfer-tests")
    yield ray


@pytest.fixture(scope="module")
def no_embedded_ray():
    """For modules that start clusters of their own (and stop them with `ray stop --force`,
    which kills every Ray process here): the embedded Ray is shut down first."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def _embedded_ray_stops_at_the_end():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """An S3 server on 127.0.0.1 (moto's server mode: no client is patched)."""
    from tests.support.s3server import S3Server

    server = S3Server()
    yield server
    server.stop()


class GcsServer:
    """A Google Cloud Storage emulator on 127.0.0.1 (gcp-storage-emulator's JSON API, in
    memory, its own process); `options` are a job's storage options for it (pyarrow's
    GcsFileSystem: endpoint, plain HTTP, anonymous), `fs` a client, `upload` as S3Server's."""

    def __init__(self) -> None:
        import subprocess
        import sys

        from tests.support.s3server import _wait_listening, free_port

        port = free_port()
        self.options = {"endpoint_override": f"127.0.0.1:{port}", "scheme": "http", "anonymous": "true",
                        "project_id": "rayinfer-tests"}
        self.process = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1",
                                         f"--port={port}", "--in-memory"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(port, lambda: self.process.poll() is None)

    @property
    def fs(self) -> Any:
        import pyarrow.fs as pafs

        return pafs.GcsFileSystem(endpoint_override=self.options["endpoint_override"], scheme="http",
                                  anonymous=True, project_id=self.options["project_id"])

    def upload(self, local: Path, bucket_and_prefix: str) -> str:
        """Copy a folder (or one file) to `bucket/prefix`, creating the bucket; returns its gs:// URL."""
        from tests.support.s3server import upload

        upload(self.fs, local, bucket_and_prefix)
        return f"gs://{bucket_and_prefix}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture(scope="session")
def gcs():
    """A GCS emulator on 127.0.0.1 (gcp-storage-emulator; no client is patched)."""
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator (the [test] extra) is not installed")
    server = GcsServer()
    yield server
    server.stop()

