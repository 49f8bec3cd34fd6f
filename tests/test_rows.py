"""`actors.rows.to_table` builds exactly the table `pa.Table.from_pylist` builds, and
leaves to it what it does not build itself (so its errors stay pyarrow's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rayinfer.actors.rows import to_table
from rayinfer.datasets.base import ERROR_SCHEMA, rows_schema
from rayinfer.datasets.depth import METRIC_NAMES, depth_schema
from rayinfer.actors.families.detection import DETECTION_SCHEMA

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def common(i: int) -> dict:
    return {"sample_id": f"{i:012d}", "file": f"/data/images/{i:012d}.jpg", "shard": i // 4, "actor": "actor-0",
            "load_ms": 1.5, "preprocess_ms": 2.0, "queue_ms": 0.0, "infer_ms": 95.25, "postprocess_ms": 0.5}


def detection(i: int, n: int, rng: np.random.Generator) -> dict:
    bbox = rng.random((n, 4)).astype(np.float32) * 640
    return {**common(i), "image_id": 1000 + i, "height": 480, "width": 640, "bbox": list(bbox),
            "score": rng.random(n).astype(np.float32), "category_id": rng.integers(1, 91, n)}


def depth(i: int, aligned: bool, rng: np.random.Generator) -> dict:
    metrics = {m: float(rng.random()) for m in METRIC_NAMES}
    row = {**common(i), "height": 3, "width": 2, "depth": rng.random(6).astype(np.float16).tobytes(),
           "valid_pixels": 6, "gt_mean": np.float32(2.5), **metrics}
    if aligned:
        row.update({f"aligned_{k}": v for k, v in metrics.items()})
    return row


def test_detection_records_equal_from_pylist():
    rng = np.random.default_rng(0)
    schema = rows_schema(DETECTION_SCHEMA)
    rows = [detection(i, n, rng) for i, n in enumerate([0, 1, 7, 300, 0, 42])]
    table = to_table(rows, schema)
    assert table.equals(pa.Table.from_pylist(rows, schema=schema))
    assert table.column("bbox").to_pylist()[3][5] == pytest.approx(rows[3]["bbox"][5].tolist())
    assert to_table([], schema).equals(pa.Table.from_pylist([], schema=schema))


@pytest.mark.parametrize("aligned", [False, True])
def test_depth_records_equal_from_pylist(aligned):
    rng = np.random.default_rng(1)
    schema = rows_schema(depth_schema(aligned))
    rows = [depth(i, aligned, rng) for i in range(5)]
    table = to_table(rows, schema)
    assert table.equals(pa.Table.from_pylist(rows, schema=schema))
    assert table.column("depth")[0].as_py() == rows[0]["depth"]
    rows[2]["rmse"] = float("nan")  # a NaN stays a NaN, not a null, as in from_pylist (equals() says NaN != NaN)
    for t in (to_table(rows, schema), pa.Table.from_pylist(rows, schema=schema)):
        assert t.column("rmse").null_count == 0 and np.isnan(t.column("rmse")[2].as_py())


def test_error_rows_equal_from_pylist():
    rows = [{"sample_id": "a", "file": "a.jpg", "stage": "load", "message": "a.jpg: not an image: é",
             "shard": 0, "actor": "actor-1"}]
    assert to_table(rows, ERROR_SCHEMA).equals(pa.Table.from_pylist(rows, schema=ERROR_SCHEMA))
    assert to_table([], ERROR_SCHEMA).equals(ERROR_SCHEMA.empty_table())


def test_values_it_does_not_take_go_to_pyarrow():
    schema = pa.schema([pa.field("n", pa.int32()), pa.field("s", pa.string()), pa.field("xs", pa.list_(pa.float32()))])
    with_nulls = [{"n": None, "s": None, "xs": None}, {"n": 1, "s": "b", "xs": [1.0, None]}]
    assert to_table(with_nulls, schema).equals(pa.Table.from_pylist(with_nulls, schema=schema))
    for bad in ({"n": 2**40, "s": "a", "xs": []}, {"n": 1.5, "s": "a", "xs": []}, {"n": 1, "s": 3, "xs": []},
                {"n": 1, "s": "a", "xs": ["x"]}):
        assert outcome(to_table, [bad], schema) == outcome(pa.Table.from_pylist, [bad], schema=schema)
    missing = [{"n": 1}]  # absent keys are nulls
    assert to_table(missing, schema).equals(pa.Table.from_pylist(missing, schema=schema))


def outcome(fn, *args, **kwargs) -> object:
    """The table's rows, or the error's type and message."""
    try:
        return fn(*args, **kwargs).to_pylist()
    except Exception as exc:  # noqa: BLE001
        return type(exc), str(exc)


SUBPROCESS = """
import json, sys
import numpy as np
from rayinfer.actors.rows import to_table
from rayinfer.datasets.base import rows_schema
from rayinfer.actors.families.detection import DETECTION_SCHEMA
from tests.test_rows import detection

rows = [detection(i, 5, np.random.default_rng(i)) for i in range(4)]
table = to_table(rows, rows_schema(DETECTION_SCHEMA))
print(json.dumps({"rows": table.num_rows, "pandas": "pandas" in sys.modules}))
"""


def test_no_pandas_import():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", SUBPROCESS], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rows": 4, "pandas": False}
