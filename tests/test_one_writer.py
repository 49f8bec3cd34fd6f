"""Nothing lost, part 3 (issue 48): one writer per run, evaluation that knows its ground truth,
packed shards that know their bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.base import SetupError
from rayinfer.datasets.storage import Location
from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import run_job
from rayinfer.jobs.lock import LOCK_NAME, LocalLock, ObjectLock, RunLockedError, holder
from tests.conftest import ROOT, wait_for

#: a slow simulated detector: each image takes `ms` on one stream, so a job lasts long enough
#: for a second one to meet it
SIM = "sim://?latency_ms={ms}&capacity=1&input=1x3x64x64&output=1x7x8"


def _start(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rayinfer.jobs", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env}, start_new_session=True)


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayinfer.jobs", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


@pytest.fixture(scope="module")
def coco16(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), n_images=16, seed=4)


# -- one writer per run ---------------------------------------------------------------------
def test_a_second_job_on_a_folder_being_written_is_refused_in_one_line(coco16, tmp_path):
    """The first job holds the folder from before it writes anything to its end; a second one
    (plain, --resume, --overwrite) exits 2 naming it and touches nothing; `rayinfer eval` of
    the run in progress says so; the first finishes with its own run."""
    out = tmp_path / "x"
    # 16 images at 0.7 s each: the first job outlasts three refused jobs and an eval, each a Python
    # start-up of a few seconds on a loaded machine
    first = _start(["run", "coco", "--data-root", str(coco16), "--model", SIM.format(ms=700), "--output", str(out),
                    "--shard-size", "4", "--no-report", "--quiet", "--conf-thres", "0.5"])
    try:
        wait_for(lambda: (out / LOCK_NAME).exists() or first.poll() is not None, timeout=60)
        wait_for(lambda: (out / "predictions").is_dir() or first.poll() is not None, timeout=60)
        assert first.poll() is None, first.communicate()
        listing = sorted(p.name for p in out.rglob("*"))
        for extra in ([], ["--resume"], ["--overwrite"]):
            second = _cli(["run", "coco", "--data-root", str(coco16), "--model", SIM.format(ms=1), "--output", str(out),
                           "--shard-size", "4", "--no-report", "--quiet", *extra])
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, (extra, second.stderr)
            assert lines[0] == (f"rayinfer: error: {out} is being written by pid {first.pid} on host {os.uname().nodename}"
                                f" since {lines[0].split(' since ')[1].split(';')[0]}; wait for it or choose another "
                                "--output"), lines[0]
        assert holder(str(out))["pid"] == first.pid
        ev = _cli(["eval", "coco", "--predictions", str(out), "--data-root", str(coco16)])
        assert f"is being written by pid {first.pid}" in ev.stderr and "the run is incomplete" in ev.stderr
        assert first.wait(120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert set(listing) - {LOCK_NAME} <= {p.name for p in out.rglob("*")}  # the second jobs removed nothing
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["options"] == {"conf_thres": 0.5} and run["config"]["model"] == SIM.format(ms=700)
    assert not (out / LOCK_NAME).exists() and holder(str(out)) is None
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == 16 == len(set(ids))


@pytest.mark.slow  # whole jobs through the CLI, each starting its own Ray
def test_a_job_killed_holding_the_lock_is_taken_over_and_resume_completes_once(coco16, tmp_path):
    out = tmp_path / "k"
    args = ["run", "coco", "--data-root", str(coco16), "--model", SIM.format(ms=200), "--output", str(out),
            "--shard-size", "2", "--no-report", "--quiet"]
    first = _start(args)
    try:
        wait_for(lambda: len(list((out / "predictions").glob("shard-*"))) >= 2 if (out / "predictions").is_dir()
                 else first.poll() is not None, timeout=90)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # left behind by the kill
    before = len(list((out / "predictions").glob("shard-*")))
    assert 2 <= before < 8
    resumed = _cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over the lock of pid {first.pid}" in resumed.stderr and "that process is gone" in resumed.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["shards_resumed"] == before
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == 16 == len(set(ids))


def test_local_lock_in_one_process(tmp_path):
    """flock is per open file: a second LocalLock of the same folder is refused even here."""
    out = tmp_path / "new"
    first = LocalLock(out)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"is being written by pid {os.getpid()}"):
        LocalLock(out).acquire()
    assert holder(str(out))["pid"] == os.getpid()
    first.release()
    assert not out.exists()  # the folder the lock made, empty again, is gone: as it was
    (tmp_path / "kept").mkdir()
    kept = LocalLock(tmp_path / "kept")
    kept.acquire()
    kept.release()
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())
    with pytest.raises(SetupError, match="is not a folder"):
        (tmp_path / "file").write_text("x")
        LocalLock(tmp_path / "file").acquire()


def test_object_lock_in_s3_is_created_if_absent_renewed_and_taken_over_when_stale(s3, caplog):
    s3.fs.create_dir("locks")
    root = Location("s3://locks/run", s3.options)
    first = ObjectLock(root, lease_s=0.8)
    first.acquire()
    with pytest.raises(RunLockedError, match=f"s3://locks/run is being written by pid {os.getpid()}"):
        ObjectLock(root).acquire()
    assert holder(root.url, s3.options)["pid"] == os.getpid()
    time.sleep(1.2)  # longer than the lease: still held, because the holder renews it
    with pytest.raises(RunLockedError):
        ObjectLock(root, lease_s=0.8).acquire()
    first.release()
    assert holder(root.url, s3.options) is None and not (root / LOCK_NAME).is_file()

    # a lock whose holder stopped renewing (another host, lease over): taken over, with a warning
    body = {"host": "elsewhere", "pid": 4242, "started": "2026-01-01 12:01:07", "renewed": time.time() - 120, "token": "t"}
    (root / LOCK_NAME).write_bytes(json.dumps(body).encode())
    assert holder(root.url, s3.options) is None  # stale: nobody holds it
    second = ObjectLock(root)
    with caplog.at_level("WARNING"):
        second.acquire()
    assert "taking over the lock of pid 4242 on host elsewhere" in caplog.text and "lease expired" in caplog.text
    # the one it took it from comes back and renews: the compare-and-swap tells it it lost
    ghost = ObjectLock(root)
    ghost._body, ghost._version = body, '"not-the-etag"'
    assert not ghost._put({**body, "renewed": time.time()}, (body, ghost._version))
    second.release()


@pytest.mark.slow  # whole jobs through the CLI, each starting its own Ray
def test_a_second_job_on_an_s3_output_is_refused(coco16, s3):
    s3.fs.create_dir("writers")
    url = "s3://writers/x"
    args = ["run", "coco", "--data-root", str(coco16), "--output", url, "--shard-size", "4", "--no-report", "--quiet"]
    first = _start([*args, "--model", SIM.format(ms=150)], AWS_ENDPOINT_URL=s3.endpoint)
    try:
        wait_for(lambda: (Location(url, s3.options) / LOCK_NAME).is_file() or first.poll() is not None, timeout=60)
        assert first.poll() is None, first.communicate()
        second = _cli([*args, "--model", SIM.format(ms=1)], AWS_ENDPOINT_URL=s3.endpoint)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [second.stderr.strip()]
        assert f"{url} is being written by pid {first.pid}" in second.stderr
        assert first.wait(120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    run = json.loads(Location(f"{url}/run.json", s3.options).read_bytes())
    assert run["config"]["model"] == SIM.format(ms=150)
    assert not (Location(url, s3.options) / LOCK_NAME).is_file()


def test_object_lock_in_gcs(gcs):
    gcs.fs.create_dir("gcs-locks")
    root = Location("gs://gcs-locks/run", gcs.options)
    first = ObjectLock(root)
    first.acquire()
    with pytest.raises(RunLockedError, match="gs://gcs-locks/run is being written by pid"):
        ObjectLock(root).acquire()
    first.release()
    again = ObjectLock(root)
    again.acquire()
    again.release()


# -- evaluation that knows its ground truth ---------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(ray_session, coco16, tmp_path_factory):
    from tests.test_storage import _demo_model

    out = tmp_path_factory.mktemp("eval") / "run"
    run_job(JobConfig(task="coco", data_root=str(coco16), model=str(_demo_model("coco")), output=str(out),
                      runtime="onnxruntime", progress=False, report=False))
    return out


def _annotations_without(src: Path, dest: Path, drop) -> Path:
    data = json.loads((src / "annotations/instances_val2017.json").read_text())
    data = drop(data)
    (dest / "annotations").mkdir(parents=True)
    (dest / "annotations/instances_val2017.json").write_text(json.dumps(data))
    (dest / "val2017").symlink_to(src / "val2017")
    return dest


def test_eval_against_annotations_that_lack_a_predicted_image_is_one_line_and_exit_2(coco16, saved_run, tmp_path):
    gone = json.loads((coco16 / "annotations/instances_val2017.json").read_text())["images"][0]["id"]
    root = _annotations_without(coco16, tmp_path / "lacking", lambda d: {
        **d, "images": [i for i in d["images"] if i["id"] != gone],
        "annotations": [a for a in d["annotations"] if a["image_id"] != gone]})
    out = _cli(["eval", "coco", "--predictions", str(saved_run), "--data-root", str(root)])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"rayinfer: error: 1 sample of {saved_run} is not in {root}/annotations/instances_val2017.json ({gone}): "
        "evaluate against the ground truth the run was made with, or pass --ignore-missing-images"]
    kept = _cli(["eval", "coco", "--predictions", str(saved_run), "--data-root", str(root), "--json",
                 "--ignore-missing-images"])
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["images"] == 15 and "left out of the evaluation" in kept.stderr


def test_eval_against_changed_annotations_warns_naming_both_and_records_them(coco16, saved_run, tmp_path):
    from rayinfer.datasets.base import sha256_file

    first = json.loads((coco16 / "annotations/instances_val2017.json").read_text())["images"][0]["id"]
    root = _annotations_without(coco16, tmp_path / "changed", lambda d: {
        **d, "annotations": [a for a in d["annotations"] if a["image_id"] != first]})
    same = _cli(["eval", "coco", "--predictions", str(saved_run), "--data-root", str(coco16), "--json"])
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    out = _cli(["eval", "coco", "--predictions", str(saved_run), "--data-root", str(root), "--json"])
    assert out.returncode == 0, out.stderr
    new, old = (sha256_file(r / "annotations/instances_val2017.json") for r in (root, coco16))
    assert [li for li in out.stderr.splitlines() if "warning" in li] == [
        f"rayinfer: warning: the annotations differ from the run's: evaluated against those in {root} (sha256 "
        f"{new[:12]}), the run was made with sha256 {old[:12]}"]
    assert json.loads(out.stdout)["annotations_sha256"] == new
    assert json.loads((saved_run / "metrics.json").read_text())["annotations_sha256"] == old  # the job's own
    # compare: two runs scored against different annotations are said to be
    other = tmp_path / "rescored"
    import shutil

    shutil.copytree(saved_run, other)
    (other / "metrics.json").write_text(out.stdout)
    cmp = _cli(["compare", str(saved_run), str(other)])
    assert cmp.returncode == 0 and "evaluated against different annotations" in cmp.stderr, cmp.stderr


# -- packed shards that know their bytes -----------------------------------------------------
@pytest.fixture(scope="module")
def packed(coco16, tmp_path_factory):
    dest = tmp_path_factory.mktemp("packed") / "tar"
    out = _cli(["pack", "coco", "--data-root", str(coco16), "--to", str(dest), "--samples-per-shard", "4"])
    assert out.returncode == 0, out.stderr
    return dest


def _copy(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


@pytest.mark.slow  # whole jobs through the CLI, each starting its own Ray
def test_a_member_with_flipped_bytes_or_cut_short_is_one_error_row_naming_it(ray_session, packed, tmp_path):
    import tarfile

    index = json.loads((packed / "packed.json").read_text())
    assert all(len(s["members"]) == 2 * len(s["keys"]) for s in index["shards"])  # KEY.jpg and KEY.json each
    damaged = _copy(packed, tmp_path / "flipped")
    shard = damaged / index["shards"][1]["name"]
    with tarfile.open(shard) as tar:
        victim = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    raw = bytearray(shard.read_bytes())
    middle = victim.offset_data + victim.size // 2
    raw[middle:middle + 3] = bytes(b ^ 0x5A for b in raw[middle:middle + 3])
    shard.write_bytes(bytes(raw))
    args = ["run", "coco", "--model", SIM.format(ms=1), "--no-report", "--quiet"]
    out = _cli([*args, "--data-root", str(damaged), "--output", str(tmp_path / "run-flipped")])
    assert out.returncode == 3, out.stderr
    errors = pq.read_table(tmp_path / "run-flipped/errors.parquet").to_pylist()
    assert len(errors) == 1 and errors[0]["message"].startswith(f"{shard}:{victim.name}: checksum mismatch"), errors
    assert pq.read_table(tmp_path / "run-flipped/predictions").num_rows == 15

    cut = _copy(packed, tmp_path / "cut")
    last = cut / index["shards"][-1]["name"]
    with tarfile.open(last) as tar:
        victim = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    last.write_bytes(last.read_bytes()[:victim.offset_data + 100])
    out = _cli([*args, "--data-root", str(cut), "--output", str(tmp_path / "run-cut")])
    assert out.returncode == 3, out.stderr
    messages = [e["message"] for e in pq.read_table(tmp_path / "run-cut/errors.parquet").to_pylist()]
    assert f"{last}:{victim.name}: truncated at byte 100 of {victim.size}" in messages, messages


@pytest.mark.slow  # whole jobs through the CLI, each starting its own Ray
def test_a_packed_json_listing_a_sample_twice_is_refused_and_an_old_one_reads_unchecked(ray_session, packed,
                                                                                       tmp_path):
    twice = _copy(packed, tmp_path / "twice")
    index = json.loads((twice / "packed.json").read_text())
    key = index["shards"][0]["keys"][0]
    index["shards"][2]["keys"].append(key)
    (twice / "packed.json").write_text(json.dumps(index))
    out = _cli(["run", "coco", "--data-root", str(twice), "--model", SIM.format(ms=1), "--output",
                str(tmp_path / "never"), "--no-report"])
    assert out.returncode == 2 and not (tmp_path / "never").exists(), out.stderr
    assert out.stderr.strip().splitlines() == [
        f"rayinfer: error: {twice}/packed.json: sample {key} is listed twice (in {index['shards'][0]['name']} and "
        f"{index['shards'][2]['name']}): the index is damaged; pack the set again"]

    old = _copy(packed, tmp_path / "old")
    index = json.loads((old / "packed.json").read_text())
    for s in index["shards"]:
        del s["members"]
    (old / "packed.json").write_text(json.dumps(index))
    out = _cli(["run", "coco", "--data-root", str(old), "--model", SIM.format(ms=1), "--output",
                str(tmp_path / "run-old"), "--no-report", "--quiet"])
    assert out.returncode == 0, out.stderr
    assert "4 of 4 shards were packed without member sizes and checksums" in out.stderr
    assert pq.read_table(tmp_path / "run-old/predictions").num_rows == 16
