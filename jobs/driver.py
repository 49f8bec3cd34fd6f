"""The driver: one pipeline for every job.

dataset (sample list) -> scheduler (shards) -> inference actors -> committed
Parquet shards -> evaluator -> metrics.json, run.json.

Setup problems (missing files, unusable model, wrong output directory) stop the job
before any work with a `SetupError`; per-sample problems become rows of
errors.parquet and the job goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import platform
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from rayinfer.actors.actor import STAGES, ShardResult, peak_rss_mb
from rayinfer.actors.backends import backend_for, candidates
from rayinfer.actors.batching import asked_batch
from rayinfer.actors.devices import Plan
from rayinfer.actors.fetch import fetched, pin
from rayinfer.datasets.base import ERROR_SCHEMA, ModelFamily, Dataset, Sample, SetupError, rows_schema
from rayinfer.datasets.storage import Location, storage_error
from rayinfer.jobs.config import JobConfig, resolve_paths
from rayinfer.jobs.cluster import connect_ray, may_grow
from rayinfer.jobs.scheduler import FailedShard, ShardScheduler, make_shards
from rayinfer.jobs.lock import run_lock
from rayinfer.jobs.exit_codes import EXIT_INCOMPLETE, EXIT_OK, EXIT_PARTIAL, EXIT_SETUP
from rayinfer.jobs.output import RunOutput, open_output, writing
from rayinfer.jobs.placement import ActorFleet, actor_stats, open_pool
from rayinfer.jobs.progress import Progress
from rayinfer.jobs.streaming import EvaluationWorker
from rayinfer.jobs.tasks import Task, get_task
from rayinfer.jobs.tasks.base import options_record

log = logging.getLogger(__name__)


@dataclass
class JobOutcome:
    """What a finished job reports to the CLI."""

    metrics: dict[str, Any]
    run: dict[str, Any]
    samples: int
    errors: int
    unfinished: int = 0  # samples of shards no actor was left to run (not committed)
    #: the dataset metrics as the evaluator made them (None when the job did not finish)
    evaluation: Any = None
    task: Task | None = None

    @property
    def exit_code(self) -> int:
        if self.unfinished:
            return EXIT_INCOMPLETE
        return EXIT_PARTIAL if self.errors else EXIT_OK


def samples_digest(root: Location, samples: Sequence[Sample], content: bool = False) -> dict[str, Any]:
    """A hash of the sample list: ids, files, and each file's size and mtime (and, with
    `content`, its bytes). Reads no image by default: 5,000 stat calls for a folder, one
    listing (5 requests) for object storage, not 5,000 reads."""
    h = hashlib.sha256()
    listed = None if root.is_local or root.scheme in ("http", "https") else root.listing()
    for s in samples:
        st: tuple[int, int] | None = None
        if s.file:
            try:
                st = listed.get(s.file) if listed is not None else (root / s.file).stat_key()
            except (OSError, ValueError):
                st = None
        h.update(f"{s.sample_id}\0{s.file}\0{st[0] if st else -1}\0{st[1] if st else -1}\n".encode())
        if content and st is not None:
            h.update((root / s.file).sha256().encode())
    return {"count": len(samples), "sha256": h.hexdigest(), "content_hashed": content}


def fingerprint(cfg: JobConfig, setup: Setup) -> dict[str, Any]:
    """What must not change between a run and its `--resume`."""
    return {
        "task": cfg.task,
        "data": setup.dataset.fingerprint(),
        "samples": samples_digest(Location.of(cfg.data_root, cfg.storage_options), setup.samples, cfg.hash_samples),
        "model": model_digest(cfg),
        "model_family": cfg.model_family,
        "shard_size": cfg.shard_samples,
        # under the config section's name, so a refusal names the option as the user set it
        setup.task.options_key or "task_options": options_record(setup.options),
    }


def model_digest(cfg: JobConfig) -> dict[str, Any]:
    """The model's path (or URL), size and SHA-256, as `--resume` compares them."""
    local = fetched(cfg)
    return {**backend_for(local.model, cfg.runtime).digest(local.model), "path": cfg.model}


