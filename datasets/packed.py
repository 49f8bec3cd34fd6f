"""Packed datasets: the samples' files in a few large WebDataset tars or Parquet files.

Listing and fetching millions of small objects is slow; a packed set is read one shard at a
time, front to back. Layout (a folder or an object-storage prefix), as `rayinfer pack` writes it:

    ROOT/packed.json                     {"format": "tar" | "parquet", "shards": [{"name", "keys", "members"}, ...]}
    ROOT/annotations/...                 (COCO) the annotation file, unchanged
    ROOT/shards/shard-NNNNN.tar          WebDataset: per sample `KEY.jpg` + `KEY.json` (COCO), `KEY.h5` (NYU)
    ROOT/shards/shard-NNNNN.parquet      one row per sample: `key`, and one binary column per member (jpg, json, h5)

KEY is the sample's file name in the loose layout without its extension (`val2017/000000000139`),
so sample ids and file names, and with them results, metrics and `--resume`, are the same
whichever way the data is stored. The job's work units follow the packed shards.

Each shard's `members` maps `KEY.ext` to [size in bytes, CRC-32 as 8 hex digits] (zlib's, in
the standard library: about 1 GB/s, a small part of decoding the image), and every member read
is checked against it: flipped bytes are `checksum mismatch`, a member cut short is `truncated
at byte N of M`, each an error row naming `SHARD:MEMBER`. A set packed before sizes and
checksums were recorded still reads, unchecked, with a warning saying so. A sample listed in two
shards is refused when the index is opened.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import tarfile
import threading
import zlib
from collections.abc import Iterable
from functools import cached_property
from typing import Any

from rayinfer.datasets.base import SampleError, SetupError, sample_location
from rayinfer.datasets.images import read_bytes
from rayinfer.datasets.storage import Location, storage_error

log = logging.getLogger(__name__)

INDEX = "packed.json"
FORMATS = ("tar", "parquet")


def checksum(data: bytes) -> list[Any]:
    """[size, CRC-32 as 8 hex digits]: what packed.json records of each member."""
    return [len(data), f"{zlib.crc32(data):08x}"]


def member_key(file: str) -> str:
    """The WebDataset key of a sample file: its relative name without the extension."""
    return posixpath.splitext(file)[0]


class PackIndex:
    """Which packed shard holds each sample (from ROOT/packed.json)."""

    def __init__(self, root: Location, data: dict[str, Any]) -> None:
        self.root = root
        self.format = data.get("format")
        if self.format not in FORMATS:
            raise SetupError(f"{root / INDEX}: format is {self.format!r}, expected one of {FORMATS}")
        self.shards: list[dict[str, Any]] = list(data.get("shards", []))
        self.shard_of: dict[str, str] = {}
        for s in self.shards:
            for key in s["keys"]:
                if key in self.shard_of:
                    raise SetupError(f"{root / INDEX}: sample {key} is listed twice (in {self.shard_of[key]} and "
                                     f"{s['name']}): the index is damaged; pack the set again")
                self.shard_of[key] = s["name"]
        #: shard -> {member: [size, crc32]}; a shard without them (packed before) reads unchecked
        self.sums = {s["name"]: s["members"] for s in self.shards if isinstance(s.get("members"), dict)}
        self.checked = len(self.sums) == len(self.shards)

    @classmethod
    def load(cls, root: Location) -> PackIndex | None:
        """The index of a packed set; None for a loose one."""
        try:
            if not (root / INDEX).is_file():
                return None
            data = json.loads((root / INDEX).read_bytes())
        except OSError as exc:
            raise SetupError(f"{root / INDEX}: {storage_error(exc)}") from None
        except ValueError as exc:
            raise SetupError(f"{root / INDEX}: not JSON ({exc})") from None
        index = cls(root, data)
        if not index.checked:
            log.warning("%s: %d of %d shards were packed without member sizes and checksums: their members are "
                        "read unchecked (rayinfer pack again to check them)", root / INDEX,
                        len(index.shards) - len(index.sums), len(index.shards))
        return index

    def keys(self) -> list[str]:
        return [k for s in self.shards for k in s["keys"]]

    def fingerprint(self) -> dict[str, Any]:
        """Each shard's size and modification time: a repacked set is another set for `--resume`."""
        out = {}
        for s in self.shards:
            try:
                out[s["name"]] = list((self.root / s["name"]).stat_key())
            except OSError:
                out[s["name"]] = None
        return {"format": self.format, "shards": out}


