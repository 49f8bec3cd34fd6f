"""Nothing lost, part 2: resume that checks content, overwrite that touches only our files,
corrupt or ambiguous input, one-line setup errors, what `submit` uploads, and the embedded
Ray's processes ending with a killed driver."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.base import SampleError, SetupError
from rayinfer.datasets.images import read_image
from rayinfer.datasets.synthetic import write_coco, write_nyu
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import EXIT_OK, EXIT_PARTIAL, run_job
from rayinfer.jobs.reaper import alive, descendants
from tests.conftest import inference_actor

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)

SIM = "sim://?latency_ms={ms}&capacity=2&input=1x3x64x64&output=1x7x8"


@pytest.fixture()
def coco_set(tmp_path):
    return write_coco(tmp_path / "coco", n_images=8, seed=4)


def cfg_for(root: Path, out: Path, model: str = SIM.format(ms=1), **kw) -> JobConfig:
    base = dict(task="coco", data_root=str(root), model=model, output=str(out), shard_size=4, progress=False,
                report=False, actors=1)
    return JobConfig(**{**base, **kw})


def cli(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    env = {**os.environ, **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "rayinfer.jobs", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def one_line_error(proc: subprocess.Popen, *expected: str, timeout: float = 180) -> str:
    _, err = proc.communicate(timeout=timeout)
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("rayinfer: error:"), err
    assert all(e in lines[0] for e in expected), err
    return lines[0]


# -- 2. resume checks content -------------------------------------------------------------
def test_resume_refuses_an_annotation_file_edited_to_the_same_size(ray_session, coco_set, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out)
    assert run_job(cfg).exit_code == EXIT_OK
    path = coco_set / "annotations/instances_val2017.json"
    data = json.loads(path.read_text())
    text = path.read_text()
    first = data["annotations"][0]["category_id"]
    other = next(c["id"] for c in data["categories"] if c["id"] != first and len(str(c["id"])) == len(str(first)))
    edited = text.replace(f'"category_id": {first}', f'"category_id": {other}', 1)
    assert len(edited) == len(text) and edited != text
    path.write_text(edited)
    with pytest.raises(SetupError, match=r"configuration changed \(data\.annotations_sha256: "):
        run_job(JobConfig(**{**cfg.to_dict(), "resume": True}))


def test_resume_refuses_a_changed_image_and_names_the_sample_list(ray_session, coco_set, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out)
    assert run_job(cfg).exit_code == EXIT_OK
    image = sorted((coco_set / "val2017").glob("*.jpg"))[0]
    image.write_bytes(image.read_bytes() + b"\0")  # an edited image: size and mtime differ
    with pytest.raises(SetupError, match=r"samples\.sha256: "):
        run_job(JobConfig(**{**cfg.to_dict(), "resume": True}))


# -- 3. overwrite touches only our files ---------------------------------------------------
def test_overwrite_refuses_a_folder_without_a_manifest_and_deletes_nothing(coco_set, tmp_path):
    out = tmp_path / "u"
    (out / "predictions").mkdir(parents=True)
    (out / "predictions/x").write_text("keep")
    line = one_line_error(cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=1),
                               "--output", str(out), "--overwrite"]), "holds no rayinfer run")
    assert "nothing there was touched" in line
    assert (out / "predictions/x").read_text() == "keep"


def test_a_file_named_predictions_is_refused_before_anything_is_deleted(coco_set, tmp_path):
    out = tmp_path / "u"
    out.mkdir()
    (out / "predictions").write_text("a file")
    (out / "metrics.json").write_text("{}")
    one_line_error(cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=1),
                        "--output", str(out), "--overwrite"]), "predictions exists and is not a folder")
    assert (out / "metrics.json").read_text() == "{}" and (out / "predictions").read_text() == "a file"


def test_overwrite_removes_only_what_the_manifest_recorded(ray_session, coco_set, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out, report=True)
    assert run_job(cfg).exit_code == EXIT_OK
    mine = [out / "notes.txt", out / "predictions/mine.parquet", out / "report/mine.png"]
    for path in mine:
        path.write_text("user's")
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"metrics.json", "run.json", "errors.parquet", "report.html"} <= set(manifest["files"])
    again = run_job(JobConfig(**{**cfg.to_dict(), "overwrite": True}))
    assert again.exit_code == EXIT_OK
    assert all(p.read_text() == "user's" for p in mine)
    ids = pq.read_table(out / "predictions/shard-00000.parquet").column("sample_id").to_pylist()
    assert len(ids) == 4


def test_a_failed_setup_leaves_no_manifest_behind(coco_set, tmp_path):
    """Ray failing to connect (here: nothing listens at --address) is one line, and the next
    run needs no --overwrite."""
    out = tmp_path / "out"
    one_line_error(cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=1),
                        "--output", str(out), "--address", "127.0.0.1:9"]),
                   "cannot connect to the Ray cluster at 127.0.0.1:9")
    assert not (out / "manifest.json").exists()


# -- 7. one-line errors for bad annotations and unwritable outputs ----------------------
@pytest.mark.parametrize(("edit", "expected"), [
    (lambda d: d["images"][0].update(id="7"), "images[0] (id '7'): 'id' is '7', expected an integer"),
    (lambda d: d["images"][1].update(height="abc"), "'height' is 'abc', expected a positive integer"),
    (lambda d: d["images"][2].pop("file_name"), "images[2]"),
    (lambda d: d["images"].append(dict(d["images"][3])), "duplicate image ids"),
    (lambda d: d["annotations"][0].update(image_id="3"), "annotations[0] (id 1): 'image_id' is '3', expected an integer"),
    (lambda d: d["annotations"][1].pop("area"), "annotations[1] (id 2): missing 'area'"),
    (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "'bbox' is [1, 2, 3], expected [x, y, w, h]"),
    (lambda d: d["annotations"][3].update(iscrowd=True), "'iscrowd' is True, expected 0 or 1"),
])
def test_bad_annotation_fields_are_one_line_setup_errors(coco_set, tmp_path, edit, expected):
    path = coco_set / "annotations/instances_val2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    one_line_error(cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=1),
                        "--output", str(tmp_path / "out")]), expected)


def test_a_read_only_output_folder_is_a_one_line_error(coco_set, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders; the permission check cannot be seen as root")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        one_line_error(cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=1),
                            "--output", str(parent / "out")]), "permission denied")
    finally:
        parent.chmod(0o700)


def test_a_full_disk_is_a_one_line_error_and_resume_completes(ray_session, coco_set, tmp_path):
    """ENOSPC while committing (the output's file system fills up mid-job)."""
    import rayinfer.jobs.output as output_module

    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out, shard_size=2)
    real = output_module.pq.write_table
    calls = {"n": 0}

    def filling_disk(table, where, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device", str(where))
        return real(table, where, **kw)

    output_module.pq.write_table = filling_disk
    try:
        with pytest.raises(SetupError, match="No space left on device; free some space and rerun with --resume"):
            run_job(cfg)
    finally:
        output_module.pq.write_table = real
    assert not list(out.rglob(".*tmp-*"))  # no half-written temporary files
    resumed = run_job(JobConfig(**{**cfg.to_dict(), "resume": True}))
    assert resumed.exit_code == EXIT_OK
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == 8 == len(set(ids))


# -- 6. corrupt or ambiguous input ----------------------------------------------------------
def test_a_truncated_jpeg_with_its_end_marker_put_back_is_an_error(tmp_path):
    good = tmp_path / "good.jpg"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(good), rng.integers(0, 255, (240, 320, 3), np.uint8))
    data = good.read_bytes()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[: int(len(data) * 0.4)] + b"\xff\xd9")
    assert cv2.imdecode(np.frombuffer(bad.read_bytes(), np.uint8), cv2.IMREAD_COLOR) is not None  # OpenCV: grey
    with pytest.raises(SampleError, match="bad.jpg: corrupt JPEG: Corrupt JPEG data"):
        read_image(bad)
    assert np.array_equal(read_image(good), cv2.imread(str(good)))


