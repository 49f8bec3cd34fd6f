"""Configuration: validation, YAML + flags, --help, the submit entrypoint; the datasets name clash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayinfer.jobs.cli import build_parser, config_from_args, main
from rayinfer.jobs.config import ConfigError, JobConfig
from rayinfer.jobs.submit import entrypoint
from rayinfer.jobs.tasks import get_task

PROJECT_ROOT = Path(__file__).resolve().parent.parent

BASE = ["run", "coco", "--data-root", "d", "--model", "m.onnx", "--output", "o"]


def parse(argv):
    return config_from_args(build_parser().parse_args(argv))


def test_flags_build_a_typed_config():
    cfg = parse(BASE + ["--actors", "3", "--conf-thres", "0.25", "--providers", "cuda,cpu"])
    assert cfg.actors == 3 and get_task("coco").options(cfg).conf_thres == 0.25
    assert cfg.runtime_option("providers") == ("cuda", "cpu")
    assert JobConfig.from_dict(cfg.to_dict()) == cfg  # run.json round trip
    depth = parse(["run", "nyu", "--data-root", "d", "--model", "m.onnx", "--output", "o", "--no-eigen-crop"])
    assert get_task("nyu").options(depth).eigen_crop is False
    with pytest.raises(ConfigError, match="task 'coco' has no option eigen_crop \\(its options: conf_thres"):
        parse(BASE + ["--no-eigen-crop"])  # another task's option
    with pytest.raises(ConfigError, match="task 'null' has no option conf_thres \\(it takes none\\)"):
        parse(["run", "null", "--data-root", "d", "--model", "m.onnx", "--output", "o", "--conf-thres", "0.3"])


def test_requests_in_flight_are_requests_and_an_older_run_json_still_loads():
    assert parse(BASE + ["--requests", "3"]).requests == 3
    with pytest.raises(SystemExit):
        parse(BASE + ["--jobs", "3"])  # "jobs" is OpenVINO's AsyncInferQueue parameter only
    older = JobConfig.from_dict({"task": "coco", "data_root": "d", "model": "m.onnx", "output": "o", "jobs": 2})
    assert older.requests == 2


def test_shards_in_flight_default_to_one_more_for_a_remote_data_root():
    """A remote root's samples are fetched when their shard arrives: one more shard waits."""
    assert parse(BASE).in_flight == 2
    remote = ["run", "coco", "--data-root", "s3://bucket/coco", "--model", "m.onnx", "--output", "o"]
    assert parse(remote).in_flight == 3
    assert parse(remote + ["--shards-in-flight", "1"]).in_flight == 1
    with pytest.raises(ConfigError, match="shards_in_flight: must be >= 0"):
        parse(BASE + ["--shards-in-flight", "-1"])


