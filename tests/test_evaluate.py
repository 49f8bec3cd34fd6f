"""Offline evaluation, slices, compare, and the HTML report (opened in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayinfer.datasets.base import SampleError, SetupError
from rayinfer.datasets.depth import summarize_bins
from rayinfer.datasets.storage import Location
from rayinfer.datasets.synthetic import write_coco, write_nyu
from rayinfer.jobs.cli import main
from rayinfer.jobs.config import JobConfig
from rayinfer.jobs.tasks import get_task
from rayinfer.jobs.driver import run_job
from rayinfer.jobs.evaluate import SavedRun
from tests.conftest import make_const_depth, make_const_detector

pytestmark = pytest.mark.timeout(300)


def _first_image_boxes(root):
    """[cx, cy, w, h, class, score] where the first image's objects are, in model pixels
    (320x240 -> 64x64: gain 0.2, 8 px pad)."""
    ann = json.loads((root / "annotations/instances_val2017.json").read_text())
    first = ann["images"][0]
    boxes = []
    for a in (a for a in ann["annotations"] if a["image_id"] == first["id"]):
        x, y, w, h = a["bbox"]
        cls = [1, 3, 7].index(a["category_id"])
        boxes.append([(x + w / 2) * 0.2, (y + h / 2) * 0.2 + 8, w * 0.2, h * 0.2, cls, 0.8])
    return boxes


@pytest.fixture(scope="module")
def coco_run(ray_session, tmp_path_factory):
    root = write_coco(tmp_path_factory.mktemp("coco"), n_images=12, seed=4)
    model = make_const_detector(root / "det.onnx", 64, np.array(_first_image_boxes(root)))
    out = tmp_path_factory.mktemp("out") / "run"
    run_job(JobConfig(task="coco", data_root=str(root), model=str(model), output=str(out), shard_size=5,
                      progress=False))
    return root, out


@pytest.fixture(scope="module")
def nyu_run(ray_session, tmp_path_factory):
    root = write_nyu(tmp_path_factory.mktemp("nyu"), n_frames=3, size=(480, 640), seed=6)
    model = make_const_depth(root / "depth.onnx", 224, 3.0)
    out = tmp_path_factory.mktemp("out") / "nyu"
    run_job(JobConfig(task="nyu", data_root=str(root), model=str(model), output=str(out), progress=False))
    return root, out


def test_offline_coco_eval_is_the_job_to_the_last_digit(coco_run, capsys):
    root, out = coco_run
    job = json.loads((out / "metrics.json").read_text())
    assert 0 < job["AP"] < 1  # one image is predicted right, the others are not
    assert main(["eval", "coco", "--predictions", str(out), "--data-root", str(root), "--json"]) == 0
    offline = json.loads(capsys.readouterr().out)  # --json: the JSON alone
    assert main(["eval", "coco", "--predictions", str(out), "--data-root", str(root)]) == 0
    printed = capsys.readouterr().out  # the summary people read: a table, rounded, counts as counts
    assert "{" not in printed and re.search(r"^AP\s+\d\.\d{4}\s*$", printed, re.M)
    assert re.search(rf"^images\s+{job['images']}\s*$", printed, re.M)
    assert offline == job
    # the per-class table, as `yolo val` prints it: class, images, instances, P, R, AP50, AP50-95
    assert re.search(r"^class\s+images\s+instances\s+P\s+R\s+AP50\s+AP50-95\s*$", printed, re.M)
    assert re.search(r"^all\s+\d+\s+\d+(\s+\d\.\d{4}){4}\s*$", printed, re.M)
    assert re.search(r"^square\s+\d+\s+\d+(\s+\d\.\d{4}){4}\s*$", printed, re.M)
    assert re.search(r"^Speed: load [\d.]+/[\d.]+, .* ms per image \(p50/p90\)$", printed, re.M)


def test_the_per_class_table_lists_the_classes_present_and_all_with_verbose(coco_run, capsys):
    """issue 22 item 9: like `yolo val`, only classes with objects in the evaluated images; all with -v."""
    root, out = coco_run
    ann = json.loads((root / "annotations/instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    by_image = {}
    for a in ann["annotations"]:
        by_image.setdefault(a["image_id"], set()).add(a["category_id"])
    image, present = next((i, cats) for i, cats in by_image.items() if 0 < len(cats) < len(names))
    args = ["eval", "coco", "--predictions", str(out), "--data-root", str(root), "--image-ids", str(image)]
    assert main(args) == 0
    rows = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s+\d+\s", capsys.readouterr().out, re.M)}
    assert rows == {"all"} | {names[c] for c in present}
    assert main(args + ["-v"]) == 0
    printed = capsys.readouterr().out
    rows = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s+\d+\s", printed, re.M)}
    assert rows == {"all"} | set(names.values())
    absent = next(names[c] for c in names if c not in present)
    assert re.search(rf"^{absent}\s+0\s+0\s+-\s+-\s", printed, re.M), printed  # no objects: no P, R


def test_results_json_from_another_tool_and_subsets(coco_run):
    root, out = coco_run
    job = json.loads((out / "metrics.json").read_text())
    other = get_task("coco").evaluate_saved(out / "coco_results.json", root)  # the standard results format
    assert other.metrics["AP"] == pytest.approx(job["AP"], abs=1e-3)
    first = sorted(other.sample_ids)[0]
    only = get_task("coco").evaluate_saved(out, root, sample_ids=[first])
    assert only.metrics["images"] == 1 and only.metrics["AP"] > job["AP"]
    assert get_task("coco").evaluate_saved(out, root, limit=4).metrics["images"] == 4
    table = {r["class"]: r for r in only.per_class}
    assert set(table) == {"square", "disc", "triangle"}
    assert all({"AP", "AP50", "APs", "APm", "APl", "objects"} <= set(r) for r in only.per_class)


def test_offline_nyu_eval_reads_the_rows_and_goes_back_to_the_files_only_for_other_options(nyu_run, tmp_path):
    from dataclasses import replace

    from rayinfer.datasets.depth import DepthOptions
    from rayinfer.datasets.nyu import NyuDataset, recompute

    root, out = nyu_run
    job = json.loads((out / "metrics.json").read_text())
    task = get_task("nyu")
    # the job's options: from the actor's per-image rows alone (no frame is read: none exists here)
    ev = task.evaluate_saved(out, tmp_path / "no-frames-here")
    assert ev.metrics == job and ev.metrics["abs_rel"] > 0
    bins = {tuple(b["range_m"]): b for b in ev.depth_bins}
    assert sum(b["pixels"] for b in bins.values()) > 0
    assert all(np.isnan(b["abs_rel"]) == (b["images"] == 0) for b in bins.values())
    # a box at 1-2 m is predicted at 3 m: its bin has the large relative error
    assert bins[(1.0, 2.0)]["abs_rel"] > bins[(2.0, 3.0)]["abs_rel"]
    # the actor's figures are the ones a second pass over the frames computes
    saved = task.saved_options(SavedRun.open(out))
    again = recompute(NyuDataset(root), SavedRun.open(out).table(), saved)
    assert NyuDataset(root).evaluate(again) == NyuDataset(root).evaluate(SavedRun.open(out).table())
    assert _same_bins(summarize_bins(again), ev.depth_bins)
    # other options go back to the frames (and need them)
    closer = task.evaluate_saved(out, root, options=replace(saved, max_depth=2.5))
    assert closer.metrics["abs_rel"] != job["abs_rel"]
    assert all(b["images"] == 0 for b in closer.depth_bins if b["range_m"][0] >= 2.5)
    with pytest.raises(SampleError, match="file not found"):
        task.evaluate_saved(out, tmp_path / "no-frames-here", options=replace(saved, max_depth=2.5))
    aligned = task.evaluate_saved(out, root, options=replace(saved, align="median"))
    assert set(aligned.metrics["aligned"]) == set(job) - {"images", "evaluated_images"}
    assert isinstance(saved, DepthOptions)


def _same_bins(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k] == y[k] or (x[k] != x[k] and y[k] != y[k]) for k in x) for x, y in zip(a, b))


def test_a_run_without_run_json_is_evaluated_from_its_rows_under_its_manifests_options(nyu_run, tmp_path):
    """The job evaluates itself before it writes run.json (and a driver may die before it):
    the rows were made under the manifest's options, so no frame is read again (the job
    did read every frame a second time, 3.4 s of a 500-frame NYU job's 9 s)."""
    root, out = nyu_run
    task = get_task("nyu")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    (unfinished / "run.json").unlink()
    job = json.loads((out / "metrics.json").read_text())
    options = task.saved_options(SavedRun.open(out))
    assert task.saved_options(SavedRun.open(unfinished)) == options
    for given in (options, None):  # as the job passes them, and as `rayinfer eval` would
        ev = task.evaluate_saved(unfinished, tmp_path / "no-frames-here", options=given)
        assert ev.metrics == job
    (unfinished / "manifest.json").unlink()  # nothing says what the rows were made under
    with pytest.raises(SetupError, match="run.json is missing"):
        task.evaluate_saved(unfinished, root)


