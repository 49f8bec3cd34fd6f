"""Tasks are modules of hooks behind one registry: a toy classification task added here (its
module tests/toy_classification.py plus one registry line) runs the whole pipeline, and no
module outside the registry asks which task it runs."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from rayinfer.jobs.tasks import REGISTRY, get_task, task_names

ROOT = Path(__file__).resolve().parent.parent


def write_toy_set(root: Path, n: int = 12, wrong: int = 2, seed: int = 3) -> Path:
    """n 8x8 images whose brightest channel is their class; the last `wrong` labels are wrong."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    labels = {}
    for i in range(n):
        k = i % 3
        image = rng.integers(0, 60, (8, 8, 3), dtype=np.uint8)
        image[..., k] += 150
        np.save(root / "images" / f"{i:03d}.npy", image)
        labels[f"{i:03d}"] = (k + 1) % 3 if i >= n - wrong else k
    (root / "labels.json").write_text(json.dumps(labels))
    return root


def write_channel_classifier(path: Path) -> Path:
    """[1, 3, 8, 8] -> [1, 3]: the mean of each channel (argmax: the brightest channel)."""
    from onnx import TensorProto, helper

    from tests.conftest import save_graph

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["m"]), helper.make_node("Flatten", ["m"], ["y"])],
        "channels", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    return save_graph(graph, path, 13)


