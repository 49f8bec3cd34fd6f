"""`rayinfer` command line (also `python -m rayinfer.jobs`).

    rayinfer run coco|nyu --data-root D --model M --output O [--actors N] [--address ADDR]
    rayinfer submit coco|nyu --dashboard http://127.0.0.1:8265 --data-root D ... [--no-wait]
    rayinfer status|logs|stop JOB_ID [--dashboard URL]   (logs --follow: until the job ends)

Every `run` option can also come from a YAML file (`--config job.yaml`); flags win.
Exit codes: 0 success, 1 unexpected error, 2 setup/config error, 3 partial success
(some samples failed; see OUTPUT/errors.parquet).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rayinfer.datasets.base import SetupError
from rayinfer.datasets.storage import Location
from rayinfer.jobs.config import ConfigError, JobConfig
from rayinfer.jobs.exit_codes import EXIT_ERROR, EXIT_SETUP
from rayinfer.jobs.options import Flag, add_flags, csv_list, flags, given, parser_for, runtime_flags, task_flags
from rayinfer.jobs.output import local_run
from rayinfer.jobs.tasks import get_task, task_names

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"  # Ray's own default

log = logging.getLogger("rayinfer")


class _Parser(argparse.ArgumentParser):
    """argparse, its errors in one line (not the usage first), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_SETUP, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _task(name: str) -> str:
    """A task name, or an error naming the closest one."""
    names = task_names()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=1)
    raise argparse.ArgumentTypeError(f"unknown task {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                     f"one of {', '.join(names)}")


def add_task(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", type=_task, metavar="TASK",
                        help="coco (detection, COCO mAP), nyu (depth, NYU metrics) or null (empty samples, "
                             "for benchmarking the pipeline)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add_task(parser)
    parser.add_argument("--config", type=Path, help="YAML file with any of the options below (flags win)")
    add_flags(parser, flags())
    add_flags(parser, runtime_flags())
    add_flags(parser, task_flags())


def config_from_args(args: argparse.Namespace) -> JobConfig:
    """Defaults <- YAML file <- flags, validated as one JobConfig."""
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{args.config}: cannot read YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping of options")
        data.update(loaded)
    for key, value in given(args, flags() + runtime_flags() + task_flags()).items():
        if isinstance(value, dict):
            section = data.get(key)
            data[key] = {**(section if isinstance(section, dict) else {}), **value}
        else:
            data[key] = value
    data["task"] = args.task
    _defaults_for_demo(data)
    cfg = JobConfig.from_dict(data)
    get_task(cfg.task).options(cfg)  # the task's options checked now, not when the job starts
    return cfg


def eval_flags() -> list[Flag]:
    """The task options that change the metrics, not the predictions, and the config's
    evaluation settings (both marked `metadata["eval"]`)."""
    return [dataclasses.replace(f, help=f"{f.help} (default: the job's own)", default=None)
            for f in task_flags(eval_only=True)] + [f for f in flags() if f.eval]


def _defaults_for_demo(data: dict[str, Any]) -> None:
    """No data and no model: the built-in demo. No output: runs/TASK (numbered)."""
    from rayinfer.jobs.demo import demo_data, demo_models, next_output

    task = data["task"]
    has_data, has_model = bool(data.get("data_root")), bool(data.get("model"))
    models = demo_models()
    if task in models and not has_data and not has_model:
        log.info("no --data-root/--model: running the built-in %s demo (synthetic data, demo model)", task)
        data["data_root"] = str(demo_data(task))
        data["model"] = str(models[task])
    elif has_data != has_model and task in models:
        raise ConfigError("--data-root and --model go together; leave both out to run the built-in demo")
    if not data.get("output"):
        for switch in ("resume", "overwrite"):
            if data.get(switch):
                raise ConfigError(f"--{switch} needs --output: the folder of the run to "
                                  f"{'continue' if switch == 'resume' else 'replace'}")
        data["output"] = str(next_output(task))
        taken = Path("runs") / task
        log.info("results go to %s%s", data["output"],
                 f" ({taken} holds an earlier run; --output names the folder)" if Path(data["output"]) != taken else "")


def cmd_run(args: argparse.Namespace) -> int:
    from rayinfer.jobs.driver import run_job

    cfg = config_from_args(args)
    outcome = run_job(cfg)
    if outcome.evaluation is not None and outcome.task is not None:
        _tables(outcome.task, outcome.evaluation, args.verbose)
    _summary(outcome.metrics, outcome.run)
    return outcome.exit_code


def _tables(task: Any, ev: Any, everything: bool) -> None:
    """The task's tables (per class, per depth range), as `yolo val` prints them first."""
    from rayinfer.jobs.format import format_table

    for table in task.tables(ev, everything=everything):
        sys.stdout.write(f"{table.title}\n")
        sys.stdout.write(format_table(table.header, [[_cell(v) for v in row] for row in table.rows]) + "\n\n")


def speed_line(run: dict[str, Any]) -> str | None:
    """"Speed: load 0.8/3.9, ... ms per image (p50/p90)" from run.json, or None."""
    stages = run.get("timings", {}).get("stage_percentiles_ms") or {}
    parts = [f"{k} {v['p50']:.1f}/{v['p90']:.1f}" for k, v in stages.items() if v.get("p50") is not None]
    return f"Speed: {', '.join(parts)} ms per image (p50/p90)" if parts else None


def _summary(metrics: dict[str, Any], run: dict[str, Any]) -> None:
    """After the tables: speed, where the time went, metrics, runtime, actors, the folder."""
    head = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    counts = run["counts"]
    t, rate = run["timings"], run["throughput"]
    parts = [(name, t.get(key)) for name, key in (("checks", "checks_s"), ("Ray start", "ray_start_s"), ("actor start", "setup_s"),
                                                  ("inference", "inference_s"), ("Ray stop", "ray_stop_s"),
                                                  ("evaluation", "evaluation_s"),
                                                  ("report", "report_s"))]
    speed = speed_line(run)
    if speed:
        sys.stdout.write(speed + "\n")
    sys.stdout.write(
        f"{counts['samples']} samples, {counts['errors']} errors in {t['total_s']:.1f} s end to end ("
        + ", ".join(f"{name} {v:.1f} s" for name, v in parts if v is not None) + "); "
        f"{_per_s(rate.get('end_to_end_samples_per_s'))} samples/s end to end, "
        f"{_per_s(rate.get('samples_per_s'))} in steady state"
        + _tail_text(t) + "\n"
        f"metrics: {json.dumps(head)}\n"
    )
    from rayinfer.jobs.format import family_text, runtime_text

    if run.get("runtime"):
        sys.stdout.write(f"runtime: {runtime_text(run['runtime'])}\n")
    if run.get("model_family"):
        sys.stdout.write(f"model family: {family_text(run['model_family'])}\n")
    for a in run["actors"]:
        if a.get("busy_fraction") is not None:
            line = f"  {a['name']}: {a.get('samples', 0)} samples, {a['shards']} shards, busy {a['busy_fraction']:.0%}"
            if (a.get("batch") or 1) > 1:
                line += f", batches of {a['batch']} (mean fill {a.get('batch_fill') or 0:.1f})"
            if a.get("host_ms_per_sample") is not None:
                line += f", host {a['host_ms_per_sample']:.1f} ms/sample"
            if a.get("host_cores_needed") is not None:
                line += (f" (keeping its device at {a['device_rate']:.0f}/s takes "
                         f"{a['host_cores_needed']:.1f} of the node's {a.get('cpus')} cores)")
            sys.stdout.write(line + "\n")
    sys.stdout.write(f"Results saved to {run['config']['output']}\n")


def _per_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cmd_submit(args: argparse.Namespace) -> int:
    from rayinfer.jobs.submit import submit_and_follow

    cfg = config_from_args(args)
    return submit_and_follow(cfg, args.dashboard, follow_logs=not args.no_wait)


def cmd_status(args: argparse.Namespace) -> int:
    from rayinfer.jobs.submit import status

    sys.stdout.write(status(args.dashboard, args.job_id) + "\n")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from rayinfer.jobs.submit import follow, logs

    if args.follow:
        logs(args.dashboard, args.job_id)  # a job the cluster does not know: one line, exit 2
        return follow(args.dashboard, args.job_id)
    sys.stdout.write(logs(args.dashboard, args.job_id))
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from rayinfer.jobs.submit import stop

    sys.stdout.write(f"job {args.job_id}: {stop(args.dashboard, args.job_id)}\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from rayinfer.jobs.evaluate import evaluate_offline
    from rayinfer.jobs.format import format_table

    task = get_task(args.task)
    chosen = given(args, eval_flags())
    done = evaluate_offline(task, args.predictions, args.data_root, args.storage_options,
                            chosen.get("options", {}),  # the job's own options, these changed
                            args.image_ids, args.limit, args.ignore_missing_images,
                            warn=lambda line: sys.stderr.write(f"rayinfer: warning: {line}\n"),
                            engine=chosen.get("coco_engine") if task.engines else None)
    ev, saved, run, root, options = done.evaluation, done.saved, done.record, done.data_root, done.options
    out = saved.root
    if args.json:  # every metric, at full precision, and nothing else
        sys.stdout.write(json.dumps(ev.metrics, indent=2) + "\n")
        return 0
    keys = task.summary(ev)
    counts = [k for k, v in ev.metrics.items() if isinstance(v, int) and not isinstance(v, bool) and k not in keys]
    sys.stdout.write(format_table(["metric", "value"], [[k, _cell(ev.metrics.get(k))] for k in keys + counts]) + "\n")
    sys.stdout.write("\n")
    _tables(task, ev, args.verbose)
    speed = speed_line(run) if run else None
    if speed:
        sys.stdout.write(speed + "\n")
    if args.report and out.is_dir():
        from rayinfer.jobs.report import report_files, write_report

        page = write_report(out, ev, task, root, run, options)
        saved.publish(*report_files(task))
        shown = f"{saved.location}/report.html" if saved.location != str(out) else page
        sys.stdout.write(f"report: {shown}\n")
    return 0


def _tail_text(t: dict[str, Any]) -> str:
    """"; evaluation 1.0 s after the last shard (overlapped 4.7 s)": what the user waited for
    the metrics once the last shard was in, and the evaluation done while the actors ran."""
    if t.get("after_last_shard_s") is None:
        return ""
    overlapped = t.get("evaluation_overlapped_s")
    return (f"; evaluation {t['after_last_shard_s']:.1f} s after the last shard"
            + (f" (overlapped {overlapped:.1f} s)" if overlapped is not None else ""))


def _cell(v: Any) -> Any:
    return _f(v) if isinstance(v, float) or v is None else v


def _f(v: float | int | None) -> str:
    if v is None:
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.4f}"  # counts as counts


def cmd_compare(args: argparse.Namespace) -> int:
    from rayinfer.jobs.format import format_table
    from rayinfer.jobs.evaluate import compare

    run_a, run_b = local_run(args.a, args.storage_options), local_run(args.b, args.storage_options)
    compared = compare(run_a.root, run_b.root)
    used = {name: json.loads((run.root / "metrics.json").read_text()).get("annotations_sha256")
            for name, run in ((args.a, run_a), (args.b, run_b))}
    if all(used.values()) and len(set(used.values())) > 1:
        sys.stderr.write("rayinfer: warning: the runs were evaluated against different annotations ("
                         + "; ".join(f"{name}: sha256 {sha[:12]}" for name, sha in used.items())
                         + "): their metrics differ by more than the models do\n")
    rows = [[k, _f(a), _f(b), "-" if d is None else f"{d:+d}" if isinstance(d, int) else f"{d:+.4f}"]
            for k, a, b, d in compared]
    sys.stdout.write(format_table(["metric", str(args.a), str(args.b), "delta"], rows) + "\n")
    if args.report:
        _compare_report(args, run_a.root, run_b.root, compared)
    return 0


def _compare_report(args: argparse.Namespace, a: Path, b: Path, compared: list[Any]) -> None:
    """Both runs evaluated on the same ground truth (--data-root, else A's), then one page."""
    from rayinfer.jobs.evaluate import SavedRun, read_run_record
    from rayinfer.jobs.report import write_compare_report

    record = read_run_record(a)
    if record is None:
        raise SetupError(f"{a}/run.json not found: the comparison report needs the runs' task")
    task = get_task(record["config"]["task"])
    storage = args.storage_options or record["config"].get("storage_options") or {}
    data_root = args.data_root or record["config"]["data_root"]
    root = Location.of(data_root, storage)
    runs = (SavedRun.open(a), SavedRun.open(b))
    ev_a, ev_b = (task.evaluate(run, root, None) for run in runs)
    page = write_compare_report(args.report, (str(args.a), str(args.b)), compared, ev_a, ev_b, runs, task, data_root)
    sys.stdout.write(f"compare report: {page}\n")


def cmd_pack(args: argparse.Namespace) -> int:
    from rayinfer.jobs.pack import pack_dataset

    cfg = JobConfig(task=args.task, data_root=args.data_root, model="", output="",
                    storage_options=args.storage_options)
    dataset = get_task(args.task).dataset(cfg)
    done = pack_dataset(dataset, Location.of(args.to, args.storage_options), args.format, args.samples_per_shard)
    skipped = f"; {len(done['skipped'])} skipped (unreadable, see the warnings)" if done["skipped"] else ""
    sys.stdout.write(f"{done['samples']} samples in {done['shards']} {args.format} shards at {args.to}{skipped}\n")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from rayinfer.jobs.download import DownloadError, main_download

    try:
        main_download(args.dataset, args.dest, args.mirror, args.manifest, args.keep_archives, args.quiet)
    except DownloadError as exc:
        sys.stderr.write(f"rayinfer: download failed: {exc}\n")
        return EXIT_ERROR
    sys.stdout.write(f"{args.dataset} ready in {args.dest}\n")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rayinfer.jobs.benchmark import format_accuracy_bench, format_bench, run_accuracy_bench, run_model_bench

    if args.task and not args.data_root:
        raise SetupError("bench: --task needs --data-root (accuracy on that dataset)")
    if args.data_root:
        if not Path(args.data_root).is_dir():
            raise SetupError(f"data root not found: {args.data_root}")
        result = run_accuracy_bench(args.model, args.data_root, args.task, args.images, args.runtime,
                                    args.precision, args.seconds, args.hint, args.providers)
        text = json.dumps(result, indent=2) if args.json else format_accuracy_bench(result)
    else:
        result = run_model_bench(args.model, args.runtime, args.requests or ["1", "2", "4", "auto"], args.seconds,
                                 args.hint, args.batches, args.providers)
        text = json.dumps(result, indent=2) if args.json else format_bench(result)
    sys.stdout.write(text + "\n")
    return 0


def _precisions(text: str) -> list[str]:
    from rayinfer.actors.model import PRECISIONS

    values = csv_list(text)
    for v in values:
        if v not in PRECISIONS:
            raise argparse.ArgumentTypeError(f"precision: {v!r} is not one of {', '.join(PRECISIONS)}")
    return values


def _counts_or_auto(what: str, noun: str) -> Any:
    """A parser of comma-separated positive numbers or `auto` (`--requests`, `--batch`)."""
    def parse(text: str) -> list[str]:
        values = csv_list(text)
        for v in values:
            if v != "auto" and not (v.isdigit() and int(v) > 0):
                raise argparse.ArgumentTypeError(f"{what}: {v!r} is not a positive {noun} or auto")
        return values

    return parse


_batches, _requests = _counts_or_auto("batch", "size"), _counts_or_auto("requests", "count")


def cmd_doctor(args: argparse.Namespace) -> int:
    from rayinfer.jobs.doctor import format_report, report

    info = report([Path(p) for p in args.data_root])
    sys.stdout.write((json.dumps(info, indent=2) if args.json else format_report(info)) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayinfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbose_help = "debug logging; the per-class table lists classes without objects too"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    common = argparse.ArgumentParser(add_help=False)  # -v after the command too (`rayinfer eval ... -v`)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[common], help="run a job here or on a cluster (--address)")
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", parents=[common], help="send a job to a cluster through Ray Jobs and follow its logs")
    add_run_options(submit)
    submit.add_argument("--dashboard", default=DEFAULT_DASHBOARD, help="Ray Jobs address (default: %(default)s)")
    submit.add_argument("--no-wait", "--no-follow", dest="no_wait", action="store_true",
                        help="print the job id and return at once (follow it with `rayinfer logs`)")
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (("status", cmd_status, "a submitted job's status"),
                             ("logs", cmd_logs, "a submitted job's logs (--follow: until it ends)"),
                             ("stop", cmd_stop, "stop a submitted job and wait until it has ended")):
        job = sub.add_parser(name, parents=[common], help=text)
        job.add_argument("job_id", help="the id `rayinfer submit` printed (raysubmit_...)")
        job.add_argument("--dashboard", default=DEFAULT_DASHBOARD, help="Ray Jobs address (default: %(default)s)")
        if name == "logs":
            job.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its code")
        job.set_defaults(func=func)

    ev = sub.add_parser("eval", parents=[common], help="dataset metrics from saved predictions, without Ray or the model")
    add_task(ev)
    ev.add_argument("--predictions", required=True,
                    help="a rayinfer output folder or URL (s3://...), or (COCO) a results JSON from any tool")
    ev.add_argument("--data-root", required=True, help="the dataset folder (or s3://, gs://, https:// URL) with the ground truth")
    ev.add_argument("--image-ids", type=csv_list, help="comma-separated sample ids to evaluate")
    ev.add_argument("--limit", type=int, help="only the first N samples")
    ev.add_argument("--report", action="store_true", help="(re)write PREDICTIONS/report.html")
    ev.add_argument("--ignore-missing-images", action="store_true",
                    help="leave out the samples the ground truth lacks (default: refuse, naming them)")
    ev.add_argument("--json", action="store_true", help="print every metric as JSON (metrics.json), nothing else")
    add_flags(ev, eval_flags())
    ev.set_defaults(func=cmd_eval)
    storage = dict(type=parser_for(dict[str, Any]), default={}, metavar="STORAGE_OPTIONS",
                   help="s3:// / gs:// options (key=value,... or JSON), as for run; default: the run's")
    ev.add_argument("--storage-options", **storage)

    cmp = sub.add_parser("compare", parents=[common], help="metric deltas between two runs")
    cmp.add_argument("a", help="a run's folder or URL")
    cmp.add_argument("b", help="a run's folder or URL")
    cmp.add_argument("--storage-options", **storage)
    cmp.add_argument("--report", type=Path, metavar="PAGE",
                     help="also write one HTML page: the metrics side by side, per-class AP changes, the images "
                          "whose errors changed most (figures also under PAGE-figures/)")
    cmp.add_argument("--data-root", help="the ground truth for --report (default: the data the first run used)")
    cmp.set_defaults(func=cmd_compare)

    pk = sub.add_parser("pack", parents=[common], help="a dataset's files as WebDataset tar or Parquet shards")
    add_task(pk)
    pk.add_argument("--data-root", required=True, help="the dataset (a folder or URL) in its loose layout")
    pk.add_argument("--to", required=True, help="an empty folder or URL (s3://...) for the packed copy")
    pk.add_argument("--format", choices=("tar", "parquet"), default="tar", help="WebDataset tar or Parquet (default: tar)")
    pk.add_argument("--samples-per-shard", type=int, default=256, help="samples per shard, the job's work unit (default: 256)")
    pk.add_argument("--storage-options", **storage)
    pk.set_defaults(func=cmd_pack)

    from rayinfer.jobs.download import SPECS

    dl = sub.add_parser("download", parents=[common], help="fetch, verify and extract an official dataset")
    dl.add_argument("dataset", choices=sorted(SPECS))
    dl.add_argument("--dest", required=True, type=Path, help="folder to extract into (the job's --data-root)")
    dl.add_argument("--mirror", help="base URL serving the same file names")
    dl.add_argument("--manifest", type=Path, help="JSON list of archives replacing the built-in one")
    dl.add_argument("--keep-archives", action="store_true", help="keep the downloaded archives")
    dl.add_argument("--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(func=cmd_download)

    from rayinfer.actors.backends import runtime_names

    bn = sub.add_parser("bench", parents=[common], help="a model on each installed runtime x request counts and batches: img/s and "
                                                        "latency; with --data-root, x precision with the dataset's metrics")
    bn.add_argument("--model", required=True, help="ONNX model file (or OpenVINO IR .xml)")
    bn.add_argument("--runtime", type=csv_list, default=["auto"],
                    help=f"runtimes, comma-separated ({', '.join(runtime_names())}; auto: every installed one)")
    bn.add_argument("--requests", type=_requests,
                    help="requests in flight, comma-separated; auto = the runtime's optimal count (default: 1,2,4,auto; "
                         "with --data-root: auto)")
    bn.add_argument("--batch", type=_batches, dest="batches",
                    help="samples per request, comma-separated, each at the runtime's optimal request count; auto = "
                         "what a job would pick (default: 8,32,auto where the model's batch axis is dynamic; a size "
                         "the model cannot take is named and left out)")
    bn.add_argument("--providers", type=csv_list, help="ONNX Runtime execution providers in order, e.g. cuda "
                                                       "(default: cpu)")
    bn.add_argument("--seconds", type=float, default=5.0, help="measured time per run (default: %(default)s)")
    bn.add_argument("--hint", choices=("throughput", "latency"), default="throughput")
    bn.add_argument("--data-root", help="a dataset folder: one row per runtime x precision, with the task's metrics "
                                        "from a job on its first --images samples")
    bn.add_argument("--task", type=_task, help="the task of --data-root (default: the one whose layout it has)")
    bn.add_argument("--images", type=int, help="with --data-root: the first N samples (default: all)")
    bn.add_argument("--precision", type=_precisions, default=["model", "bf16", "fp16"],
                    help="with --data-root: precisions, comma-separated (default: model,bf16,fp16; one that no runtime "
                         "here computes in is named with why and left out)")
    bn.add_argument("--json", action="store_true", help="one JSON object, nothing else")
    bn.set_defaults(func=cmd_bench)

    doc = sub.add_parser("doctor", parents=[common], help="versions, providers, cores, GPUs and the datasets found")
    doc.add_argument("--data-root", action="append", default=[], help="also look for a dataset here")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else (logging.WARNING if quiet else logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("ray", "filelock", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (SetupError, ConfigError) as exc:
        sys.stderr.write(f"rayinfer: error: {exc}\n")
        return EXIT_SETUP
    except KeyboardInterrupt:
        sys.stderr.write("rayinfer: interrupted; rerun with --resume to continue\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