def versions(cfg: JobConfig) -> dict[str, str]:
    import numpy
    import ray

    runtimes: dict[str, str] = {}
    for backend in candidates(cfg.model, cfg.runtime):  # each runtime that may run the model
        runtimes.update(backend.versions())
    return {
        "python": platform.python_version(),
        "ray": ray.__version__,
        **runtimes,
        "numpy": numpy.__version__,
        "pyarrow": pa.__version__,
        "platform": platform.platform(),
    }


@dataclass
class Setup:
    """What a job is made of, checked before any work starts."""

    task: Task
    dataset: Dataset
    samples: list[Sample]
    #: the model family the actors use (built and checked here, so no actor re-reads
    #: the annotations to build its own)
    family: ModelFamily
    #: the task's options as resolved against the model (Task.resolved_options)
    options: Any


def check_setup(cfg: JobConfig) -> Setup:
    """Everything that can fail before work starts: data root, samples, model, family."""
    task = get_task(cfg.task)
    root = Location.of(cfg.data_root, cfg.storage_options)
    try:
        found = root.is_dir()
        if not found and not root.is_local and not root.bucket.is_dir():
            raise SetupError(f"data root {cfg.data_root}: no bucket {root.bucket.name!r} (or none these "
                             "credentials can see)")
    except OSError as exc:  # access denied, no credentials, unreachable
        raise SetupError(f"data root {cfg.data_root}: {storage_error(exc)}") from None
    if not found:
        raise SetupError(f"data root not found: {cfg.data_root}")
    dataset = task.dataset(cfg)
    samples = dataset.samples()
    if not samples:
        raise SetupError(f"no samples found under {cfg.data_root}")
    local = fetched(cfg)  # a remote model: this node's copy (pinned by run_job)
    # the model's signature, read by the first runtime that computes at the precision asked for
    backend = backend_for(local.model, cfg.runtime, local)
    wrong = backend.check(local.model)
    if wrong:
        raise SetupError(wrong)
    differs = backend.check_precision(local)  # a runtime named by the user, which auto would not pick
    if differs:
        log.warning("--runtime %s: %s; its metrics can differ from the model's own", cfg.runtime, differs)
    try:
        model = backend.build(local, Plan(1, 1), 1)
    except SetupError:
        raise
    except Exception as exc:
        raise SetupError(str(exc)) from None
    asked_batch(cfg.batch, model)  # --batch N where the model's batch axis cannot take N: refused here
    family = task.family(cfg, dataset, model)
    return Setup(task, dataset, samples, family, task.resolved_options(cfg, family))


def run_job(cfg: JobConfig) -> JobOutcome:
    """Run a whole job; see the module docstring."""
    t_start = time.time()
    cfg = pin(resolve_paths(cfg))  # a remote model: fetched here once, its SHA-256 pinned for every node
    setup = check_setup(cfg)
    checks_s = time.time() - t_start  # data, model, task options: before anything runs
    output = open_output(cfg.output, cfg.storage_options)
    lock = run_lock(cfg.output, cfg.storage_options)
    lock.acquire()  # one writer per run: a second job on this output stops here, naming the first
    try:
        return _run_locked(cfg, setup, output, t_start, checks_s)
    finally:
        lock.release()


def _run_locked(cfg: JobConfig, setup: Setup, output: RunOutput, t_start: float, checks_s: float) -> JobOutcome:
    """The job, once it holds its output: prepare it, dispatch, evaluate, report."""
    samples = setup.samples
    committed = output.prepare(fingerprint(cfg, setup), resume=cfg.resume, overwrite=cfg.overwrite)
    shards = make_shards(samples, cfg.shard_samples)
    todo = [s for s in shards if s.index not in committed]
    done_before = sum(len(s.samples) for s in shards if s.index in committed)
    if committed:
        log.info("resuming: %d of %d shards already committed", len(shards) - len(todo), len(shards))

    state = JobState(cfg, setup, t_start, len(samples), len(shards), done_before, len(todo), checks_s,
                     resumed=committed)
    engine = cfg.coco_engine if setup.task.engines else None
    # the metrics computed while the actors infer, each shard as it commits (jobs/streaming.py)
    stream = setup.task.streaming_evaluation(setup.dataset, [s.sample_id for s in samples], setup.options, engine,
                                             exports=output.root)
    worker = EvaluationWorker(stream, output.read_shard, resumed=sorted(committed)) if stream else None
    try:
        dispatch(state, todo, output, worker)
        return _finish(state, output, worker, engine)
    finally:
        stop_ray(state)
        if worker is not None:
            worker.close()
            for partial in worker.stream.exported().values():  # what the job did not put in place
                partial.unlink(missing_ok=True)


