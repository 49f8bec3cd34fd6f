"""Shared fixtures: small ONNX models built here, and the real ../shared files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import jobs  # noqa: F401  - claims the `datasets` name before anything else imports it

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    return Path(os.environ.get("RAYINFER_SHARED", ROOT.parent / "shared")).resolve()


def need_shared(*parts: str) -> Path:
    """Path inside RAYINFER_SHARED, or skip the test saying what is missing."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: set RAYINFER_SHARED to the shared data folder to run this test")
    return path


def make_onnx(path: Path, kind: str = "scale") -> Path:
    """Tiny models for runtime tests.

    - scale: y = 2 * x, x float32 [1, 4];
    - reshape: y = reshape(x, [2, 3]) with x float32 [N]: fails at run time unless N == 6;
    - heavy: a stack of 512x512 matmuls, so requests take a few milliseconds.
    """
    import onnx
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


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
