"""Data and models in object storage (issue 18 item 1): a real S3-compatible server (moto.s
server mode, tests/conftest.py `s3`) on 127.0.0.1, no client patched."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayinfer.actors.fetch import cache_dir
from rayinfer.datasets.base import SampleError
from rayinfer.datasets.storage import Location
from rayinfer.datasets.synthetic import write_coco, write_nyu
from rayinfer.jobs.config import ConfigError, JobConfig
from rayinfer.jobs.driver import run_job
from rayinfer.jobs.tasks import get_task

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def test_a_location_reads_lists_and_pickles_the_same_locally_in_s3_and_in_gcs(tmp_path, s3, gcs):
    local = tmp_path / "set"
    (local / "val").mkdir(parents=True)
    for name in ("b.h5", "a.h5", "c.txt"):
        (local / "val" / name).write_bytes(name.encode())
    url = s3.upload(local, "loc/set")
    in_gcs = Location(gcs.upload(local, "loc/set"), gcs.options)
    for root in (Location(str(local)), Location(url, s3.options), in_gcs):
        assert root.is_dir() and not root.is_file()
        assert [f.name for f in (root / "val").glob("*.h5")] == ["a.h5", "b.h5"]
        assert (root / "val/a.h5").read_bytes() == b"a.h5" and (root / "val/a.h5").size() == 4
        assert (root / "val/a.h5").relative_to(root) == "val/a.h5" and (root / "val/a.h5").stem == "a"
        assert not (root / "val/missing.h5").is_file()
        with pytest.raises(FileNotFoundError):
            (root / "val/missing.h5").read_bytes()
        for bad in ("../x", "val/../../x", "/etc/passwd"):
            with pytest.raises(ValueError, match="escapes the data root"):
                root / bad
        again = pickle.loads(pickle.dumps(root / "val/b.h5"))  # as actors get it: URL and options
        assert again == root / "val/b.h5" and again.read_bytes() == b"b.h5"
    assert str(Location(url, s3.options) / "val/a.h5") == f"{url}/val/a.h5"
    assert sorted(Location(url, s3.options).listing()) == ["val/a.h5", "val/b.h5", "val/c.txt"]
    assert sorted(in_gcs.listing()) == ["val/a.h5", "val/b.h5", "val/c.txt"]
    written = in_gcs / "out/x.bin"
    written.write_bytes(b"x" * 100_000)
    assert written.read_bytes() == b"x" * 100_000


def test_a_whole_s3_object_is_one_get_with_the_endpoint_in_either_form(tmp_path, s3):
    """read_bytes asks the store once (a GET, no HEAD first); the endpoint given as pyarrow takes
    it (a URL, or host:port with `scheme`), anonymous or signed, reads the same bytes."""
    from collections import Counter

    from tests.support.s3server import CuttingProxy

    (tmp_path / "one").mkdir()
    (tmp_path / "one/x.bin").write_bytes(os.urandom(300_000))
    url = s3.upload(tmp_path / "one", "one-get/set")
    requests: Counter[str] = Counter()
    proxy = CuttingProxy(int(s3.endpoint.rsplit(":", 1)[1]), lambda method, path: requests.update([method]))
    try:
        host = proxy.endpoint.split("://", 1)[1]
        for options in ({"endpoint_override": proxy.endpoint},
                        {"endpoint_override": host, "scheme": "http", "anonymous": "true"}):
            requests.clear()
            assert (Location(url, options) / "x.bin").read_bytes() == (tmp_path / "one/x.bin").read_bytes()
            assert requests == Counter(GET=1), (options, requests)
        with pytest.raises(FileNotFoundError):
            (Location(url, {"endpoint_override": proxy.endpoint}) / "y.bin").read_bytes()
    finally:
        proxy.stop()


def test_storage_options_are_flags_and_credentials_among_them_are_refused():
    from rayinfer.jobs.options import parser_for

    parse = parser_for(dict[str, str])
    assert parse("endpoint_override=http://127.0.0.1:9000,region=eu-west-1") == {
        "endpoint_override": "http://127.0.0.1:9000", "region": "eu-west-1"}
    assert parse('{"anonymous": true}') == {"anonymous": True}
    with pytest.raises(ConfigError, match="credentials come from the environment"):
        JobConfig(task="coco", data_root="s3://b/c", model="m.onnx", output="o",
                  storage_options={"secret_key": "x"})
    with pytest.raises(ConfigError, match="credentials in a URL") as refused:
        JobConfig(task="coco", data_root="https://me:hunter2@example.org/coco", model="m.onnx", output="o")
    assert "hunter2" not in str(refused.value)


def _demo_model(task: str) -> Path:
    return get_task(task).demo_model


@pytest.fixture(scope="module")
def coco_here(ray_session, tmp_path_factory):
    """24 synthetic COCO images, the demo detector, and the metrics of a run from the disk to a folder."""
    root = write_coco(tmp_path_factory.mktemp("coco"), n_images=24, seed=0)
    out = tmp_path_factory.mktemp("local") / "run"
    here = run_job(JobConfig(task="coco", data_root=str(root), model=str(_demo_model("coco")), output=str(out),
                             report=False, progress=False, runtime="onnxruntime", shard_size=6))
    return root, out, here


def test_coco_from_s3_equals_the_local_run_and_a_missing_object_is_one_error_row(coco_here, s3, tmp_path):
    """Images and the model in S3: the same metrics as from the disk; the model fetched once
    into the node's cache (keyed by its SHA-256, as pinned in the fingerprint); the report's
    figures read from S3 too; one object deleted -> one error row naming its URL."""
    root, _, here = coco_here
    data = s3.upload(root, "coco-job/coco")
    model = s3.upload(_demo_model("coco"), "coco-job/models/detector.onnx")
    common = dict(task="coco", progress=False, runtime="onnxruntime", shard_size=6)
    there = run_job(JobConfig(data_root=data, model=model, storage_options=s3.options,
                              output=str(tmp_path / "s3"), **common))
    assert there.metrics == here.metrics and here.metrics["images"] == 24 and here.metrics["AP50"] > 0.3
    run = json.loads((tmp_path / "s3/run.json").read_text())
    assert run["config"]["model"] == model and run["config"]["data_root"] == data
    assert {a["fetch_threads"] for a in run["actors"]} == {16}  # samples fetched ahead, 16 at once
    local_run = json.loads((coco_here[1] / "run.json").read_text())
    assert {a["fetch_threads"] for a in local_run["actors"]} == {0}
    manifest = json.loads((tmp_path / "s3/manifest.json").read_text())
    sha = manifest["fingerprint"]["model"]["sha256"]
    assert manifest["fingerprint"]["model"]["path"] == model and run["config"]["model_sha256"] == sha
    assert (cache_dir() / "models" / sha / "detector.onnx").read_bytes() == _demo_model("coco").read_bytes()
    assert (tmp_path / "s3/report/confusion_matrix.png").stat().st_size > 0
    # the same over plain HTTP (read-only, no listing: COCO's files are named by its annotations)
    (tmp_path / "web").mkdir()
    shutil.copytree(root, tmp_path / "web/coco")
    shutil.copy(_demo_model("coco"), tmp_path / "web/detector.onnx")
    with _http_server(tmp_path / "web") as base:
        web = run_job(JobConfig(data_root=f"{base}/coco", model=f"{base}/detector.onnx",
                                output=str(tmp_path / "web-run"), report=False, **common))
    assert web.metrics == here.metrics
    # offline eval of the S3 run, the data read from S3 with the run's storage options
    out = _cli(["eval", "coco", "--predictions", str(tmp_path / "s3"), "--data-root", data, "--json"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["AP"] == pytest.approx(here.metrics["AP"], abs=1e-12)

    gone = json.loads((root / "annotations/instances_val2017.json").read_text())["images"][5]["file_name"]
    s3.fs.delete_file(f"coco-job/coco/val2017/{gone}")
    missing = run_job(JobConfig(data_root=data, model=model, storage_options=s3.options,
                                output=str(tmp_path / "s3-missing"), report=False, **common))
    assert missing.errors == 1
    errors = pq.read_table(tmp_path / "s3-missing/errors.parquet").to_pylist()
    assert errors[0]["message"] == f"{data}/val2017/{gone}: file not found" and not errors[0]["transient"]
    assert pq.read_table(tmp_path / "s3-missing/predictions").num_rows == 23


@pytest.mark.slow  # three jobs and an eval; the quick tier reads, lists and writes gs:// and checks its errors
def test_a_coco_job_kept_in_gcs_equals_the_local_run_resumes_and_evaluates_offline(coco_here, gcs, tmp_path):
    """gs:// for data, model and output (a GCS emulator on 127.0.0.1, pyarrow's GcsFileSystem):
    the local run's metrics; the run's objects committed; --resume finds every shard done;
    `rayinfer eval` reads the run and the data from GCS; a deleted image is one error row
    naming its gs:// URL."""
    root, _, here = coco_here
    data = gcs.upload(root, "gcs-job/coco")
    model = gcs.upload(_demo_model("coco"), "gcs-job/models/detector.onnx")
    output = "gs://gcs-job/runs/a"
    common = dict(task="coco", progress=False, runtime="onnxruntime", shard_size=6, report=False,
                  data_root=data, model=model, storage_options=gcs.options)
    there = run_job(JobConfig(output=output, **common))
    assert there.metrics == here.metrics and there.exit_code == 0
    kept = Location(output, gcs.options)
    assert sorted((kept / "predictions").listing()) == [f"shard-{i:05d}.parquet" for i in range(4)]
    assert json.loads((kept / "metrics.json").read_bytes())["AP"] == here.metrics["AP"]
    again = run_job(JobConfig(output=output, resume=True, **common))
    assert again.run["counts"]["processed_this_run"] == 0 and again.metrics == here.metrics
    out = _cli(["eval", "coco", "--predictions", output, "--data-root", data, "--storage-options",
                json.dumps(gcs.options), "--json"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["AP"] == pytest.approx(here.metrics["AP"], abs=1e-12)

    gone = json.loads((root / "annotations/instances_val2017.json").read_text())["images"][5]["file_name"]
    gcs.fs.delete_file(f"gcs-job/coco/val2017/{gone}")
    missing = run_job(JobConfig(output=str(tmp_path / "missing"), **common))
    errors = pq.read_table(tmp_path / "missing/errors.parquet").to_pylist()
    assert [e["message"] for e in errors] == [f"{data}/val2017/{gone}: file not found"]
    assert missing.errors == 1 and pq.read_table(tmp_path / "missing/predictions").num_rows == 23


def test_nyu_from_s3_equals_the_local_run(ray_session, s3, tmp_path):
    root = write_nyu(tmp_path / "nyu", n_frames=6, seed=0)
    data = s3.upload(root, "nyu-job/nyu")
    common = dict(task="nyu", model=str(_demo_model("nyu")), progress=False, runtime="onnxruntime", report=False)
    here = run_job(JobConfig(data_root=str(root), output=str(tmp_path / "local"), **common))
    there = run_job(JobConfig(data_root=data, storage_options=s3.options, output=str(tmp_path / "s3"), **common))
    assert there.metrics == here.metrics and here.metrics["images"] == 6 and 0 < here.metrics["abs_rel"] < 1


@contextlib.contextmanager
def _http_server(folder: Path):
    """A static file server for `folder` on 127.0.0.1 (the standard library's); yields its base URL."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    with _serve(functools.partial(Quiet, directory=str(folder))) as base:
        yield base


@contextlib.contextmanager
def _serve(handler):
    """`handler` (an http.server request handler) on 127.0.0.1; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_an_http_server_that_drops_the_connection_mid_object_is_retried_then_named(tmp_path, caplog):
    """A body cut short (fewer bytes than Content-Length, then the connection closed) is a
    transient error: retried with back-off; one that never comes whole is a one-line
    sample error naming the URL and how much arrived."""
    from rayinfer.datasets.images import read_bytes

    data = os.urandom(90_000)
    drops = {"/flaky.jpg": 2, "/broken.jpg": 99}

    class Dropping(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if drops.get(self.path, 0) > 0:
                drops[self.path] -= 1
                self.wfile.write(data[:30_000])
                self.close_connection = True
                return
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    with _serve(Dropping) as base, caplog.at_level("WARNING", logger="rayinfer.datasets.storage"):
        assert Location(f"{base}/flaky.jpg").read_bytes() == data
        assert drops["/flaky.jpg"] == 0
        retried = [r.getMessage() for r in caplog.records]
        assert len(retried) == 2 and all(f"{base}/flaky.jpg: connection dropped after 30,000 of 90,000 bytes" in m
                                         for m in retried)
        with pytest.raises(SampleError) as failed:
            read_bytes(Location(f"{base}/broken.jpg"))
    message = str(failed.value)
    assert message == f"{base}/broken.jpg: cannot read: connection dropped after 30,000 of 90,000 bytes (4 tries)"
    assert "\n" not in message and drops["/broken.jpg"] == 99 - 4
    assert failed.value.transient  # the network's failure, not the file's: --resume tries it again


def test_s3_answers_cut_short_are_retried_and_one_never_whole_is_a_transient_error_row(coco_here, s3, tmp_path):
    """The store (moto) behind a proxy that cuts chosen GET answers at half their body: an image
    cut twice arrives whole on the SDK's retries (its predictions as from the disk), one cut every
    time is one error row naming its URL, marked transient, and `--resume` (the network mended)
    predicts it: then the metrics equal the local run's."""
    from collections import Counter

    from tests.support.s3server import CuttingProxy

    root, local, here = coco_here
    data = s3.upload(root, "cut-job/coco")
    files = sorted(p.name for p in (root / "val2017").iterdir())
    flaky, broken = files[3], files[7]
    gets: Counter[str] = Counter()
    mended = threading.Event()

    def cut(method: str, path: str) -> bool:
        key = path.split("?")[0]
        if method != "GET" or mended.is_set():
            return False
        gets[key] += 1
        return key.endswith(broken) or (key.endswith(flaky) and gets[key] <= 2)

    proxy = CuttingProxy(int(s3.endpoint.rsplit(":", 1)[1]), cut)
    common = dict(task="coco", model=str(_demo_model("coco")), data_root=data, output=str(tmp_path / "run"),
                  storage_options={"endpoint_override": proxy.endpoint}, progress=False, report=False,
                  runtime="onnxruntime", shard_size=6)
    try:
        first = run_job(JobConfig(**common))
        assert first.errors == 1 and gets[f"/cut-job/coco/val2017/{flaky}"] == 3
        (error,) = pq.read_table(tmp_path / "run/errors.parquet").to_pylist()
        assert error["message"].startswith(f"{data}/val2017/{broken}: cannot read: network error (GetObject, 5 tries): ")
        assert error["transient"] and "\n" not in error["message"]
        ids = pq.read_table(tmp_path / "run/predictions").column("sample_id").to_pylist()
        assert len(set(ids)) == 23
        flaky_id = str(int(flaky.split(".")[0]))
        mine = pq.read_table(tmp_path / "run/predictions", filters=[("sample_id", "=", flaky_id)])
        theirs = pq.read_table(local / "predictions", filters=[("sample_id", "=", flaky_id)])
        assert mine.num_rows == theirs.num_rows > 0 and mine.column("score").equals(theirs.column("score"))
        mended.set()
        resumed = run_job(JobConfig(**common, resume=True))
    finally:
        proxy.stop()
    assert resumed.errors == 0 and resumed.metrics == here.metrics


@pytest.mark.shared
@pytest.mark.slow  # eight whole real-data jobs (about 70 s)
def test_the_real_mini_sets_from_s3_give_the_local_metrics(ray_session, s3, tmp_path):
    """Loose, WebDataset tar and Parquet, all in S3: the local run's metrics."""
    from rayinfer.jobs.pack import pack_dataset
    from tests.conftest import need_shared

    for task, data, model in (("coco", "coco-val2017-mini", "yolov8n_int8.onnx"),
                              ("nyu", "nyu-depth-v2-mini", "fastdepth_nyu_224_fp32.onnx")):
        root, weights = need_shared("data", data), need_shared("models", model)
        url = s3.upload(root, f"real/{data}")
        model_url = s3.upload(weights, f"real/models/{model}")
        common = dict(task=task, progress=False, runtime="onnxruntime", report=False)
        here = run_job(JobConfig(data_root=str(root), model=str(weights), output=str(tmp_path / f"{task}-local"),
                                 **common)).metrics
        there = run_job(JobConfig(data_root=url, model=model_url, storage_options=s3.options,
                                  output=str(tmp_path / f"{task}-s3"), **common)).metrics
        assert there == here, task
        for fmt in ("tar", "parquet"):  # packed into S3, 16 samples a shard
            dest = Location(f"s3://real/{data}-{fmt}", s3.options)
            pack_dataset(get_task(task).dataset(JobConfig(task=task, data_root=str(root), model="", output="")),
                         dest, fmt, 16)
            packed = run_job(JobConfig(data_root=dest.url, model=model_url, storage_options=s3.options,
                                       output=str(tmp_path / f"{task}-{fmt}"), **common)).metrics
            assert packed == here, (task, fmt)
        if task == "coco":
            assert here["images"] == 79 and round(here["AP"], 4) == 0.4255


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayinfer.jobs", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.parametrize("case", ["bucket", "annotations", "model", "endpoint", "credentials"])
def test_bad_storage_is_one_line_naming_the_url_and_exit_2(s3, tmp_path, case):
    """Set up through the standard AWS_ENDPOINT_URL variable (no --storage-options)."""
    root = write_coco(tmp_path / "coco", n_images=2, seed=1)
    data = s3.upload(root, f"bad-{case}/coco")
    model = str(_demo_model("coco"))
    extra: list[str] = []
    endpoint = s3.endpoint
    if case == "bucket":
        data, expected = "s3://no-such-bucket/coco", "data root s3://no-such-bucket/coco: no bucket 'no-such-bucket'"
    elif case == "annotations":
        s3.fs.delete_file(f"bad-{case}/coco/annotations/instances_val2017.json")
        expected = f"annotation file not found: {data}/annotations/instances_val2017.json"
    elif case == "model":
        model = f"s3://bad-{case}/models/none.onnx"
        expected = f"model not found: {model}"
    elif case == "endpoint":  # nothing listens there: the SDK's retries, then one line
        endpoint, expected = "http://127.0.0.1:9", f"data root {data}: network error (HeadObject, 5 tries): curlCode: 7"
    else:
        extra, expected = ["--storage-options", "secret_key=abc"], "credentials come from the environment"
    proc = _cli(["run", "coco", "--data-root", data, "--model", model, *extra, "--quiet"],
                AWS_ENDPOINT_URL=endpoint)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert "abc" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", ["bucket", "model", "endpoint"])
def test_bad_gcs_storage_is_one_line_naming_the_url_and_exit_2(gcs, tmp_path, case):
    """The GCS client's errors, one line each: its status code and last message, not its
    error_info; an endpoint where nothing listens is given up after `retry_time_limit`."""
    root = write_coco(tmp_path / "coco", n_images=2, seed=1)
    data = gcs.upload(root, f"bad-gcs-{case}/coco")
    model = str(_demo_model("coco"))
    options = dict(gcs.options)
    if case == "bucket":
        data, expected = "gs://no-such-bucket/coco", "data root gs://no-such-bucket/coco: no bucket 'no-such-bucket'"
    elif case == "model":
        model = f"gs://bad-gcs-{case}/models/none.onnx"
        expected = f"model not found: {model}"
    else:
        options.update(endpoint_override="http://127.0.0.1:9", retry_time_limit="2")
        expected = (f"data root {data}: network error (GetObjectMetadata, retried): PerformWork() - CURL error [7]"
                    "=Could not connect to server")
    proc = _cli(["run", "coco", "--data-root", data, "--model", model, "--storage-options", json.dumps(options),
                 "--quiet"])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert "error_info" not in proc.stderr and "Traceback" not in proc.stderr
    gcs_options = Location("gs://b/x", {"endpoint_override": "https://h:1", "anonymous": "false"})._gcs_options()
    assert (gcs_options["scheme"], gcs_options["endpoint_override"], gcs_options["anonymous"]) == ("https", "h:1", False)


def test_no_credentials_and_access_denied_name_the_url_and_where_credentials_came_from(tmp_path):
    """A store that checks credentials (moto with IAM on, its own server): no credentials at all,
    a user that may only list (setup: one line, exit 2), a user denied one image (that sample is
    an error row naming its URL, the others are predicted, exit 3). No secret is ever printed.
    Without credentials the remote file is the model, asked for before any IAM user exists: moto
    5.2 answers an unsigned request with a 500 (a KeyError on the Authorization header) where the
    key is a prefix or a multipart upload, or once users have policies; S3 answers 403."""
    from tests.support.s3server import S3Server

    server = S3Server()
    try:
        root = write_coco(tmp_path / "coco", n_images=4, seed=1)
        data = server.upload(root, "locked/coco")
        import boto3  # one PUT: moto 5.2 fails unsigned HEADs of multipart-uploaded objects (pyarrow's upload)

        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").put_object(
            Bucket="locked", Key="models/detector.onnx", Body=_demo_model("coco").read_bytes())
        model = "s3://locked/models/detector.onnx"
        denied_image = sorted((root / "val2017").iterdir())[1].name
        nobody = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        nobody.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
                      AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=server.endpoint)
        args = ["-m", "rayinfer.jobs", "run", "coco", "--model", str(_demo_model("coco")), "--quiet", "--no-report"]

        def refused(env: dict[str, str], more: list[str], where: str, why: str, secret: str = "") -> None:
            out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
            proc = subprocess.run([sys.executable, *args, *more, "--output", str(out)], cwd=PROJECT_ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            assert proc.returncode == 2 and len(lines) == 1 and where in lines[0] and why in lines[0], proc.stderr
            assert (not secret or secret not in proc.stderr) and not out.exists()

        server.require_auth()
        refused(nobody, ["--data-root", str(root), "--model", model], f"the model {model}: access denied (",
                "no credentials found (none in the environment, no profile")
        server.require_auth(False)
        lister = server.add_user("lister", [{"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": "*"}])
        reader = server.add_user("reader", [
            {"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"},
            {"Effect": "Deny", "Action": ["s3:GetObject"], "Resource": f"arn:aws:s3:::locked/coco/val2017/{denied_image}"}])
        server.require_auth()
        refused({**nobody, **lister}, ["--data-root", data], f"data root {data}: access denied (",
                "the credentials from the environment (AWS_ACCESS_KEY_ID) may not do this", lister["AWS_SECRET_ACCESS_KEY"])
        out = tmp_path / "reader"
        proc = subprocess.run([sys.executable, *args, "--data-root", data, "--output", str(out)], cwd=PROJECT_ROOT,
                              env={**nobody, **reader}, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 3, proc.stderr
        errors = pq.read_table(out / "errors.parquet").to_pylist()
        assert len(errors) == 1 and f"{data}/val2017/{denied_image}: cannot read: access denied (" in errors[0]["message"]
        assert pq.read_table(out / "predictions").num_rows == 3
        for text in (proc.stderr, proc.stdout, (out / "run.json").read_text()):
            assert reader["AWS_SECRET_ACCESS_KEY"] not in text and reader["AWS_ACCESS_KEY_ID"] not in text
    finally:
        server.stop()


def test_cluster_yaml_is_valid_for_ray_and_needs_no_shared_file_system():
    """issue 18 item 4: the example keeps data and models in S3 (an instance role for the
    workers), and Ray's own schema accepts it as `ray up` would."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = (PROJECT_ROOT / "cluster.yaml").read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))
    assert "--data-root s3://" in text and "--model s3://" in text
    assert "IamInstanceProfile" in config["available_node_types"]["gpu_worker"]["node_config"]
    assert not any("mount" in c for c in config.get("setup_commands", []) + config.get("initialization_commands", []))


def test_a_run_kept_in_s3_commits_resumes_and_overwrites_as_on_disk(coco_here, s3, tmp_path):
    """issue 18 item 3: --output s3://...: every file an object written whole, the same
    metrics as a local run; a run cut short (its last shard and the final files gone) is
    refused without --resume and completed with it, exactly once; --overwrite removes only
    what the run recorded; eval and compare read the run from S3."""
    root, local, here = coco_here
    s3.fs.create_dir("runs")
    common = dict(task="coco", data_root=str(root), model=str(_demo_model("coco")), progress=False,
                  runtime="onnxruntime", shard_size=6, storage_options=s3.options)
    url = "s3://runs/ours/coco"
    first = run_job(JobConfig(output=url, **common))
    assert first.metrics == here.metrics
    listed = Location(url, s3.options).listing()
    assert {"manifest.json", "metrics.json", "run.json", "errors.parquet", "coco_results.json", "report.html",
            "report/confusion_matrix.png", "report/timeline.png"} <= set(listed)
    assert sorted(n for n in listed if n.startswith("predictions/")) == [
        f"predictions/shard-{i:05d}.parquet" for i in range(4)]

    # as a driver killed after its third shard would leave it: no last shard, no final files
    for name in ("predictions/shard-00003.parquet", "metrics.json", "run.json", "errors.parquet"):
        s3.fs.delete_file(f"runs/ours/coco/{name}")
    out = _cli(["run", "coco", "--data-root", str(root), "--model", str(_demo_model("coco")), "--shard-size", "6",
                "--runtime", "onnxruntime", "--output", url, "--quiet"], AWS_ENDPOINT_URL=s3.endpoint)
    assert out.returncode == 2 and "already holds a run; pass --resume" in out.stderr, out.stderr
    resumed = run_job(JobConfig(output=url, resume=True, **common))
    assert resumed.metrics == here.metrics and resumed.run["counts"]["shards_resumed"] == 3
    ids = pq.ParquetDataset("runs/ours/coco/predictions", filesystem=s3.fs).read().column("sample_id").to_pylist()
    assert len(ids) == 24 and len(set(ids)) == 24  # 0 lost, 0 duplicated

    out = _cli(["eval", "coco", "--predictions", url, "--data-root", str(root), "--json"],
               AWS_ENDPOINT_URL=s3.endpoint)
    assert out.returncode == 0 and json.loads(out.stdout)["AP"] == here.metrics["AP"], out.stderr
    out = _cli(["compare", url, str(local)], AWS_ENDPOINT_URL=s3.endpoint)
    assert out.returncode == 0 and "+0.0000" in out.stdout, out.stderr

    s3.fs.open_output_stream("runs/ours/coco/notes.txt").close()  # a file the user put there
    run_job(JobConfig(output=url, overwrite=True, report=False, **common))
    after = Location(url, s3.options).listing()
    assert "notes.txt" in after and "report.html" not in after and "metrics.json" in after
    s3.fs.open_output_stream("runs/ours/other/notes.txt").close()
    out = _cli(["run", "coco", "--data-root", str(root), "--model", str(_demo_model("coco")),
                "--output", "s3://runs/ours/other", "--quiet"], AWS_ENDPOINT_URL=s3.endpoint)
    assert out.returncode == 2 and "holds objects but no rayinfer run" in out.stderr, out.stderr


@pytest.mark.slow  # two kills, timing-dependent (about 40 s)
def test_actor_and_driver_killed_with_the_run_in_s3_lose_and_duplicate_nothing(ray_session, s3, tmp_path):
    import signal

    import ray

    from tests.conftest import wait_for

    root = write_coco(tmp_path / "coco", n_images=32, seed=5)
    s3.fs.create_dir("kills")
    sim = "sim://?latency_ms={ms}&capacity=2&input=1x3x64x64&output=1x7x8"
    common = dict(task="coco", data_root=str(root), shard_size=4, progress=False, report=False,
                  storage_options=s3.options)

    def committed(prefix: str) -> int:
        return sum(n.startswith("predictions/") for n in Location(f"s3://kills/{prefix}", s3.options).listing())

    def sample_ids(prefix: str) -> list[str]:
        return pq.ParquetDataset(f"kills/{prefix}/predictions", filesystem=s3.fs).read().column("sample_id").to_pylist()

    # an actor killed mid-job: its shards go to the other actor
    result: dict = {}
    cfg = JobConfig(model=sim.format(ms=60), output="s3://kills/actor", actors=2, max_actor_restarts=0, **common)
    job = threading.Thread(target=lambda: result.setdefault("outcome", run_job(cfg)))
    job.start()
    wait_for(lambda: committed("actor") >= 1, timeout=120)
    victim = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("actor-0")][0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    job.join(240)
    assert result["outcome"].run["counts"]["actors_retired"] == ["actor-0"]
    ids = sample_ids("actor")
    assert len(ids) == 32 and len(set(ids)) == 32

    # the driver killed mid-job (with the Ray it started), then --resume: the same metrics as a clean run
    args = ["run", "coco", "--data-root", str(root), "--model", sim.format(ms=150), "--shard-size", "4",
            "--no-report", "--quiet", "--output", "s3://kills/driver"]
    env = {**os.environ, "AWS_ENDPOINT_URL": s3.endpoint}
    driver = subprocess.Popen([sys.executable, "-m", "rayinfer.jobs", *args], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: committed("driver") >= 2, timeout=120)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(30)
    before = committed("driver")
    assert 2 <= before < 8
    resumed = _cli(args + ["--resume"], AWS_ENDPOINT_URL=s3.endpoint)
    assert resumed.returncode == 0, resumed.stderr
    run = json.loads(Location("s3://kills/driver/run.json", s3.options).read_bytes())
    assert run["counts"]["shards_resumed"] == before
    ids = sample_ids("driver")
    assert len(ids) == 32 and len(set(ids)) == 32
    clean = run_job(JobConfig(model=sim.format(ms=150), output=str(tmp_path / "clean"), quiet=True, **common))
    assert json.loads(Location("s3://kills/driver/metrics.json", s3.options).read_bytes()) == clean.metrics


def test_packed_shards_tar_and_parquet_local_and_in_s3_give_the_loose_metrics(coco_here, s3, tmp_path):
    """issue 18 item 2: `rayinfer pack` writes WebDataset tars or Parquet files (locally or to
    S3); a job on them gives the loose files' metrics, with one work unit per packed shard; a
    corrupt member is one error row and the rest of its tar is read."""
    root, _, here = coco_here
    common = dict(task="coco", model=str(_demo_model("coco")), progress=False, runtime="onnxruntime",
                  report=False, storage_options=s3.options)
    s3.fs.create_dir("packed")
    for fmt, dest in (("tar", str(tmp_path / "coco-tar")), ("parquet", "s3://packed/coco-parquet")):
        out = _cli(["pack", "coco", "--data-root", str(root), "--to", dest, "--format", fmt,
                    "--samples-per-shard", "5"], AWS_ENDPOINT_URL=s3.endpoint)
        assert out.returncode == 0 and "24 samples in 5 " in out.stdout, out.stderr
        packed = run_job(JobConfig(data_root=dest, output=str(tmp_path / f"run-{fmt}"), **common))
        assert packed.metrics == here.metrics, fmt
        assert packed.run["counts"]["shards"] == 5  # the packed shards are the work units
    index = json.loads((tmp_path / "coco-tar/packed.json").read_text())
    assert index["format"] == "tar" and sum(len(s["keys"]) for s in index["shards"]) == 24
    out = _cli(["pack", "coco", "--data-root", str(root), "--to", str(tmp_path / "coco-tar")])
    assert out.returncode == 2 and "is not empty; nothing there was touched" in out.stderr

    # one member's bytes damaged in place (same size): that sample is an error row, the others read
    import tarfile

    shard = tmp_path / "coco-tar" / index["shards"][1]["name"]
    with tarfile.open(shard) as tar:
        victim = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    raw = bytearray(shard.read_bytes())
    raw[victim.offset_data:victim.offset_data + victim.size] = b"\x00" * victim.size
    shard.write_bytes(bytes(raw))
    damaged = run_job(JobConfig(data_root=str(tmp_path / "coco-tar"), output=str(tmp_path / "damaged"), **common))
    errors = pq.read_table(tmp_path / "damaged/errors.parquet").to_pylist()
    assert damaged.errors == 1 and errors[0]["message"].startswith(f"{shard}:{victim.name}: "), errors
    assert pq.read_table(tmp_path / "damaged/predictions").num_rows == 23


def test_nyu_packed_in_s3_gives_the_loose_metrics_and_the_reader_lets_shards_go(ray_session, s3, tmp_path):
    from rayinfer.datasets.nyu import NyuDataset
    from rayinfer.jobs.pack import pack_dataset

    root = write_nyu(tmp_path / "nyu", n_frames=5, seed=0)
    s3.fs.create_dir("packed-nyu")
    dest = Location("s3://packed-nyu/tar", s3.options)
    assert pack_dataset(NyuDataset(root), dest, "tar", 2) == {"shards": 3, "samples": 5, "skipped": []}
    common = dict(task="nyu", model=str(_demo_model("nyu")), progress=False, runtime="onnxruntime", report=False)
    here = run_job(JobConfig(data_root=str(root), output=str(tmp_path / "local"), **common))
    there = run_job(JobConfig(data_root=dest.url, storage_options=s3.options, output=str(tmp_path / "s3"), **common))
    assert there.metrics == here.metrics and there.run["counts"]["shards"] == 3
    packed = NyuDataset(dest)
    assert [s.sample_id for s in packed.samples()] == [s.sample_id for s in NyuDataset(root).samples()]
    for sample in packed.samples():
        packed.load(sample)
    assert packed.reader.members == {}  # each shard let go once its frames were served


def test_where_aws_credentials_come_from_is_named_never_shown(tmp_path):
    from rayinfer.datasets.storage import aws_credential_source

    none = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no"), "AWS_CONFIG_FILE": str(tmp_path / "no")}
    assert "no credentials in the environment, a profile or a container" in aws_credential_source(none)
    assert "metadata service is disabled" in aws_credential_source({**none, "AWS_EC2_METADATA_DISABLED": "true"})
    (tmp_path / "credentials").write_text("[team]\naws_access_key_id = AKIASECRET\naws_secret_access_key = s3cr3t\n")
    profile = {**none, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"), "AWS_PROFILE": "team"}
    text = aws_credential_source(profile)
    assert text.startswith("the credentials of profile 'team'") and "AKIA" not in text and "s3cr3t" not in text
    assert "default" not in aws_credential_source({**profile, "AWS_PROFILE": "other"})  # no such profile there
    assert "web identity" in aws_credential_source({**none, "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/token"})
    assert "container" in aws_credential_source({**none, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/creds"})
    assert "AWS_ACCESS_KEY_ID" in aws_credential_source({**none, "AWS_ACCESS_KEY_ID": "AKIAX"})


def test_a_profile_s_credentials_sign_the_gets(tmp_path, monkeypatch):
    """An S3 GET is signed with what botocore's chain finds: here a profile in a credentials
    file, with nothing in the environment (obstore alone reads only the environment). The
    same read with the profile's secret wrong is refused, naming the profile."""
    from tests.support.s3server import S3Server

    server = S3Server()
    try:
        (tmp_path / "set").mkdir()
        (tmp_path / "set/x.bin").write_bytes(b"signed bytes")
        url = server.upload(tmp_path / "set", "profiled/set")
        user = server.add_user("member", [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}])
        server.require_auth()
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        for name, secret in (("team", user["AWS_SECRET_ACCESS_KEY"]), ("wrong", "not-the-secret")):
            (tmp_path / name).write_text(f"[default]\naws_access_key_id = {user['AWS_ACCESS_KEY_ID']}\n"
                                         f"aws_secret_access_key = {secret}\n")
            monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / name))
            target = Location(url, server.options) / "x.bin"
            if name == "team":
                assert target.read_bytes() == b"signed bytes"
            else:
                with pytest.raises(OSError, match=r"access denied \(GetObject\): the credentials of profile 'default'"):
                    target.read_bytes()
    finally:
        server.stop()


def test_a_store_answering_503_is_tried_5_times_then_one_transient_line():
    """A store that sheds load (503 SlowDown, as S3 does) on every GET: 5 tries with back-off,
    then one line naming the status, without the store's XML, marked as the network's."""
    from rayinfer.datasets.storage import NetworkError, is_network_error

    tries = []

    class SlowDown(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            tries.append(self.path)
            body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code></Error>'
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowDown)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = Location("s3://shedding/set", {"endpoint_override": f"http://127.0.0.1:{server.server_port}"})
        with pytest.raises(NetworkError) as caught:
            (store / "a.jpg").read_bytes()
    finally:
        server.shutdown()
    assert str(caught.value) == "network error (GetObject, 5 tries): Server returned non-2xx status code: " \
                               "503 Service Unavailable"
    assert is_network_error(caught.value) and tries == ["/shedding/set/a.jpg"] * 5