def _finish(state: JobState, output: RunOutput, worker: EvaluationWorker | None, engine: str | None) -> JobOutcome:
    """After the dispatch: metrics.json first, then run.json, the exports and the report."""
    cfg, setup = state.cfg, state.setup
    errors = output.gather_errors()
    left = state.scheduler.unfinished if state.scheduler else []
    unfinished = sum(len(s.samples) for s in left)
    if unfinished:
        stop_ray(state)
        run = run_record(state, None, errors.num_rows)
        output.write_json("run.json", run)
        log.error("%d samples in %d shards were not run (no inference actor is left alive) and are not "
                  "committed; rerun with --resume to run them", unfinished, len(left))
        return JobOutcome({}, run, state.samples, errors.num_rows, unfinished)
    t_eval = time.time()
    data_root = Location.of(cfg.data_root, cfg.storage_options)
    log.info("evaluation: %s%s", cfg.task, " (each shard evaluated as it committed)" if worker is not None else "")
    evaluation = worker.finish(output.predictions) if worker is not None else None
    from_saved = evaluation is None
    if from_saved:
        # The setup's reader let go of what it loaded (COCO: the annotations, about 7 KB per image
        # as pycocotools' dicts) before the evaluation loads its own: one copy at a time.
        state.setup = setup = dataclasses.replace(setup, dataset=setup.task.dataset(cfg))
        # The very function `rayinfer eval` uses: the job's metrics are the offline ones.
        evaluation = setup.task.evaluate_saved(output.root, data_root, options=setup.options, engine=engine)
    output.write_json("metrics.json", evaluation.metrics)
    t_metrics = time.time()
    # what the user waits for once the accelerators are done: the last commit to metrics.json
    after = round(t_metrics - state.last_commit, 3) if state.last_commit else None
    # Ray stops while the driver goes on (its processes take a second or so to exit, with
    # little CPU); the report's forked processes start only once it has
    stopping = threading.Thread(target=stop_ray, args=(state,), name="rayinfer-ray-stop")
    stopping.start()

    timings = {"evaluation_s": round(t_metrics - t_eval, 3), "after_last_shard_s": after,
               "evaluation_overlapped_s": round(worker.busy_s, 3) if worker is not None else None,
               "stage_percentiles_ms": stage_percentiles(output, state)}
    run = run_record(state, evaluation.rows, errors.num_rows, timings)
    output.write_json("run.json", run)
    t_after = time.time()
    if from_saved:
        for name, obj in setup.dataset.exports(output.predictions).items():
            output.write_json(name, obj)
    else:
        for name, path in worker.stream.exported().items():  # written as the shards came
            output.adopt(name, path)
    run["timings"]["exports_s"] = round(time.time() - t_after, 3)
    if cfg.report:
        evaluation.explain()  # what only the report shows (COCO: its matching), while Ray stops
    stopping.join()
    run["timings"]["ray_stop_s"] = round(state.ray_stop_s, 3)
    if cfg.report:
        from rayinfer.jobs.report import report_files, write_report

        output.record(*report_files(setup.task))
        t_report = time.time()
        log.info("writing the report")
        try:
            write_report(output.root, evaluation, setup.task, data_root, run, setup.options)
            output.publish(*report_files(setup.task))
        except OSError as exc:
            raise writing(Path(exc.filename or output.root), exc) from None
        run["timings"]["report_s"] = round(time.time() - t_report, 3)
    # the whole job's wall time, the report's included
    run["timings"]["total_s"] = round(time.time() - state.started, 3)
    run["throughput"]["end_to_end_samples_per_s"] = _rate(state.processed, run["timings"]["total_s"])
    output.write_json("run.json", run)
    return JobOutcome(evaluation.metrics, run, state.samples, errors.num_rows, evaluation=evaluation,
                      task=setup.task)