def test_an_exif_rotation_is_found_in_the_header_wherever_it_is_and_nowhere_else(tmp_path):
    """The EXIF block that rotates a photo is an APP1 segment among the header's segments: found
    behind a 70 KB ICC profile in two segments (past where a search of the first 64 KiB looked), and not
    mistaken for the same bytes in a comment. The rotated file reads upright (OpenCV's decode)."""
    from rayinfer.datasets.images import _has_exif

    rng = np.random.default_rng(1)
    ok, plain = cv2.imencode(".jpg", rng.integers(0, 255, (48, 64, 3), np.uint8))
    plain = plain.tobytes()
    tiff = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00" + b"\x00" * 4

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    exif = segment(0xE1, b"Exif\x00\x00" + tiff)
    icc = b"".join(segment(0xE2, b"ICC_PROFILE\x00" + bytes([i, 2]) + bytes(35_000)) for i in (1, 2))
    comment = segment(0xFE, b"Exif\x00\x00 in a comment")
    late = plain[:2] + icc + exif + plain[2:]
    assert _has_exif(late) and not _has_exif(plain) and not _has_exif(plain[:2] + comment + plain[2:])
    (tmp_path / "late.jpg").write_bytes(late)
    assert read_image(tmp_path / "late.jpg").shape == (64, 48, 3)  # rotated 90 degrees to display


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((3000, 2000, 3), np.uint8))
    with pytest.raises(SampleError, match=r"big.png: 2000x3000 = 6,000,000 pixels, over the limit of 1,000,000"):
        read_image(big, max_pixels=1_000_000)
    jpg = tmp_path / "big.jpg"
    cv2.imwrite(str(jpg), np.zeros((3000, 2000, 3), np.uint8))
    with pytest.raises(SampleError, match="over the limit"):
        read_image(jpg, max_pixels=1_000_000)


