"""The job's evaluation beside its inference (jobs/streaming.py): each shard is evaluated as
it commits, the metrics are the offline ones on either COCO engine, `--resume` feeds the
shards committed before, and a shard that fails to evaluate never costs a number."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from rayinfer.datasets.synthetic import write_coco
from rayinfer.jobs.cli import main
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.driver import run_job
from rayinfer.jobs.tasks.coco import CocoStream
from tests.conftest import make_const_detector
from tests.test_evaluate import _first_image_boxes

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory):
    root = write_coco(tmp_path_factory.mktemp("coco"), n_images=20, seed=8)
    return root, make_const_detector(root / "det.onnx", 64, np.array(_first_image_boxes(root)))


def _job(root, model, out, **kw):
    return run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(out), shard_size=3,
                             progress=False, **kw))


def _eval(capsys, out, root, *flags):
    assert main(["eval", "coco", "--predictions", str(out), "--data-root", str(root), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_shard_is_evaluated_as_it_commits_and_the_metrics_are_the_offline_ones(ray_session, coco_set, tmp_path,
                                                                                      capsys):
    root, model = coco_set
    out = tmp_path / "run"
    outcome = _job(root, model, out, report=False)
    t = outcome.run["timings"]
    assert t["evaluation_overlapped_s"] > 0 and t["after_last_shard_s"] >= t["evaluation_s"] >= 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["AP"] > 0.02 and metrics["images"] == 20
    assert _eval(capsys, out, root) == metrics  # `rayinfer eval`, default engine
    assert _eval(capsys, out, root, "--coco-engine", "pycocotools") == metrics  # the reference's code
    # coco_results.json, written as the shards came: every detection, loadable by pycocotools
    from pycocotools.coco import COCO

    from rayinfer.datasets.cocoeval import quiet

    with quiet():
        loaded = COCO(str(root / "annotations/instances_val2017.json")).loadRes(str(out / "coco_results.json"))
    assert len(loaded.anns) == metrics["detections"] > 0
    assert not list(out.glob(".*partial"))  # put in place under its name, nothing left behind
    assert "coco_results.json" in json.loads((out / "manifest.json").read_text())["files"]
    # the same job on the reference engine gives the same numbers
    reference = _job(root, model, tmp_path / "reference", report=False, coco_engine="pycocotools")
    assert reference.metrics == metrics


def test_resume_feeds_the_shards_committed_before(ray_session, coco_set, tmp_path):
    root, model = coco_set
    out = tmp_path / "run"
    whole = _job(root, model, out, report=False).metrics
    results = (out / "coco_results.json").read_bytes()
    for shard in ("shard-00001.parquet", "shard-00004.parquet"):  # as if the job had died before these
        (out / "predictions" / shard).unlink()
        (out / "errors" / shard).unlink()
    resumed = _job(root, model, out, report=False, resume=True)
    assert resumed.run["counts"]["shards_resumed"] == 5 and resumed.run["counts"]["processed_this_run"] == 6
    assert resumed.metrics == whole
    assert sorted(json.loads((out / "coco_results.json").read_text()), key=json.dumps) == sorted(
        json.loads(results), key=json.dumps)


def test_a_shard_that_fails_to_evaluate_is_named_and_the_saved_run_is_evaluated_instead(ray_session, coco_set, tmp_path,
                                                                                       monkeypatch, caplog):
    root, model = coco_set
    whole = _job(root, model, tmp_path / "whole", report=False).metrics
    add, failed = CocoStream.add, []

    def failing(self, shard, rows):
        if shard == 2 and not failed:  # once: in the job's stream, not in the saved run's evaluation
            failed.append(shard)
            raise MemoryError("no room")
        add(self, shard, rows)

    monkeypatch.setattr(CocoStream, "add", failing)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="rayinfer.jobs.streaming"):
        outcome = _job(root, model, out, report=False)
    assert "evaluating shard 2: MemoryError: no room; the metrics will come from the saved run" in caplog.text
    assert outcome.metrics == whole and outcome.exit_code == 0
    assert json.loads((out / "coco_results.json").read_text())  # written from the saved run
    assert not list(out.glob(".*partial"))


def test_an_engine_eval_does_not_have_is_refused(coco_set, tmp_path, capsys):
    root, _ = coco_set
    with pytest.raises(SystemExit) as exc:
        main(["eval", "coco", "--predictions", str(tmp_path), "--data-root", str(root), "--coco-engine", "fast"])
    assert exc.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def test_a_run_copied_elsewhere_evaluates_the_same(ray_session, coco_set, tmp_path, capsys):
    """Nothing of the streaming is needed offline: the folder alone gives the numbers."""
    root, model = coco_set
    out = tmp_path / "run"
    metrics = _job(root, model, out, report=False).metrics
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert _eval(capsys, copy, root) == metrics