def stop_ray(state: JobState) -> None:
    """Stop the Ray this job started (once; `ray_stop_s` timed), after the metrics are out."""
    if not state.started_ray:
        return
    import ray

    state.started_ray = False
    t_stop = time.time()
    ray.shutdown()
    state.ray_stop_s = time.time() - t_stop


def _rate(samples: int, seconds: float) -> float | None:
    return round(samples / seconds, 3) if seconds > 0 else None


@dataclass
class JobState:
    """The driver's state over one job: what it runs, and what the dispatch counted and
    timed (run.json is written from it). `scheduler`: None where nothing was dispatched
    (every shard committed before, on `--resume`)."""

    cfg: JobConfig
    setup: Setup
    started: float  # epoch seconds, the command's start
    samples: int
    shards: int
    done_before: int = 0  # samples of shards an earlier run committed (--resume)
    shards_todo: int = 0
    checks_s: float = 0.0  # data, model, task options: checked before anything runs
    ray_s: float = 0.0
    ray_stop_s: float = 0.0
    setup_s: float = 0.0
    work_s: float = 0.0
    driver_cpu_s: float = 0.0  # the driver's CPU over the inference phase (dealing, committing)
    processed: int = 0
    stage_totals: dict[str, float] = field(default_factory=dict)
    stage_ms: dict[str, list[np.ndarray]] = field(default_factory=dict)  # per stage, each shard's ms per sample
    infos: list[dict[str, Any]] = field(default_factory=list)
    actor_stats: list[dict[str, Any]] = field(default_factory=list)
    scheduler: ShardScheduler | None = None
    pool: dict[str, Any] = field(default_factory=dict)
    last_commit: float | None = None  # epoch seconds: this run's last shard committed
    resumed: set[int] = field(default_factory=set)  # shards an earlier run committed (--resume)
    started_ray: bool = False  # this job started Ray here (stop_ray stops it)

    def counts(self) -> dict[str, Any]:
        """What the scheduler did to shards and actors (zeros where nothing was dispatched)."""
        if self.scheduler is not None:
            return self.scheduler.counts()
        return {"shards_requeued": 0, "shards_unfinished": 0, "actor_restarts": 0, "actors_retired": [],
                "actors_released": [], "shards_speculated": 0, "speculative_wins": 0, "copies_dropped": 0}

    def shards_of(self, actor: str) -> int:
        return self.scheduler.shards_per_actor.get(actor, 0) if self.scheduler else 0


def _actors_text(scheduler: ShardScheduler, pool: ActorFleet) -> str:
    """"3 actors up, 2 pending" on a cluster that may grow (nothing on a fixed one)."""
    if not pool.placement.growable:
        return ""
    up = len(scheduler.actors) - len(scheduler.retired) - len(scheduler.released)
    return f"{up} actor{'' if up == 1 else 's'} up" + (f", {pool.pending} pending" if pool.pending else "")


