"""`storage`: the same job reading its images from a folder, packed tars, and an S3 server.

    python -m rayinfer.jobs.bench storage --data-root ../shared/data/coco-val2017-mini --images 1000

Modes (one COCO set repeated to N images, simulated devices as in `accel`, so the host's
reading and decoding is what is measured): local loose files, local tar shards, S3 loose, S3
tar, S3 loose with 50 ms added to every request (a delaying proxy), and the source limit: what
the server alone gives a plain reader of 16 threads on this machine (the server shares its
cores). Needs moto's server (`pip install -e ".[test]"`). Its last line is a JSON object.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rayinfer.actors.model import available_cpus
from rayinfer.jobs.bench.common import _bench_set, _rayinfer, start_ray
from rayinfer.jobs.format import format_table


def _source_limit(url: str, options: dict[str, str], files: list[str], threads: int = 16) -> float:
    """img/s of a plain concurrent reader of the loose objects (one GET each)."""
    from rayinfer.datasets.storage import Location

    root = Location(url, options)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(len(b) for b in pool.map(lambda f: (root / f).read_bytes(), files))
    assert total > 0
    return len(files) / (time.perf_counter() - t0)


def run_storage_bench(data_root: Path, images: int, devices: int, latency_ms: float, capacity: int,
                      delay_ms: float = 50.0, per_shard: int = 64) -> dict[str, Any]:
    from rayinfer.datasets.coco import CocoDataset
    from rayinfer.datasets.storage import Location
    from rayinfer.jobs.bench.s3server import DelayingProxy, S3Server, use_dummy_credentials
    from rayinfer.jobs.pack import pack_dataset

    use_dummy_credentials()  # before any Ray starts

    cpus = available_cpus()
    work, root, ds, samples, _ = _bench_set(data_root, images, "rayinfer-storage-")
    pack_dataset(ds, Location(str(work / "coco-tar")), "tar", per_shard)
    server = S3Server()
    proxy = DelayingProxy(int(server.endpoint.rsplit(":", 1)[1]), delay_ms / 1000)
    try:
        loose = server.upload(root, "bench/coco")
        packed = server.upload(work / "coco-tar", "bench/coco-tar")
        uri = f"sim://?latency_ms={latency_ms}&capacity={capacity}&input=1x3x640x640&output=1x84x8400"
        modes = {
            "local": (str(root), {}),
            "local_tar": (str(work / "coco-tar"), {}),
            "s3": (loose, server.options),
            "s3_tar": (packed, server.options),
            "s3_delayed": (loose, {"endpoint_override": proxy.endpoint}),
        }
        rates: dict[str, float] = {}
        for name, (data, options) in modes.items():
            start_ray(cpus, {"sim_device": devices})
            rate, _ = _rayinfer(dict(task="coco", data_root=data, model=uri, output=str(work / f"out-{name}"),
                                     resource="sim_device", storage_options=options))
            rates[name] = round(rate, 2)
        rates["source_limit"] = round(_source_limit(loose, server.options, [s.file for s in CocoDataset(root).samples()]), 2)
    finally:
        proxy.stop()
        server.stop()
    bound = min(rates["local"], rates["source_limit"])
    rows = [[name, rate] for name, rate in rates.items()]
    print(f"storage: {images} images, {devices} simulated devices (C={capacity}, {latency_ms:g} ms), {cpus} CPUs, "
          f"tar shards of {per_shard}, {delay_ms:g} ms added per request in s3_delayed")
    print(format_table(["mode", "img/s"], rows))
    print("; ".join(f"{m} / min(local, source) = {rates[m] / bound:.2f}" for m in ("s3", "s3_tar", "s3_delayed"))
          + f"; local_tar / local = {rates['local_tar'] / rates['local']:.2f}")
    return rates