@pytest.fixture()
def toy(monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", "tests.toy_classification:TASK")  # the one registry line


def test_a_toy_classification_task_runs_the_whole_pipeline_with_its_report(ray_session, toy, tmp_path, capsys):
    from rayinfer.jobs.cli import main
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.driver import EXIT_OK, run_job

    root = write_toy_set(tmp_path / "toy")
    model = write_channel_classifier(tmp_path / "classifier.onnx")
    out = tmp_path / "out"
    outcome = run_job(JobConfig(task="toy", data_root=str(root), model=str(model), output=str(out),
                                shard_size=4, quiet=True))
    assert outcome.exit_code == EXIT_OK
    assert outcome.metrics == {"top1": 10 / 12, "images": 12}
    assert json.loads((out / "metrics.json").read_text())["top1"] == pytest.approx(10 / 12)
    page = (out / "report.html").read_text()
    assert 'id="fig-confusion"' in page and "<h3>Per class</h3>" in page and (out / "report/confusion.png").is_file()
    # offline, through the CLI: the same number
    assert main(["eval", "toy", "--predictions", str(out), "--data-root", str(root)]) == 0
    # --resume with everything committed evaluates again to the same metrics
    again = run_job(JobConfig(task="toy", data_root=str(root), model=str(model), output=str(out), resume=True,
                              shard_size=4, quiet=True, report=False))
    assert again.metrics == outcome.metrics
    # its option, a flag generated from its dataclass: on the job and, marked "eval", on eval
    assert main(["run", "toy", "--data-root", str(root), "--model", str(model), "--output", str(tmp_path / "k3"),
                 "--top-k", "3", "--quiet", "--no-report"]) == 0
    assert json.loads((tmp_path / "k3/metrics.json").read_text())["top3"] == 1.0
    assert json.loads((tmp_path / "k3/run.json").read_text())["task_options"] == {"top_k": 3}
    capsys.readouterr()
    assert main(["eval", "toy", "--predictions", str(out), "--data-root", str(root), "--top-k", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"top3": 1.0, "images": 12}
    assert main(["run", "toy", "--data-root", str(root), "--model", str(model), "--output", str(tmp_path / "k4"),
                 "--top-k", "4"]) == 2  # checked by its own type: one line, nothing run
    assert "top_k must be in 1..3, got 4" in capsys.readouterr().err and not (tmp_path / "k4").exists()


def test_an_unknown_task_is_a_setup_error_naming_the_known_ones():
    from rayinfer.datasets.base import SetupError

    with pytest.raises(SetupError, match=r"unknown task 'classify': one of \('coco', 'nyu', 'null'\)"):
        get_task("classify")


def _task_name_comparisons(path: Path, names: set[str]) -> list[str]:
    """`x == "coco"`, `x in ("coco", ...)` and `d["coco"]` in a module: branches on a task name."""
    where = path.relative_to(ROOT) if ROOT in path.parents else path.name
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                values = ([operand] if isinstance(operand, ast.Constant)
                          else operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [])
                hits = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]
                found += [f"{where}:{node.lineno}: {h!r}" for h in hits]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in names:
            found.append(f"{where}:{node.lineno}: [{node.slice.value!r}]")
    return found


def test_no_module_outside_the_task_modules_branches_on_a_task_name():
    names = set(task_names())
    outside = [p for folder in ("jobs", "actors", "datasets") for p in (ROOT / folder).rglob("*.py")
               if "tasks" not in p.relative_to(ROOT).parts]
    assert len(outside) > 30
    found = [hit for p in outside for hit in _task_name_comparisons(p, names)]
    assert not found, found


def test_the_task_name_check_finds_a_branch(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('def f(cfg):\n    return 1 if cfg.task == "nyu" else 2\n\n\nX = {}["coco"]\nY = "null" in ("a",)\n')
    assert len(_task_name_comparisons(probe, set(task_names()))) == 3


@pytest.fixture()
def toy_backend(monkeypatch):
    from rayinfer.actors.backends import REGISTRY

    monkeypatch.setitem(REGISTRY, "toy", "tests.toy_backend")  # the one registry line


def test_a_backend_defined_in_tests_is_picked_by_name_with_its_flags_shown_by_doctor_and_runs_a_job(
        ray_session, toy, toy_backend, tmp_path, capsys):
    from rayinfer.actors.backends import candidates
    from rayinfer.datasets.base import SetupError
    from rayinfer.jobs.cli import main
    from rayinfer.jobs.config import JobConfig
    from rayinfer.jobs.placement import plan_actors, plan_placement

    root = write_toy_set(tmp_path / "toy")
    model = tmp_path / "classifier.toy"
    model.write_text(json.dumps({"input": "x", "shape": [1, 3, 8, 8]}))
    # claimed by its suffix, by it alone: ONNX Runtime claims ONNX files, not whatever is left
    assert [b.name for b in candidates(str(model))] == ["toy"]
    # picked by name, with a flag generated from its options dataclass
    out = tmp_path / "out"
    assert main(["run", "toy", "--data-root", str(root), "--model", str(model), "--runtime", "toy",
                 "--toy-scale", "2", "--output", str(out), "--quiet", "--no-report"]) == 0
    assert json.loads((out / "metrics.json").read_text()) == {"top1": pytest.approx(10 / 12), "images": 12}
    run = json.loads((out / "run.json").read_text())
    assert run["runtime"]["name"] == "toy" and run["versions"]["toy"] == "0.1"
    assert run["config"]["runtime_options"] == {"toy": {"scale": 2.0}}
    assert {a["providers"][0] for a in run["actors"]} == {"ToyDevice"}
    # its options are checked by its own type: one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["run", "toy", "--data-root", str(root), "--model", str(model), "--toy-scale", "0",
                 "--output", str(tmp_path / "bad")]) == 2
    assert "runtime_options.toy: scale: must be > 0, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # doctor lists it with the devices it sees
    assert main(["doctor", "--json"]) == 0
    runtimes = {r["name"]: r for r in json.loads(capsys.readouterr().out)["runtimes"]}
    assert runtimes["toy"] == {"name": "toy", "installed": True, "why_not": None, "version": "0.1",
                               "devices": ["toy0", "toy1"]}
    # placement reserves the resource its accelerator needs, with no --resource flag
    accel = JobConfig.from_dict({"task": "toy", "data_root": str(root), "model": str(model), "output": "o",
                                 "runtime": "toy", "toy_device": "accel"})
    assert accel.runtime_options == {"toy": {"device": "accel"}}
    with pytest.raises(SetupError, match=r"no 'toy_accel' resource \(the toy runtime's device needs it"):
        plan_actors(accel)
    assert plan_placement(accel, growable=True).shape.resource == "toy_accel"
    assert plan_placement(dataclasses.replace(accel, resource="other"), growable=True).shape.resource == "other"