def dispatch(state: JobState, todo: list[Any], output: RunOutput, evaluation: EvaluationWorker | None = None) -> None:
    """Start the actors, run every shard in `todo` through the scheduler, commit each
    result (and hand it to `evaluation`); `state` takes what it counted and timed. Ray, where
    the job started it, stays up (`stop_ray`: once the metrics are written)."""
    cfg, setup = state.cfg, state.setup
    schema = rows_schema(setup.family.schema)
    if not todo:
        output.start(state.shards)
        return
    t_ray = time.time()
    state.started_ray = connect_ray(cfg)
    state.ray_s = time.time() - t_ray
    pool: ActorFleet | None = None
    try:
        t_setup = time.time()
        growable = may_grow(cfg)
        pool, probe = open_pool(cfg, setup.dataset, setup.family, growable)
        first = pool.wait_first(cfg.actor_wait_s)
        shape = pool.placement.shape
        log.info("%d actor%s ready, each with %s%s", len(first), "" if len(first) == 1 else "s", shape,
                 f"; {pool.pending} pending: work starts" if pool.pending else "")
        if probe:
            for _, _, info in first:  # what chose their runtime
                info["runtime"].update(probe=probe["probe"], probe_cached=probe["probe_cached"])
        output.start(state.shards)  # the manifest: only now, so a failed setup leaves the folder as it was
        t_work, cpu_work = time.time(), time.process_time()
        state.setup_s = t_work - t_setup
        scheduler = state.scheduler = ShardScheduler(
            [h for h, _, _ in first], [n for _, n, _ in first], cfg.in_flight, cfg.max_shard_attempts,
            shard_timeout_s=cfg.request_timeout_s * (max(len(s.samples) for s in todo) + 2),
            restart_wait_s=cfg.actor_restart_timeout_s, max_losses=cfg.max_shard_attempts + cfg.max_actor_restarts,
            pool=pool, actor_wait_s=cfg.actor_wait_s, speculation=cfg.speculation,
            speculation_factor=cfg.speculation_factor)
        running = setup.task.running_metric()
        log.info("inference: %d samples in %d shards", sum(len(s.samples) for s in todo), len(todo))
        with Progress(cfg.task, state.samples, state.done_before, cfg.progress_interval_s,
                      enabled=cfg.progress and not cfg.quiet) as bar:
            for result in scheduler.run(todo):
                if isinstance(result, FailedShard):
                    errors = pa.Table.from_pylist(
                        [{"sample_id": s.sample_id, "file": s.file, "stage": "actor", "message": result.reason,
                          "shard": result.shard.index, "actor": None, "transient": result.transient}
                         for s in result.shard.samples],
                        schema=ERROR_SCHEMA)
                    output.commit(result.shard.index, schema.empty_table(), errors)
                    n = len(result.shard.samples)
                else:
                    output.commit(result.shard, result.rows, result.errors)
                    if evaluation is not None:
                        evaluation.add(result.shard, result.rows)
                    for k, v in result.stage_s.items():
                        state.stage_totals[k] = state.stage_totals.get(k, 0.0) + v
                    for stage in STAGES:  # copied: a view would keep the shard's whole buffer alive
                        if f"{stage}_ms" in result.rows.column_names:
                            state.stage_ms.setdefault(stage, []).append(
                                result.rows.column(f"{stage}_ms").to_numpy().astype(np.float32, copy=True))
                    running.add(result.rows)
                    n = result.rows.num_rows + result.errors.num_rows
                state.processed += n
                state.last_commit = time.time()
                bar.update(n, "; ".join(filter(None, [running.text(), _actors_text(scheduler, pool)])))
        state.work_s = time.time() - t_work
        state.driver_cpu_s = time.process_time() - cpu_work
        released = set(scheduler.released)
        state.infos = [pool.infos[name] for name in scheduler.names]
        state.actor_stats = [pool.stats[name] if name in released else actor_stats(h)
                             for h, name in zip(scheduler.actors, scheduler.names)]
        state.pool = pool.record()
    finally:
        if pool is not None:
            pool.shutdown(state.scheduler.actors if state.scheduler else [])


def host_need(actor: dict[str, Any]) -> dict[str, Any]:
    """What one actor's device costs the host: CPU ms per sample (every thread of the actor's
    process: reading, decoding, pre- and postprocessing, rows, Ray) and the host cores it
    would take to keep the device at its rate (`device_rate`: declared by a simulated device,
    measured by the runtime probe). None where the device is the CPU itself (its
    inference is host work too) or nothing was measured."""
    samples, cpu = actor.get("samples") or 0, actor.get("host_cpu_s")
    if not samples or cpu is None:
        return {"host_ms_per_sample": None, "host_cores_needed": None}
    per_sample = cpu / samples
    rate = actor.get("device_rate")
    needed = round(per_sample * rate, 2) if rate and actor.get("device") != "cpu" else None
    return {"host_ms_per_sample": round(per_sample * 1000, 3), "host_cores_needed": needed}