def test_a_fifo_in_place_of_an_image_fails_only_that_sample(ray_session, tmp_path):
    root = write_coco(tmp_path / "coco", n_images=16, seed=6)
    victim = sorted((root / "val2017").glob("*.jpg"))[1]
    victim.unlink()
    os.mkfifo(victim)
    out = tmp_path / "out"
    t0 = time.monotonic()
    outcome = run_job(cfg_for(root, out, "sim://?latency_ms=20&capacity=2&input=1x3x64x64&output=1x7x8",
                              request_timeout_s=2, limit=16))
    assert time.monotonic() - t0 < 60
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert outcome.exit_code == EXIT_PARTIAL and len(errors) == 1 and "not a regular file" in errors[0]["message"]
    assert outcome.run["counts"]["actors_retired"] == []
    assert pq.read_table(out / "predictions").num_rows == 15


def test_a_read_that_never_returns_fails_only_its_sample_within_the_load_deadline(tmp_path):
    """A loader thread stuck in a read (a hung network mount): the per-sample deadline fails
    that sample alone; the rest of its shard is predicted; a fresh thread replaces the stuck one."""
    root = write_coco(tmp_path / "coco", n_images=8, seed=7)
    cfg = cfg_for(root, tmp_path / "out", SIM.format(ms=5), load_timeout_s=1.0, preprocess_in="loader")
    actor = inference_actor(cfg)
    samples = actor.dataset.samples()
    stuck = threading.Event()
    real_load = actor.dataset.load

    def load(sample):
        if sample.sample_id == samples[2].sample_id:
            stuck.wait(60)
        return real_load(sample)

    actor.dataset.load = load
    try:
        t0 = time.monotonic()
        result = actor.process(0, samples[:4])
        assert time.monotonic() - t0 < 10
        assert result.rows.num_rows == 3
        errors = result.errors.to_pylist()
        assert len(errors) == 1 and errors[0]["sample_id"] == samples[2].sample_id and errors[0]["transient"]
        assert "did not finish within 1s" in errors[0]["message"]
        again = actor.process(1, samples[4:8])  # the actor goes on
        assert again.rows.num_rows == 4
    finally:
        stuck.set()
        actor.close()


