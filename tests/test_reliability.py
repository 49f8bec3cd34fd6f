"""Nothing lost: killed actors, hung requests, driver crash + resume, awkward image files.

Node failure (several Ray nodes) lives in test_nodes.py, which needs its own cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import EXIT_OK, EXIT_PARTIAL, run_job
from tests.conftest import wait_for

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)

SIM = "sim://?latency_ms={ms}&capacity=2&input=1x3x64x64&output=1x7x8"


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), n_images=32, seed=5)


def cfg_for(root: Path, out: Path, model: str, **kw) -> JobConfig:
    base = dict(task="coco", data_root=str(root), model=model, output=str(out), shard_size=4, progress=False,
                report=False)
    return JobConfig(**{**base, **kw})


def exactly_once(out: Path, n: int) -> None:
    ids = pq.read_table(out / "predictions").column("sample_id").to_pylist()
    assert len(ids) == n and len(set(ids)) == n


def test_killing_an_actor_mid_job_loses_and_duplicates_nothing(ray_session, coco_set, tmp_path):
    ray = ray_session
    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out, SIM.format(ms=60), actors=2, max_actor_restarts=0)
    result: dict = {}
    job = threading.Thread(target=lambda: result.setdefault("outcome", run_job(cfg)))
    job.start()
    wait_for(lambda: len(list((out / "predictions").glob("shard-*.parquet"))) >= 1)
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("actor-0")]
    ray.kill(ray.get_actor(victims[0]["name"], namespace=victims[0]["namespace"]), no_restart=True)
    job.join(240)
    outcome = result["outcome"]
    assert outcome.exit_code == EXIT_OK
    exactly_once(out, 32)
    assert outcome.run["counts"]["actors_retired"] == ["actor-0"]
    assert outcome.run["counts"]["shards_requeued"] >= 1


def test_a_hung_request_is_timed_out_and_retried_elsewhere(ray_session, coco_set, tmp_path):
    flag = tmp_path / "hang-once"
    flag.write_text("")
    out = tmp_path / "out"
    model = SIM.format(ms=5) + f"&hang_file={flag}"
    # no speculative copy: the timeout itself is what is tested
    outcome = run_job(cfg_for(coco_set, out, model, actors=2, request_timeout_s=2.0, speculation=False))
    assert not flag.exists()  # one request did hang
    assert outcome.exit_code == EXIT_OK
    exactly_once(out, 32)
    assert outcome.run["counts"]["shards_requeued"] >= 1


def test_a_device_that_always_hangs_ends_in_errors_not_a_hang(ray_session, coco_set, tmp_path):
    out = tmp_path / "out"
    cfg = cfg_for(coco_set, out, SIM.format(ms=5) + "&hang=1", actors=1, request_timeout_s=1.0,
                  max_shard_attempts=2, limit=4, shard_size=2)
    t0 = time.monotonic()
    outcome = run_job(cfg)
    assert time.monotonic() - t0 < 120
    assert outcome.exit_code == EXIT_PARTIAL and outcome.errors == 4
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert all("did not finish within 1s" in e["message"] and e["stage"] == "infer" for e in errors)


def _awkward_images(root: Path) -> dict[str, str]:
    """Replace four images with grayscale, CMYK, 16-bit and EXIF-rotated versions of themselves."""
    from PIL import Image

    images = sorted((root / "val2017").glob("*.jpg"))
    bgr = cv2.imread(str(images[0]))
    cv2.imwrite(str(images[0]), cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2GRAY))
    Image.open(images[1]).convert("CMYK").save(images[1], "JPEG")
    png16 = images[2].with_suffix(".png")
    cv2.imwrite(str(png16), cv2.imread(str(images[2])).astype(np.uint16) * 257)
    png16.rename(images[2])  # a PNG under a .jpg name, as happens in the wild
    # stored rotated, with an EXIF tag saying "rotate 90 CW to display": decoded upright
    # it would be 240 wide and 320 high, contradicting the annotations (320x240)
    pil = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = 6
    pil.save(images[3], "JPEG", exif=exif)
    return {p.stem: p.name for p in images[:4]}


def test_grayscale_cmyk_16bit_and_exif_rotated_images_are_read(ray_session, tmp_path):
    root = write_coco(tmp_path / "coco", n_images=8, seed=9)
    awkward = _awkward_images(root)
    out = tmp_path / "out"
    outcome = run_job(cfg_for(root, out, SIM.format(ms=1), actors=1))
    assert outcome.exit_code == EXIT_OK, pq.read_table(out / "errors.parquet").to_pylist()
    rows = {r["file"].split("/")[-1]: r for r in pq.read_table(out / "predictions").to_pylist()}
    assert set(awkward.values()) <= set(rows)
    assert all((r["height"], r["width"]) == (240, 320) for r in rows.values())


def test_image_size_contradicting_the_annotations_is_a_sample_error(ray_session, tmp_path):
    root = write_coco(tmp_path / "coco", n_images=4, seed=2)
    victim = sorted((root / "val2017").glob("*.jpg"))[1]
    cv2.imwrite(str(victim), np.zeros((100, 100, 3), np.uint8))
    outcome = run_job(cfg_for(root, tmp_path / "out", SIM.format(ms=1)))
    errors = pq.read_table(tmp_path / "out/errors.parquet").to_pylist()
    assert outcome.exit_code == EXIT_PARTIAL and len(errors) == 1
    assert "image is 100x100 but the annotations say 320x240" in errors[0]["message"]


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen([sys.executable, "-m", "rayinfer.jobs", *args], cwd=PROJECT_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow  # five CLI runs (about 35 s); tests/test_storage.py has the same with the run in S3, also slow
def test_driver_killed_mid_run_resumes_to_the_same_metrics(ray_session, coco_set, tmp_path):
    model = SIM.format(ms=150)
    args = ["run", "coco", "--data-root", str(coco_set), "--model", model, "--shard-size", "2", "--no-report", "--quiet"]
    crashed = tmp_path / "crashed"
    driver = _cli(args + ["--output", str(crashed)], start_new_session=True)
    try:
        wait_for(lambda: len(list((crashed / "predictions").glob("shard-*.parquet"))) >= 3, timeout=120)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started
        driver.wait(30)
    committed = len(list((crashed / "predictions").glob("shard-*.parquet")))
    assert 3 <= committed < 16
    assert not (crashed / "metrics.json").exists()

    refused = _cli(args + ["--output", str(crashed)])
    _, err = refused.communicate(timeout=120)
    assert refused.returncode == 2 and "already holds a run; pass --resume" in err

    resumed = _cli(args + ["--output", str(crashed), "--resume"])
    _, err = resumed.communicate(timeout=200)
    assert resumed.returncode == 0, err
    # the reference: the same job, uninterrupted (in this process: its Ray is already up)
    run_job(cfg_for(coco_set, tmp_path / "clean", model, shard_size=2, quiet=True))
    exactly_once(crashed, 32)
    run = json.loads((crashed / "run.json").read_text())
    assert run["counts"]["shards_resumed"] == committed
    a = json.loads((crashed / "metrics.json").read_text())
    b = json.loads((tmp_path / "clean/metrics.json").read_text())
    assert a == b

    changed = _cli(args[:-1] + ["--output", str(crashed), "--resume", "--iou-thres", "0.5"])
    _, err = changed.communicate(timeout=120)
    assert changed.returncode == 2 and "the configuration changed (detection.iou_thres: 0.7 -> 0.5)" in err


@pytest.mark.parametrize("case", ["annotations", "model", "input", "output"])
def test_setup_errors_print_one_clear_line_and_run_nothing(coco_set, tmp_path, case):
    from tests.conftest import make_onnx

    data, model, out = coco_set, SIM.format(ms=1), tmp_path / "out"
    if case == "annotations":
        data = tmp_path / "data"
        (data / "annotations").mkdir(parents=True)
        (data / "annotations/instances_val2017.json").write_text("{not json")
        expected = "not a JSON file"
    elif case == "model":
        model = str(tmp_path / "model.onnx")
        Path(model).write_bytes(b"\x00garbage")
        expected = "cannot load model"
    elif case == "input":
        model = str(make_onnx(tmp_path / "scale.onnx", "scale"))
        expected = "not an image tensor"
    else:
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"fingerprint": {"task": "nyu"}}))
        expected = "already holds a run"
    proc = _cli(["run", "coco", "--data-root", str(data), "--model", model, "--output", str(out)])
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rayinfer: error:") and expected in lines[0], err
    assert not (out / "predictions").exists() or case == "output"