def run_record(state: JobState, predictions: int | None, errors: int,
               timings: dict[str, Any] | None = None) -> dict[str, Any]:
    """run.json: config, versions, timings (`timings`: those measured after the dispatch),
    memory, throughput, counts, and per actor."""
    cfg, setup = state.cfg, state.setup
    per_actor = []
    for info, st in zip(state.infos, state.actor_stats):
        entry = {**info, **st}
        entry["shards"] = state.shards_of(info["name"])
        # over the part of the inference phase the actor was there for (it may join late, or go early)
        span = min(state.work_s, st.get("uptime_s", state.work_s))
        entry["busy_fraction"] = round(st["busy_s"] / span, 4) if span > 0 and "busy_s" in st else None
        entry.update(host_need(entry))
        per_actor.append(entry)
    counts = state.counts()
    return {
        "complete": not counts["shards_unfinished"],
        "config": cfg.to_dict(),
        # the task's options as the job used them (a declared depth profile in place of auto)
        "task_options": options_record(setup.options),
        "versions": versions(cfg),
        "runtime": runtime_record(state.infos),
        # the model family (detection: its name and where NMS happens)
        "model_family": setup.family.describe() if hasattr(setup.family, "describe") else None,
        "timings": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(state.started)),
            "total_s": round(time.time() - state.started, 3),  # end to end, from the command's start
            "checks_s": round(state.checks_s, 3),
            "ray_start_s": round(state.ray_s, 3),
            "ray_stop_s": round(state.ray_stop_s, 3),
            "setup_s": round(state.setup_s, 3),  # actor start (their models loaded, a runtime chosen)
            "inference_s": round(state.work_s, 3),
            "driver_cpu_s": round(state.driver_cpu_s, 3),
            "stage_mean_ms": {k: round(v * 1000 / max(1, state.processed), 3) for k, v in state.stage_totals.items()},
            **(timings or {}),
        },
        "memory": {"driver_peak_rss_mb": peak_rss_mb(),
                   "actor_peak_rss_mb": max((st.get("peak_rss_mb", 0) for st in state.actor_stats), default=None)},
        # samples_per_s: steady state (the inference phase); end to end: over total_s
        "throughput": {"samples_per_s": _rate(state.processed, state.work_s),
                       "end_to_end_samples_per_s": _rate(state.processed, time.time() - state.started)},
        "counts": {
            "samples": state.samples,
            "processed_this_run": state.processed,
            "resumed_samples": state.done_before,
            "predictions": predictions,
            "errors": errors,
            "shards": state.shards,
            "shards_resumed": state.shards - state.shards_todo,
            **counts,
        },
        "pool": state.pool,
        # per shard run, for the report's actor timeline
        "timeline": state.scheduler.timeline_record() if state.scheduler else None,
        "actors": per_actor,
    }


def percentiles(values: Any, quantiles: dict[str, float]) -> dict[str, float | None]:
    """{name: the q-th percentile of `values`} for `quantiles` {name: q}, rounded to µs."""
    values = np.asarray(values, np.float64)
    if not values.size:
        return dict.fromkeys(quantiles)
    return {k: round(float(v), 3) for k, v in zip(quantiles, np.percentile(values, list(quantiles.values())))}


def stage_percentiles(output: RunOutput, state: JobState) -> dict[str, dict[str, float | None]]:
    """p50 / p90 / p99 per stage (ms per sample) over the committed predictions: this run's
    as the dispatch kept them, the shards of an earlier run (`state.resumed`) read back."""
    columns = {stage: list(state.stage_ms.get(stage, [])) for stage in STAGES}
    for shard in sorted(state.resumed):
        table = output.read_shard(shard)
        for stage in STAGES:
            if f"{stage}_ms" in table.column_names:
                columns[stage].append(table.column(f"{stage}_ms").to_numpy())
    return {stage: percentiles(np.concatenate(parts), {"p50": 50, "p90": 90, "p99": 99})
            for stage, parts in columns.items() if parts}


def runtime_record(infos: list[dict[str, Any]]) -> dict[str, Any] | None:
    """run.json's `runtime`: {"name", "version", "probe"} that the actors ran with (the
    first actor's probe figures; `per_actor` when actors chose differently)."""
    runtimes = [i["runtime"] for i in infos if i.get("runtime")]
    if not runtimes:
        return None
    first = dict(runtimes[0])
    if any(r["name"] != first["name"] for r in runtimes):
        first["per_actor"] = {i["name"]: i["runtime"]["name"] for i in infos if i.get("runtime")}
    return first


__all__ = ["JobOutcome", "ShardResult", "run_job", "EXIT_OK", "EXIT_PARTIAL", "EXIT_SETUP", "EXIT_INCOMPLETE"]