def test_a_mistyped_task_is_one_line_naming_the_closest(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "cocoo", "--data-root", "d", "--model", "m.onnx"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "unknown task 'cocoo' (did you mean 'coco'?); one of coco, nyu, null" in err
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "null (empty samples, for benchmarking the pipeline)" in text


def test_yaml_then_flags_win(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("shard_size: 8\nactors: 2\noptions:\n  iou_thres: 0.6\n  max_det: 100\n")
    cfg = parse(BASE + ["--config", str(path), "--actors", "4", "--max-det", "50"])
    assert cfg.shard_size == 8 and cfg.actors == 4
    options = get_task("coco").options(cfg)
    assert options.iou_thres == 0.6 and options.max_det == 50 and options.conf_thres == 0.001


@pytest.mark.parametrize(
    ("task", "yaml_text", "message"),
    [
        ("coco", "shard_sise: 8\n", "unknown configuration keys: \\['shard_sise'\\]"),
        ("coco", "shard_size: -1\n", "shard_size: must be >= 0"),
        ("coco", "batch: many\n", "batch: must be auto or a number >= 1, got 'many'"),
        ("coco", "batch: 0\n", "batch: must be auto or a number >= 1"),
        ("coco", "actors: two\n", "actors: expected int, got str 'two'"),
        ("coco", "options:\n  conf_thres: 2\n", "conf_thres must be in"),
        ("nyu", "options:\n  align: scale\n", "align must be one of"),
        ("coco", "options:\n  max_det: many\n", "options.max_det: expected int, got str 'many'"),
        ("nyu", "options:\n  mean: [0.5, 0.5]\n", r"options.mean: expected 3 values, got 2"),
        ("nyu", "options:\n  colour: red\n", r"task 'nyu' has no option colour \(its options: profile"),
        ("coco", "options: fast\n", "options: expected a mapping"),
        ("coco", "resume: yes please\n", "resume: expected bool, got str 'yes please'"),
        ("coco", "provider_options: cuda\n", "provider_options: expected a mapping"),
        ("coco", "preprocess_in: gpu\n", "preprocess_in: must be one of \\('auto', 'request', 'loader'\\)"),
        ("coco", "- a list\n", "expected a mapping"),
    ],
)
def test_bad_config_values_give_clear_errors(tmp_path, task, yaml_text, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        parse(["run", task] + BASE[2:] + ["--config", str(path)])


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("hint: fastest\n")
    assert main(BASE + ["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayinfer: error: hint: must be throughput or latency") and err.count("\n") == 1


def test_help_lists_every_option_with_its_default():
    text = " ".join(build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    for flag in ("--actors", "--conf-thres", "--iou-thres", "--max-det", "--profile", "--align", "--resume",
                 "--shard-size", "--providers", "--config", "--quiet"):
        assert flag in text
    assert "(default: 0.7)" in text and "(default: 300)" in text and "(default: cpu)" in text


def test_the_flags_are_generated_from_the_config_fields_each_with_its_help():
    """So --help lists everything, and `submit` can rebuild any configuration as flags."""
    import dataclasses

    from rayinfer.actors.backends import REGISTRY, backend
    from rayinfer.jobs.options import flags, runtime_flags, task_flags
    from rayinfer.jobs.tasks import task_names

    expected = {f.name for f in dataclasses.fields(JobConfig)} - {"task", "options", "runtime_options"}
    for name in task_names():  # each task's options, set into `options`
        kind = get_task(name).options_type
        expected |= {f"options.{g.name}" for g in dataclasses.fields(kind)} if kind else set()
    for name in REGISTRY:  # each runtime backend's, by their flat key (filed under `runtime_options`)
        kind = backend(name).options_type
        expected |= {(g.metadata.get("flag") or f"--{name}-{g.name}")[2:].replace("-", "_")
                     for g in dataclasses.fields(kind)} if kind else set()
    generated = flags() + runtime_flags() + task_flags()
    assert {o.key for o in generated} == expected
    assert {o.flag for o in runtime_flags()} == {"--providers", "--provider-options", "--openvino-device"}
    assert all(o.help for o in generated), [o.key for o in generated if not o.help]
    spelled = {o.key: o.flag for o in generated}
    assert spelled["options.conf_thres"] == "--conf-thres" and spelled["options.eigen_crop"] == "--no-eigen-crop"
    assert {o.help.split(")")[0] for o in task_flags()} == {"(coco", "(nyu"}  # whose option each is
    assert spelled["request_timeout_s"] == "--request-timeout" and spelled["report"] == "--no-report"


def test_a_field_added_to_the_config_is_a_typed_flag_without_another_table(tmp_path):
    import argparse
    from dataclasses import dataclass, field

    from rayinfer.jobs.options import add_flags, flags, given

    @dataclass(frozen=True)
    class Section:
        ratio: float = field(default=0.5, metadata={"help": "a ratio"})
        sizes: tuple[int, int] | None = field(default=None, metadata={"help": "two sizes"})
        strict: bool | None = field(default=None, metadata={"help": "true or false"})
        on: bool = field(default=True, metadata={"help": "turn it off"})

    parser = argparse.ArgumentParser()
    add_flags(parser, flags(Section))
    args = parser.parse_args(["--ratio", "0.25", "--sizes", "3,4", "--strict", "false", "--no-on"])
    assert given(args, flags(Section)) == {"ratio": 0.25, "sizes": (3, 4), "strict": False, "on": False}
    with pytest.raises(SystemExit):
        parser.parse_args(["--sizes", "3"])


def test_submit_entrypoint_round_trips_options_without_a_simple_form():
    cfg = parse(["run", "nyu"] + BASE[2:] + ["--provider-options", '{"cuda": {"device_id": "1"}}', "--mean",
                                             "0.5,0.4,0.3", "--no-eigen-crop", "--resource", "sim_device",
                                             "--no-progress"])
    import shlex

    words = shlex.split(entrypoint(cfg))
    assert "--mean 0.5,0.4,0.3 --no-eigen-crop" in " ".join(words)
    assert parse(words[3:]) == cfg


def test_submit_entrypoint_carries_non_default_options():
    cfg = parse(BASE + ["--actors", "2", "--iou-thres", "0.6", "--resume", "--multi-label", "false"])
    cmd = entrypoint(cfg)
    assert cmd.startswith("python -m rayinfer.jobs run coco --data-root d --model m.onnx --output o")
    assert "--actors 2" in cmd and "--iou-thres 0.6" in cmd and "--resume" in cmd and "--multi-label False" in cmd
    assert "--conf-thres" not in cmd
    assert "--quiet" not in cmd  # the job's log shows its phases and progress lines
    reparsed = parse(cmd.split()[3:])  # drop "python -m rayinfer.jobs"
    assert reparsed == cfg


def test_hugging_face_datasets_and_rayinfer_work_in_one_process_in_either_order(tmp_path):
    """Our readers are `rayinfer.datasets`: a `datasets` package (here a stand-in for Hugging
    Face's) imports beside them, before or after, and importing rayinfer leaves sys.path alone."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("HF = True\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    check = ("import sys; path = list(sys.path); {first}; {second}; "
             "assert sys.path == path, 'sys.path changed'; "
             "from rayinfer.datasets.coco import CocoDataset; print(datasets.HF, CocoDataset.__module__)")
    for first, second in [("import datasets", "import rayinfer.jobs.cli"), ("import rayinfer.jobs.cli", "import datasets")]:
        out = subprocess.run([sys.executable, "-c", check.format(first=first, second=second)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=False)
        assert out.stdout.split() == ["True", "rayinfer.datasets.coco"], out.stderr


def test_data_root_and_model_go_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="go together"):
        parse(["run", "coco", "--data-root", "d"])
    with pytest.raises(ConfigError, match="go together"):
        parse(["run", "nyu", "--model", "m.onnx"])


def test_default_output_is_numbered_like_ultralytics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse(["run", "coco", "--data-root", "d", "--model", "m.onnx"]).output == "runs/coco"
    (tmp_path / "runs/coco").mkdir(parents=True)
    (tmp_path / "runs/coco2").mkdir()
    assert parse(["run", "coco", "--data-root", "d", "--model", "m.onnx"]).output == "runs/coco3"


def test_doctor_reports_versions_providers_and_datasets(tmp_path, capsys):
    assert main(["doctor", "--json", "--data-root", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "CPUExecutionProvider" in info["providers"] and info["cpus_usable"] >= 1
    assert info["ray"] and info["onnxruntime"]
    names = {d["name"]: d["found"] for d in info["datasets"]}
    assert names[f"coco at {tmp_path}"] is False
    assert "built-in coco model" in names
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "providers    CPU yes" in text and "datasets and models:" in text
    runtimes = {r["name"]: r for r in info["runtimes"]}  # each registered backend, with its devices
    assert runtimes["onnxruntime"]["installed"] and "cpu" in runtimes["onnxruntime"]["devices"]
    assert "  onnxruntime " in text and "  simulated " in text