@pytest.mark.parametrize(("depth", "expected"), [
    (np.full((48, 64), np.nan, np.float32), "no finite value"),
    ((np.full((48, 64), 2500)).astype(np.uint16), "looks like millimetres (uint16"),
    (np.full((48, 64), 2500, np.float32), "looks like millimetres (float32"),
])
def test_depth_maps_that_are_not_metres_are_error_rows(tmp_path, depth, expected):
    from rayinfer.datasets.nyu import NyuDataset

    root = write_nyu(tmp_path / "nyu", n_frames=2, size=(48, 64), seed=1)
    dataset = NyuDataset(root)
    sample = dataset.samples()[0]
    with h5py.File(root / sample.file, "r+") as f:
        del f["depth"]
        f["depth"] = depth
    with pytest.raises(SampleError, match=re.escape(expected)):
        dataset.load(sample)
    rgb, gt = dataset.load(dataset.samples()[1])
    assert np.isfinite(gt).all()


# -- 8. what submit uploads ---------------------------------------------------------------
def test_the_job_package_holds_only_the_package(tmp_path):
    from rayinfer.jobs.cluster import job_package

    planted = [PROJECT_ROOT / "jobs" / "planted_model.onnx", PROJECT_ROOT / "jobs" / ".env"]
    for p in planted:
        p.write_text("secret")
    try:
        folder = job_package()
    finally:
        for p in planted:
            p.unlink()
    try:
        files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    finally:
        shutil.rmtree(folder.parent)
    assert folder.name == "rayinfer" and "__init__.py" in files
    assert "jobs/cli.py" in files and "actors/actor.py" in files and "datasets/coco.py" in files
    assert "jobs/demo_models/detector.onnx" in files
    assert all(f.endswith(".py") or f.startswith("jobs/demo_models/") for f in files), files
    assert not any(f.split("/")[0] not in ("actors", "datasets", "jobs", "__init__.py") for f in files)
    assert "jobs/planted_model.onnx" not in files and "jobs/.env" not in files


# -- 9, 10. the embedded Ray listens on loopback only, and ends with a killed driver ------------
def listening(pids) -> list[tuple[int, str]]:
    """(pid, local address) of every listening TCP socket the processes hold, from /proc."""
    sockets = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                sockets[f[9]] = f[1]
    found = []
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        found += [(pid, sockets[l[8:-1]]) for l in links if l.startswith("socket:[") and l[8:-1] in sockets]
    return found


#: 127.0.0.1 in /proc/net/tcp, and ::1 and ::ffff:127.0.0.1 in /proc/net/tcp6 (host byte order)
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_embedded_ray_listens_on_loopback_only_and_ends_when_the_driver_is_killed(coco_set, tmp_path):
    out = tmp_path / "out"
    driver = cli(["run", "coco", "--data-root", str(coco_set), "--model", SIM.format(ms=400), "--output", str(out),
                  "--shard-size", "1", "--quiet", "--no-report"])
    ray_procs: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not list((out / "predictions").glob("shard-*.parquet")):
            assert time.monotonic() < deadline and driver.poll() is None, driver.communicate()
            time.sleep(0.1)
        ray_procs = descendants(driver.pid)  # gcs_server, raylet, agents, workers (and the reaper's none)
        assert len(ray_procs) >= 3
        sockets = listening([driver.pid, *ray_procs])
        names = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:60] for pid, _ in sockets}
        assert len({pid for pid, _ in sockets}) >= 4, names  # the driver, GCS, raylet, the actor, agents
        assert all(addr.rsplit(":", 1)[0] in LOOPBACK for _, addr in sockets), [(names[p], a) for p, a in sockets]
        driver.send_signal(signal.SIGKILL)  # the driver alone, not its process group
        driver.wait(30)
        deadline = time.monotonic() + 20
        while (left := [p for p in ray_procs if alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, [Path(f"/proc/{p}/cmdline").read_bytes()[:100] for p in left]
    finally:
        for pid in ray_procs:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