def test_a_run_saved_before_rows_held_depth_ranges_is_evaluated_from_the_files(nyu_run, tmp_path):
    root, out = nyu_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for shard in (old / "predictions").glob("shard-*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("bin_")]), shard)
    ev = get_task("nyu").evaluate_saved(old, root)
    assert ev.metrics == json.loads((out / "metrics.json").read_text())
    assert _same_bins(ev.depth_bins, get_task("nyu").evaluate_saved(out, root).depth_bins)


def test_compare_prints_deltas(coco_run, tmp_path, capsys):
    root, out = coco_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["AP"] += 0.0125
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert main(["compare", str(out), str(other)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^AP\s+\S+\s+\S+\s+\+0\.0125$", text, re.M)
    assert re.search(r"^AP50\s+\S+\s+\S+\s+\+0\.0000$", text, re.M)
    assert re.search(rf"^images\s+{metrics['images']}\s+{metrics['images']}\s+\+0\s*$", text, re.M)  # not 12.0000


def test_compare_refuses_runs_of_different_tasks_and_folders_without_metrics(coco_run, nyu_run, tmp_path, capsys):
    _, coco_out = coco_run
    _, nyu_out = nyu_run
    assert main(["compare", str(coco_out), str(nyu_out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot compare a coco run" in err and "with a nyu run" in err
    assert main(["compare", str(coco_out), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.json not found" in err


#: where the report tests leave their screenshots, for a person to look at
SCREENSHOTS = Path(os.environ.get("RAYINFER_SCREENSHOTS", Path(__file__).resolve().parent.parent / "build/report-screenshots"))
REPORT_FILES = {"coco": {"confusion_matrix", "confidence_curves", "pr_curves", "per_class_ap", "worst_images",
                         "best_images", "timeline", "stage_latency"},
                "nyu": {"depth_samples", "error_vs_depth", "timeline", "stage_latency"}}


def open_in_chromium(page: Path, profile: Path, screenshot: Path) -> str:
    """The page's DOM after load, checked for console messages (the page writes none: any
    is an error, a figure that failed to load included); a full-width screenshot saved."""
    from benchmarks.report import chromium, headless

    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium)")
    proc = headless(browser, page, profile, "--dump-dom", "--enable-logging=stderr", "--v=0")
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    headless(browser, page, profile, f"--screenshot={screenshot}", "--window-size=1280,6000", "--hide-scrollbars")
    assert screenshot.stat().st_size > 10_000
    return proc.stdout


@pytest.mark.parametrize("which", ["coco", "nyu"])
def test_report_opens_in_headless_chromium_with_its_figures(coco_run, nyu_run, tmp_path, which):
    _, out = coco_run if which == "coco" else nyu_run
    expected = REPORT_FILES[which]
    assert {p.stem for p in (out / "report").iterdir()} == expected
    dom = open_in_chromium(out / "report.html", tmp_path / "profile", SCREENSHOTS / f"{which}.png")
    assert f'data-figures-shown="{len(expected)}"' in dom and f'data-figures="{len(expected)}"' in dom, dom[-2000:]
    for name in expected:
        assert f'id="fig-{name}"' in dom
    gallery = {"coco": "fig-worst_images", "nyu": "fig-depth_samples"}[which]
    assert f'id="{gallery}"' in dom and "<figcaption>" in dom
    assert "Where the time went" in dom and "busy fraction" in dom and "data-load-ms" in dom


def test_the_gallery_shows_the_worst_images_first_with_their_errors_counted(coco_run):
    """The const detector predicts the first image's objects on every image: that image is
    right, every other image has its objects missed and the first image's boxes as false
    positives; the worst are those with the most errors."""
    from rayinfer.datasets.coco import CocoDataset
    from rayinfer.jobs.tasks.coco import TASK

    root, out = coco_run
    ev = TASK.evaluate(SavedRun.open(out), Location.of(root), None)
    assert ev.errors is None  # computed on first need: only the report draws them
    ev.detection_errors()
    ann = json.loads((root / "annotations/instances_val2017.json").read_text())
    first = ann["images"][0]["id"]
    objects = {im["id"]: 0 for im in ann["images"]}
    for a in ann["annotations"]:
        objects[a["image_id"]] += not a.get("iscrowd", 0)
    predicted = objects[first]  # boxes the detector gives every image
    counts = {i: fp + missed for i, _, fp, missed in ev.errors.images}
    worst = ev.errors.worst()
    assert len(worst) == 6 and [w.errors for w in worst] == sorted(counts.values(), reverse=True)[:6]
    assert [w.errors for w in worst] == [counts[w.image_id] for w in worst]
    assert counts[first] == 0 and all(0 < counts[i] <= objects[i] + predicted for i in objects if i != first)
    assert [b.image_id for b in ev.errors.best()] == [first]
    totals = ev.errors.totals()  # every prediction right or wrong, every object found or missed
    assert totals["true_positives"] + totals["false_positives"] == predicted * len(objects)
    assert totals["true_positives"] + totals["missed"] == sum(objects.values())
    assert len(ev.errors.images) == len(objects) == CocoDataset(root).coco.getImgIds().__len__()


def test_eval_report_rewrites_the_runs_report(coco_run, tmp_path, capsys):
    root, out = coco_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    assert main(["eval", "coco", "--predictions", str(copy), "--data-root", str(root), "--report"]) == 0
    assert f"report: {copy / 'report.html'}" in capsys.readouterr().out
    page = (copy / "report.html").read_text()
    assert 'id="fig-worst_images"' in page and 'id="fig-timeline"' in page


@pytest.mark.parametrize("which", ["coco", "nyu"])
def test_the_compare_report_shows_both_runs_and_what_changed_in_chromium(coco_run, nyu_run, tmp_path, which, capsys):
    root, out = coco_run if which == "coco" else nyu_run
    other = tmp_path / "other"
    if which == "coco":  # the first image's objects but one: that image misses it, the others lose a false positive
        model = make_const_detector(tmp_path / "det.onnx", 64, np.array(_first_image_boxes(root)[:-1]))
    else:
        model = make_const_depth(tmp_path / "depth.onnx", 224, 2.0)
    run_job(JobConfig(task=which, data_root=str(root), model=str(model), output=str(other), shard_size=5,
                      progress=False, report=False))
    page = tmp_path / "compare.html"
    assert main(["compare", str(out), str(other), "--report", str(page)]) == 0
    assert f"compare report: {page}" in capsys.readouterr().out
    figures = {"coco": {"ap_deltas", "changed_images"}, "nyu": {"frame_deltas"}}[which]
    assert {p.stem for p in (tmp_path / "compare-figures").iterdir()} == figures
    dom = open_in_chromium(page, tmp_path / "profile", SCREENSHOTS / f"compare-{which}.png")
    assert f'data-figures-shown="{len(figures)}"' in dom and f'data-figures="{len(figures)}"' in dom
    assert str(out) in dom and str(other) in dom and "change" in dom
    if which == "coco":
        assert "AP50-95 per class, largest drop first" in dom and 'id="fig-changed_images"' in dom


def test_results_array_and_streamed_json_match_the_per_row_reference(tmp_path):
    """The columnar build (no Python object per detection) gives the same array and JSON as
    reading every row into Python."""
    import io

    import pyarrow as pa

    from rayinfer.datasets.coco import CocoDataset
    from rayinfer.datasets.synthetic import write_coco

    rng = np.random.default_rng(3)
    rows = []
    for i in range(40):
        n = int(rng.integers(0, 6))
        rows.append({"image_id": 1000 + i, "bbox": rng.uniform(0, 300, (n, 4)).astype(np.float32).tolist(),
                     "score": rng.uniform(0, 1, n).astype(np.float32).tolist(),
                     "category_id": rng.integers(1, 90, n).astype(np.int32).tolist()})
    schema = pa.schema([("image_id", pa.int64()), ("bbox", pa.list_(pa.list_(pa.float32(), 4))),
                        ("score", pa.list_(pa.float32())), ("category_id", pa.list_(pa.int32()))])
    table = pa.concat_tables([pa.Table.from_pylist(rows[:20], schema), pa.Table.from_pylist(rows[20:], schema)])
    reference = [[r["image_id"], *b, s, c] for r in rows for b, s, c in zip(r["bbox"], r["score"], r["category_id"])]
    dataset = CocoDataset(write_coco(tmp_path / "coco", n_images=2))
    arr = dataset.results_array(table)
    assert arr.dtype == np.float64 and np.array_equal(arr, np.array(reference, np.float64).reshape(-1, 7))
    f = io.BytesIO()
    dataset.write_results_json(table, f, chunk=7)
    assert json.loads(f.getvalue()) == dataset.results_json(table)
    assert len(dataset.results_json(table)) == len(reference) > 0


def test_a_null_job_writes_a_report_without_reading_any_data(ray_session, tmp_path):
    """The report's figures come from the task: `null` has none (it once went through the NYU reader)."""
    out = tmp_path / "null"
    outcome = run_job(JobConfig(task="null", data_root=str(tmp_path), model="sim://?latency_ms=1&capacity=2&input=1x1&output=1x1",
                                output=str(out), limit=8, progress=False))
    assert outcome.metrics["predictions"] == 8
    page = (out / "report.html").read_text()
    assert "rayinfer null report" in page and "Where the time went" in page and "This task draws no figures" in page