class PackReader:
    """Members of packed shards for one process's loader threads: the first request for a
    shard reads it whole, front to back (one request), and keeps its members until each of
    its samples has been served once (memory holds the shards in use). A shard asked for
    again (a retried work unit) is read again."""

    def __init__(self, index: PackIndex) -> None:
        self.index = index
        self.lock = threading.Lock()
        self.gates: dict[str, threading.Lock] = {}
        self.members: dict[str, dict[str, bytes]] = {}
        self.unserved: dict[str, set[str]] = {}

    def member(self, shard: str, name: str) -> bytes:
        """The bytes of member `name` (KEY.ext) of `shard`; SampleError when absent or unreadable."""
        if not shard:
            raise SampleError(f"{self.index.root}: {name} is in none of the packed shards ({INDEX})", stage="load")
        key = member_key(name)
        with self.lock:
            gate = self.gates.setdefault(shard, threading.Lock())
        with gate:  # one reader per shard; the other threads wait for its members
            with self.lock:
                members = self.members.get(shard)
            if members is None or name not in members:
                members = self._read(shard)
                with self.lock:
                    self.members[shard] = members
                    self.unserved[shard] = {member_key(m) for m in members}
        with self.lock:
            data = members.get(name)
            waiting = self.unserved.get(shard, set())
            waiting.discard(key)
            if not waiting:  # each sample served: let the shard go
                self.members.pop(shard, None)
                self.unserved.pop(shard, None)
        expected = self.index.sums.get(shard, {}).get(name)
        if data is None:
            raise SampleError(f"{self.index.root / shard}:{name}: "
                              + ("missing: the shard ends before it" if expected else f"no member {name}"),
                              stage="load")
        if expected is not None:
            size, crc = expected
            if len(data) < size:
                raise SampleError(f"{self.index.root / shard}:{name}: truncated at byte {len(data)} of {size}",
                                  stage="load")
            if checksum(data) != [size, crc]:
                raise SampleError(f"{self.index.root / shard}:{name}: checksum mismatch (crc32 "
                                  f"{checksum(data)[1]}, {len(data)} bytes; packed.json says {crc}, {size} bytes)",
                                  stage="load")
        return data

    def _read(self, shard: str) -> dict[str, bytes]:
        data = read_bytes(self.index.root / shard)
        if self.index.format == "tar":
            return read_tar(data)
        return read_parquet(data)


class PackedReading:
    """For a dataset reader whose `root` may hold a packed set: its index, this process's
    reader, and pickling without either (cached properties are made again where used); and,
    for loose files in object storage, `fetch` (the `Dataset` protocol's fetch-ahead hook)."""

    root: Location

    def __getstate__(self) -> dict[str, Any]:
        cached = {k for cls in type(self).__mro__ for k, v in vars(cls).items() if isinstance(v, cached_property)}
        return {k: v for k, v in self.__dict__.items() if k not in cached}

    @cached_property
    def pack(self) -> PackIndex | None:
        """The packed shards' index, for a packed set; None for loose files."""
        return PackIndex.load(self.root)

    @cached_property
    def reader(self) -> PackReader | None:
        """This process's reader of packed shards (made where `load` runs, never pickled)."""
        return PackReader(self.pack) if self.pack is not None else None

    def fetch(self, sample: Any) -> bytes | None:
        """The sample's file in one request (a remote loose set), for `load(sample, data)`;
        None for local or packed data, which `load` reads itself. Raises SampleError naming the URL."""
        if self.reader is not None or self.root.is_local:
            return None
        return read_bytes(sample_location(self.root, sample.file))

    def packed_shard(self, sample: Any) -> str:
        """The packed shard holding `sample` ("" where none does): its info's, or the index's
        for a sample made without it (a saved row read back)."""
        assert self.pack is not None
        return sample.info.get("pack", self.pack.shard_of.get(member_key(sample.file), ""))

    def packed_member(self, sample: Any, member: str) -> bytes:
        """The bytes of `member` of the shard holding `sample` (a packed set only)."""
        assert self.reader is not None
        return self.reader.member(self.packed_shard(sample), member)


def read_tar(data: bytes) -> dict[str, bytes]:
    """A WebDataset tar's members by name, read as a stream. A damaged header ends the read
    there: the members before it are kept (each missing one becomes its sample's error). A
    member cut short by the end of the shard is kept as far as it goes, so the check against
    packed.json says where it ends."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            for info in tar:
                if info.isfile():
                    f = tar.extractfile(info)
                    if f is not None:
                        try:
                            out[info.name] = f.read()
                        except (tarfile.TarError, OSError, EOFError):
                            out[info.name] = data[info.offset_data:info.offset_data + info.size]
                            raise
    except (tarfile.TarError, OSError, EOFError):
        pass
    return out


def read_parquet(data: bytes) -> dict[str, bytes]:
    """A packed Parquet file's rows as members `KEY.ext` (one per binary column but `key`)."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(data))
    keys = table.column("key").to_pylist()
    out: dict[str, bytes] = {}
    for ext in (c for c in table.column_names if c != "key"):
        for key, value in zip(keys, table.column(ext).to_pylist()):
            if value is not None:
                out[f"{key}.{ext}"] = value
    return out


def write_pack(samples: Iterable[tuple[str, dict[str, bytes]]], dest: Location, fmt: str,
               per_shard: int) -> dict[str, Any]:
    """Write (key, {ext: bytes}) samples as packed shards under `dest`, each shard one file
    written whole, then the index (last: a set without it is not a packed set). Returns it."""
    if fmt not in FORMATS:
        raise SetupError(f"--format {fmt!r}: expected one of {FORMATS}")
    shards: list[dict[str, Any]] = []
    batch: list[tuple[str, dict[str, bytes]]] = []

    def flush() -> None:
        name = f"shards/shard-{len(shards):05d}.{fmt}"
        (dest / name).write_bytes(_tar(batch) if fmt == "tar" else _parquet(batch))
        shards.append({"name": name, "keys": [k for k, _ in batch],
                       "members": {f"{k}.{ext}": checksum(data) for k, members in batch for ext, data in members.items()}})
        batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) == per_shard:
            flush()
    if batch:
        flush()
    index = {"format": fmt, "shards": shards}
    (dest / INDEX).write_bytes((json.dumps(index, indent=1) + "\n").encode())
    return index


def _tar(batch: list[tuple[str, dict[str, bytes]]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for key, members in batch:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parquet(batch: list[tuple[str, dict[str, bytes]]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    exts = sorted({ext for _, members in batch for ext in members})
    table = pa.table({"key": [k for k, _ in batch],
                      **{ext: pa.array([m.get(ext) for _, m in batch], pa.binary()) for ext in exts}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="none")  # JPEG and HDF5 bytes do not compress further
    return buffer.getvalue()
