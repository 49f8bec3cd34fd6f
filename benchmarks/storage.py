"""`storage`: the same job reading its images from a folder, packed tars, and an S3 server.

    python -m benchmarks storage --data-root ../shared/data/coco-val2017-mini --images 1000

Modes (one COCO set repeated to N images, simulated devices as in `accel`, so the host's
reading and decoding is what is measured): local loose files, local tar shards, S3 loose, S3
tar, S3 loose with 50 ms added to every request (a delaying proxy, in its own process as a
network would be: not in the driver's), and the source limit: what
the server alone gives a plain reader of 16 threads on the host (the server shares its
cores). Needs moto's server (`pip install -e ".[test]"`). Its last line is a JSON object.

Each mode also says how busy the machine's CPUs were while it ran (all processes: the job,
Ray, the S3 server and proxy) and the server's share: here the server is on the same two
cores, so an S3 run whose CPUs are all busy is at the host's limit, whatever the ratio
to the local run says.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rayinfer.actors.model import available_cpus
from benchmarks.common import _bench_set, _rayinfer, start_ray
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


class _CpuMeter:
    """CPU seconds used, sampled every 0.1 s: the whole machine's (psutil's system-wide
    times) and one process's (the S3 server). `cores(t0, t1)`: (machine, process) CPUs busy
    on average between two `time.perf_counter()` instants."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, float, float]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self.stopped.wait(0.1):
            t = psutil.cpu_times()
            mine = self.process.cpu_times()
            self.samples.append((time.perf_counter(), t.user + t.nice + t.system + t.irq + t.softirq,
                                 mine.user + mine.system))

    def cores(self, t0: float, t1: float) -> tuple[float, float]:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan"), float("nan")
        (a, busy_a, own_a), (b, busy_b, own_b) = inside[0], inside[-1]
        return (busy_b - busy_a) / (b - a), (own_b - own_a) / (b - a)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def run_storage_bench(data_root: Path, images: int, devices: int, latency_ms: float, capacity: int,
                      delay_ms: float = 50.0, per_shard: int = 64) -> dict[str, Any]:
    from rayinfer.datasets.coco import CocoDataset
    from rayinfer.datasets.storage import Location
    from tests.support.s3server import ProxyProcess, S3Server, use_dummy_credentials
    from rayinfer.jobs.pack import pack_dataset

    use_dummy_credentials()  # before any Ray starts

    cpus = available_cpus()
    work, root, ds, samples, _ = _bench_set(data_root, images, "rayinfer-storage-")
    pack_dataset(ds, Location(str(work / "coco-tar")), "tar", per_shard)
    server = S3Server()
    proxy = ProxyProcess(int(server.endpoint.rsplit(":", 1)[1]), delay_ms / 1000)
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
        busy: dict[str, tuple[float, float]] = {}
        meter = _CpuMeter(server.process.pid)
        for name, (data, options) in modes.items():
            start_ray(cpus, {"sim_device": devices})
            rate, run = _rayinfer(dict(task="coco", data_root=data, model=uri, output=str(work / f"out-{name}"),
                                       resource="sim_device", storage_options=options))
            end = time.perf_counter()  # inference ended just before the job wrote its manifest
            busy[name] = meter.cores(end - run["timings"]["inference_s"], end)
            rates[name] = round(rate, 2)
        t0 = time.perf_counter()
        rates["source_limit"] = round(_source_limit(loose, server.options, [s.file for s in CocoDataset(root).samples()]), 2)
        busy["source_limit"] = meter.cores(t0, time.perf_counter())
        meter.stop()
    finally:
        proxy.stop()
        server.stop()
    bound = min(rates["local"], rates["source_limit"])
    rows = [[name, rate, f"{busy[name][0]:.2f}", f"{busy[name][1]:.2f}"] for name, rate in rates.items()]
    print(f"storage: {images} images, {devices} simulated devices (C={capacity}, {latency_ms:g} ms), {cpus} CPUs, "
          f"tar shards of {per_shard}, {delay_ms:g} ms added per request in s3_delayed")
    print(format_table(["mode", "img/s", f"CPUs busy (of {cpus})", "of which the S3 server"], rows))
    print("; ".join(f"{m} / min(local, source) = {rates[m] / bound:.2f}" for m in ("s3", "s3_tar", "s3_delayed"))
          + f"; local_tar / local = {rates['local_tar'] / rates['local']:.2f}")
    rates["cpus_busy"] = {name: round(cores, 2) for name, (cores, _) in busy.items()}
    return rates
