"""Prediction rows (one dict per sample) to an Arrow table, without pandas.

`pa.Table.from_pylist` is the obvious way, but pyarrow's first conversion of any Python
list or numpy array imports pandas (0.26 s of CPU holding the GIL and about 50 MB per
process: docs/performance.md), and an actor has no other use for pandas: every actor would pay
it on its start-up path, 64 times over on a node of 64 simulated devices. `to_table`
builds the columns from numpy buffers instead, for the types row schemas use
(booleans, integers, floats, strings, bytes and lists of those), and hands anything else, or any
value it cannot take as is (a None, a wrong type, an int out of range), to
`pa.Table.from_pylist`, whose result or error is the reference.

Ray's own serializer for Arrow tables imports pandas too (it calls pyarrow.compute with
a Python int), so what an actor returns travels as an Arrow IPC stream (`to_ipc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc


def to_ipc(table: pa.Table) -> pa.Buffer:
    """The table as an Arrow IPC stream (pickles out of band, and imports nothing)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def from_ipc(stream: pa.Buffer) -> pa.Table:
    return pa.ipc.open_stream(stream).read_all()


class _NotPlain(Exception):
    """A column `to_table` leaves to pyarrow's own conversion."""


def to_table(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """The same table as `pa.Table.from_pylist(rows, schema=schema)`."""
    try:
        columns = [_column([row[f.name] for row in rows], f.type) for f in schema]
    except (_NotPlain, KeyError, TypeError, ValueError, OverflowError):
        return pa.Table.from_pylist(list(rows), schema=schema)
    return pa.Table.from_arrays(columns, schema=schema)


def _column(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    if pa.types.is_list(type) or pa.types.is_fixed_size_list(type):
        return _list_column(values, type)
    if pa.types.is_string(type) or pa.types.is_binary(type):
        return _bytes_column(values, type)
    if pa.types.is_boolean(type):
        return _bool_column(values)
    return _numeric(np.asarray(values), type)


def _numeric(values: np.ndarray, type: pa.DataType) -> pa.Array:
    """A numeric column from a 1-D array, checked as strictly as pyarrow checks it."""
    if pa.types.is_floating(type):
        kinds = "fiu"
    elif pa.types.is_integer(type):
        kinds = "iu"
    else:
        raise _NotPlain(type)
    if values.ndim != 1 or (values.size and values.dtype.kind not in kinds):  # [] is float64
        raise _NotPlain(values.dtype)
    dtype = np.dtype(f"{'f' if kinds == 'fiu' else 'i' if pa.types.is_signed_integer(type) else 'u'}"
                     f"{type.bit_width // 8}")
    if kinds == "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise _NotPlain("out of range")
    data = np.ascontiguousarray(values, dtype=dtype)
    return pa.Array.from_buffers(type, len(data), [None, pa.py_buffer(data)])


def _bool_column(values: Sequence[Any]) -> pa.Array:
    if not all(isinstance(v, (bool, np.bool_)) for v in values):
        raise _NotPlain(pa.bool_())
    bits = np.packbits(np.asarray(values, bool), bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])


def _bytes_column(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    if pa.types.is_string(type):
        if not all(isinstance(v, str) for v in values):
            raise _NotPlain(type)
        encoded = [v.encode() for v in values]
    else:
        if not all(isinstance(v, bytes) for v in values):
            raise _NotPlain(type)
        encoded = values
    offsets = _offsets([len(v) for v in encoded])
    data = b"".join(encoded)
    return pa.Array.from_buffers(type, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _list_column(values: Sequence[Any], type: pa.DataType) -> pa.Array:
    if any(v is None or isinstance(v, (str, bytes, Mapping)) for v in values):
        raise _NotPlain(type)
    lengths = [len(v) for v in values]
    child_type = type.value_type
    if pa.types.is_floating(child_type) or pa.types.is_integer(child_type):
        # one numpy pass over the rows' arrays, not one Python object per element
        parts = [np.asarray(v) for v in values]
        if any(p.ndim != 1 for p in parts):
            raise _NotPlain("nested values in a flat list")
        child = _numeric(np.concatenate(parts) if parts else np.empty(0), child_type)
    else:
        child = _column(list(chain.from_iterable(values)), child_type)
    if pa.types.is_fixed_size_list(type):
        if any(n != type.list_size for n in lengths):
            raise _NotPlain("wrong length")
        return pa.FixedSizeListArray.from_arrays(child, type=type)
    offsets = pa.Array.from_buffers(pa.int32(), len(values) + 1, [None, pa.py_buffer(_offsets(lengths))])
    return pa.ListArray.from_arrays(offsets, child, type=type)


def _offsets(lengths: list[int]) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise _NotPlain("over 2 GiB in one column")
    return offsets.astype(np.int32)
