"""Ray's fake multi-node autoscaler on the local host, for the elastic tests and benchmark:
a head started as `ray start --head --block --autoscaling-config=...` with RAY_FAKE_CLUSTER=1,
and worker nodes (raylets here) that Ray's `fake_multinode` provider launches and ends as
the autoscaler decides. Shaped like cluster.yaml: the head has no CPUs, the worker type
carries the device resource, `min_workers: 0`.

Not `ray.cluster_utils.AutoscalingCluster`: its start() first runs `ray stop --force`
(every Ray process on the machine, other tests' included) and it reads
`fake_multi_node/example.yaml`, which the Ray wheel does not ship. This head runs in its
own process group and temp dir, and stops by them.

>>> with FakeAutoscaler(worker={"CPU": 1, "sim_device": 1}, max_workers=4) as cluster:
...     run(["rayinfer", "run", ..., "--address", cluster.address])
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.s3server import free_port

#: each fake worker node's object store (Ray's default is 30% of the machine's memory, per node)
WORKER_OBJECT_STORE = 150 * 1024 * 1024


def provider_config(port: int, worker: dict[str, float], max_workers: int, idle_minutes: float) -> dict[str, Any]:
    """The cluster config Ray's fake multi-node provider reads (cluster.yaml's shape)."""
    return {
        "cluster_name": "rayinfer-fake",
        "max_workers": max_workers,
        "upscaling_speed": float(max_workers),
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "ray.worker.sim": {"resources": {**worker, "object_store_memory": WORKER_OBJECT_STORE},
                               "node_config": {}, "min_workers": 0, "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "ray"},
        "docker": {},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class FakeAutoscaler:
    """A head with no CPUs and an autoscaler that launches `worker`-shaped nodes on demand."""

    def __init__(self, worker: dict[str, float], max_workers: int = 4, idle_minutes: float = 0.1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ri-fake-", dir="/tmp"))  # short: socket paths
        config = self.temp_dir / "autoscaling.json"
        config.write_text(json.dumps(provider_config(self.port, worker, max_workers, idle_minutes)))
        self.cmd = ["ray", "start", "--head", "--block", f"--autoscaling-config={config}",
                    "--node-ip-address=127.0.0.1", f"--port={self.port}", "--num-cpus=0",
                    "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
                    f"--object-store-memory={WORKER_OBJECT_STORE}"]
        self.env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = self.temp_dir / "head.log"

    def start(self, timeout_s: float = 60.0) -> FakeAutoscaler:
        import socket

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the fake autoscaler's head did not start: {self.log.read_text()[-2000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        """The head's process group, then whatever else runs from its temp dir (the nodes the
        autoscaler launched)."""
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(wait_s)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        subprocess.run(["pkill", "-9", "-f", str(self.temp_dir)], check=False)

    def __enter__(self) -> FakeAutoscaler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["FakeAutoscaler", "provider_config"]
