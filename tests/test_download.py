"""`rayinfer download` against a local HTTP server (127.0.0.1) serving archives built here."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from rayinfer.datasets.coco import CocoDataset
from rayinfer.datasets.nyu import NyuDataset
from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.cli import main
from rayinfer.jobs.download import Archive, DatasetSpec, DownloadError, download, extract, fetch

pytestmark = pytest.mark.timeout(120)


class Server:
    """Static files with HTTP Range support; can cut a response short once per file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cut_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                name = self.path.lstrip("/")
                path = server.folder / name
                server.requests.append((name, self.headers.get("Range")))
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in server.cut_once:
                    server.cut_once.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    server = Server(folder)
    yield server
    server.close()


def _archive(path: Path, url: str, **kw) -> Archive:
    data = path.read_bytes()
    return Archive(path.name, f"{url}/{path.name}", len(data), md5=hashlib.md5(data).hexdigest(),
                   sha256=hashlib.sha256(data).hexdigest(), **kw)


def _coco_archives(tmp_path: Path, www: Path) -> None:
    src = write_coco(tmp_path / "src", n_images=5, seed=3)
    with zipfile.ZipFile(www / "val2017.zip", "w") as z:
        for f in sorted((src / "val2017").iterdir()):
            z.write(f, f"val2017/{f.name}")
    with zipfile.ZipFile(www / "annotations_trainval2017.zip", "w") as z:
        z.write(src / "annotations/instances_val2017.json", "annotations/instances_val2017.json")
        z.writestr("annotations/instances_train2017.json", "{}")  # not wanted: not extracted


def test_coco_download_resumes_verifies_and_extracts_through_the_cli(tmp_path, served):
    _coco_archives(tmp_path, served.folder)
    served.cut_once.add("val2017.zip")  # the first transfer breaks halfway
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "archives": [
            {**_archive(served.folder / "val2017.zip", served.url).__dict__, "members": []},
            {**_archive(served.folder / "annotations_trainval2017.zip", served.url).__dict__,
             "members": ["annotations/instances_val2017.json"]},
        ],
        "expect": ["val2017", "annotations/instances_val2017.json"],
    }))
    dest = tmp_path / "coco"
    assert main(["download", "coco-val2017", "--dest", str(dest), "--manifest", str(manifest), "--quiet"]) == 0
    ranges = [r for name, r in served.requests if name == "val2017.zip"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")  # resumed, not restarted
    assert len(CocoDataset(dest).samples()) == 5
    assert not (dest / "annotations/instances_train2017.json").exists()
    assert not (dest / ".downloads").exists()


def test_checksum_mismatch_names_the_archive_and_removes_it(tmp_path, served):
    (served.folder / "a.zip").write_bytes(b"PK" + bytes(100))
    good = _archive(served.folder / "a.zip", served.url)
    bad = Archive(good.name, good.url, good.size, md5="0" * 32)
    with pytest.raises(DownloadError, match="a.zip: MD5 .* expected 0000"):
        fetch(bad, tmp_path, progress=False)
    assert not (tmp_path / "a.zip.part").exists() and not (tmp_path / "a.zip").exists()
    wrong_size = Archive(good.name, good.url, good.size + 1)
    with pytest.raises(DownloadError, match="offers 102 bytes, expected 103"):
        fetch(wrong_size, tmp_path, progress=False)
    missing = Archive("nope.zip", f"{served.url}/nope.zip")
    with pytest.raises(DownloadError, match="nope.zip: HTTP 404"):
        fetch(missing, tmp_path, progress=False)


def test_nyu_tars_through_a_mirror(tmp_path, served):
    for i in range(2):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            h5 = tmp_path / f"{i:05d}.h5"
            with h5py.File(h5, "w") as f:
                f.create_dataset("rgb", data=np.zeros((3, 48, 64), np.uint8))
                f.create_dataset("depth", data=np.ones((48, 64), np.float32))
            t.add(h5, f"val/official/{i:05d}.h5")
        (served.folder / f"val-00000{i}.tar").write_bytes(buf.getvalue())
    spec = DatasetSpec("nyu-val", tuple(Archive(f"val-00000{i}.tar", f"https://example.invalid/val-00000{i}.tar")
                                        for i in range(2)), expect=("val/official",))
    dest = download(spec, tmp_path / "nyu", mirror=served.url, progress=False)
    assert [s.sample_id for s in NyuDataset(dest).samples()] == ["00000", "00001"]


def test_archives_cannot_write_outside_the_destination(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escaped.txt", "x")
    with pytest.raises(DownloadError, match="outside"):
        extract(Archive("evil.zip", ""), evil, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not an archive at all")
    with pytest.raises(DownloadError, match="neither a zip nor a tar"):
        extract(Archive("broken.tar", ""), broken, tmp_path / "dest")


def test_a_network_that_is_down_is_retried_with_growing_waits(tmp_path, caplog):
    """issue 22 item 12: exponential back-off with a cap, each wait said with what failed."""
    import logging
    import re
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    archive = Archive("down.zip", f"http://127.0.0.1:{port}/down.zip")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(DownloadError, match="after 5 attempts; rerun to resume"):
        fetch(archive, tmp_path, progress=False, attempts=5, backoff_s=0.05, max_backoff_s=0.15)
    waits = [float(w) for w in re.findall(r"retrying in ([\d.]+) s", caplog.text)]
    assert waits == [0.05, 0.1, 0.15, 0.15]  # doubling, capped
    assert time.monotonic() - t0 >= sum(waits)
    assert "refused" in caplog.text.lower() and f"127.0.0.1:{port}" in caplog.text
