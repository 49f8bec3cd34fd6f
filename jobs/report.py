"""`OUTPUT/report.html`: one self-contained page (figures embedded) plus the figures' files.

The page, top to bottom: a header (model, data, runtime, date, the headline metrics); the
task's figures (its `figures` hook: COCO's confusion matrix, P/R/F1 against confidence, PR
curves, worst and best images; NYU's frames worst first and error by depth), each with a
caption saying how to read it; the metrics and the task's tables (long ones collapsed);
then where the time went (from run.json: the actor timeline, the per-stage latencies, the
busy fraction per actor).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayinfer.actors.model import available_cpus
from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import Evaluation
from rayinfer.jobs.format import family_text, runtime_text

log = logging.getLogger(__name__)

#: the run's own figures (drawn from run.json, whatever the task)
RUN_FIGURES = ("timeline.png", "stage_latency.png")
COLLAPSE_ROWS = 12  # a table longer than this starts collapsed


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), for the tasks' figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Figure:
    """One figure of the report: its file (report/FILE: .png, or .jpg for photographs), its
    bytes, and a caption that says what it shows and how to read it."""

    file: str
    data: bytes
    caption: str

    @property
    def name(self) -> str:
        return self.file.rsplit(".", 1)[0]

    @property
    def mime(self) -> str:
        return "image/jpeg" if self.file.endswith(".jpg") else "image/png"


#: a figure drawn on demand: one, several, or none (nothing to draw)
FigureJob = Callable[[], "Figure | list[Figure] | None"]

_JOBS: list[FigureJob] = []  # the jobs a forked pool's processes run, by index


def render(items: Sequence[Figure | FigureJob]) -> list[Figure]:
    """The figures of `items` (each a Figure, or a job drawing some), in order.

    The jobs run in forked processes, as many as the CPUs this process may use: matplotlib
    holds the GIL, so threads would take turns. Fork, not spawn: a job's data (an evaluation,
    the ground truth) is inherited, not pickled; only the figures' bytes come back. A job only
    draws (what it draws was read before), so a forked process touches no file system client
    and no lock of another thread. Where Ray runs in this process (its threads are not safe
    to fork), with one CPU, or if a process dies, the jobs run here, one after the other."""
    global _JOBS
    jobs = [item for item in items if callable(item)]
    workers = min(len(jobs), available_cpus())
    done: list[Any] | None = None
    if workers > 1 and _may_fork():
        _JOBS = jobs
        try:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                done = list(pool.map(_run_job, range(len(jobs))))
        except (OSError, BrokenProcessPool) as exc:  # no processes to be had, or one died: draw them here
            log.debug("drawing the figures in this process: %s", exc)
        finally:
            _JOBS = []
    if done is None:
        done = [job() for job in jobs]
    drawn = iter(done)
    figures: list[Figure] = []
    for item in items:
        out = next(drawn) if callable(item) else item
        figures += out if isinstance(out, list) else [out] if out is not None else []
    return figures


def _may_fork() -> bool:
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    ray = sys.modules.get("ray")
    return not (ray is not None and ray.is_initialized())


def _run_job(index: int) -> Figure | list[Figure] | None:
    return _JOBS[index]()


def save_figure(fig: Any, folder: Path, file: str, caption: str, dpi: int = 100) -> Figure:
    """Write matplotlib's `fig` to folder/FILE (PNG, or JPEG where FILE ends in .jpg), close it."""
    buf = io.BytesIO()
    jpeg = file.endswith(".jpg")
    fig.savefig(buf, format="jpeg" if jpeg else "png", dpi=dpi, bbox_inches="tight",
                **({"pil_kwargs": {"quality": 85}} if jpeg else {}))
    pyplot().close(fig)
    data = buf.getvalue()
    (folder / file).write_bytes(data)
    return Figure(file, data, caption)


# -- numbers and tables ---------------------------------------------------------------------
def number(v: Any) -> str:
    """One format for every number on the page: integers with thousands separators, other
    numbers with 4 significant digits (at least 3 decimals below 1), None as a dash."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return html.escape(str(v))
    if float(v).is_integer() and isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    v = float(v)
    return f"{v:.3f}" if abs(v) <= 1 else f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"


def _batch(actor: dict[str, Any]) -> str:
    """An actor's samples per request: its batch and the mean it carried (1 for a run.json
    written before batches)."""
    batch, fill = actor.get("batch") or 1, actor.get("batch_fill")
    return f"{batch} ({fill:.1f})" if batch > 1 and fill is not None else str(batch)


def _table(header: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{number(v)}</td>" for v in r) + "</tr>" for r in rows)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if title is None:
        return table
    if len(rows) > COLLAPSE_ROWS:
        return (f"<details><summary><b>{html.escape(title)}</b> ({len(rows)} rows: click to show)</summary>"
                f"{table}</details>")
    return f"<h3>{html.escape(title)}</h3>{table}"


def _figure(f: Figure) -> str:
    return (f'<figure id="fig-{html.escape(f.name)}"><img alt="{html.escape(f.caption)}" '
            f'src="data:{f.mime};base64,{base64.b64encode(f.data).decode()}">'
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")


# -- where the time went ---------------------------------------------------------------------
def _timeline_figure(run: dict[str, Any], folder: Path) -> Figure | None:
    """One row per actor (grouped by node), one bar per shard run from its start to its
    result; the start-up before the first shard; re-queued and speculative runs marked."""
    timeline = run.get("timeline") or {}
    runs = timeline.get("runs") or []
    if not runs:
        return None
    plt = pyplot()
    hosts = {a.get("name"): a.get("host") or "?" for a in run.get("actors") or []}
    names = sorted({r["actor"] for r in runs} | set(timeline.get("joined") or {}),
                   key=lambda n: (hosts.get(n, "?"), n))
    row = {n: i for i, n in enumerate(names)}
    setup = (run.get("timings") or {}).get("setup_s") or 0.0
    colours = {"ok": "#4477aa", "lost": "#ee6677", "failed": "#ee6677", "timed out": "#ee6677", "dropped": "#bbbbbb"}
    fig, ax = plt.subplots(figsize=(11, max(2.2, 0.42 * len(names) + 1.3)))
    for r in runs:
        y = row[r["actor"]]
        speculative = bool(r.get("copy"))
        ax.barh(y, r["end_s"] - r["start_s"], left=r["start_s"], height=0.35 if speculative else 0.7,
                color=colours.get(r["outcome"], "#999999"), edgecolor="white", linewidth=0.4,
                hatch="///" if speculative else None)
    for name, joined in (timeline.get("joined") or {}).items():
        if name in row:
            if joined <= 0 and setup:
                ax.barh(row[name], setup, left=-setup, height=0.7, color="#dddddd", edgecolor="#999999", linewidth=0.4)
            elif joined > 0:
                ax.plot([joined], [row[name]], marker=">", color="#228833", ms=7)
    ax.set_yticks(range(len(names)), [f"{hosts.get(n, '?')} · {n}" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="seconds from the first shard (negative: actor start-up)", title="Actor timeline")
    ax.grid(axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color="#dddddd", label="start-up"), Patch(color="#4477aa", label="shard, result kept"),
               Patch(color="#ee6677", label="shard lost / failed / timed out (re-queued)"),
               Patch(facecolor="white", edgecolor="#444444", hatch="///", label="speculative copy"),
               Patch(color="#bbbbbb", label="copy dropped (the other finished first)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, folder, "timeline.png",
                       "Actor timeline: one row per actor (labelled node · actor, grouped by node), one bar per shard "
                       "from when it was handed out to when its result came back. Grey: the actors' start-up (model "
                       "loaded, runtime chosen) before the first shard; a green triangle: an actor that joined later. "
                       "Gaps in a row are time its device sat idle waiting for work.")


def _stage_figure(run: dict[str, Any], folder: Path) -> Figure | None:
    spread = (run.get("timings") or {}).get("stage_percentiles_ms") or {}
    spread = {k: v for k, v in spread.items() if v.get("p50") is not None}
    if not spread:
        return None
    plt = pyplot()
    stages = list(spread)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(stages) + 1.4))
    y = np.arange(len(stages))
    for q, colour, h in (("p99", "#eecc66", 0.75), ("p90", "#ee9955", 0.55), ("p50", "#4477aa", 0.35)):
        ax.barh(y, [spread[s][q] for s in stages], height=h, color=colour, label=q)
    for i, s in enumerate(stages):
        ax.text(spread[s]["p99"], i, f"  {number(spread[s]['p50'])} / {number(spread[s]['p90'])} / "
                f"{number(spread[s]['p99'])} ms", va="center", fontsize=7)
    ax.set_yticks(y, stages)
    ax.invert_yaxis()
    ax.set(xlabel="ms per sample", title="Time per sample and stage")
    ax.set_xlim(0, max(spread[s]["p99"] for s in stages) * 1.45 or 1)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, folder, "stage_latency.png",
                       "Time per sample in each stage: the bars are the median (p50), p90 and p99 over every "
                       "sample, the figures beside them p50 / p90 / p99 in ms. A long p99 next to a short p50 "
                       "means a few slow samples (large images, a busy host), not a slow stage. Where requests "
                       "carry batches, a sample's infer is its whole batch's time in the model and its queue "
                       "includes the wait for its batch to fill.")


def _time_jobs(run: dict[str, Any] | None, folder: Path) -> list[FigureJob]:
    """The run's own figures, to draw (none without a run.json)."""
    if not run:
        return []
    return [lambda: _timeline_figure(run, folder), lambda: _stage_figure(run, folder)]


def _time_section(run: dict[str, Any] | None, figures: list[Figure]) -> str:
    """Where the time went: the run's figures (`_time_jobs`, drawn) and tables."""
    if not run:
        return "<p>No run.json: where the time went is unknown (evaluated offline from a results file).</p>"
    t, c = run["timings"], run["counts"]
    parts = [_table(["samples/s steady", "samples/s end to end", "inference s", "actor start s", "total s",
                     "samples", "errors", "shards re-queued", "speculative copies"],
                    [[run["throughput"]["samples_per_s"], run["throughput"].get("end_to_end_samples_per_s"),
                      t["inference_s"], t["setup_s"], t["total_s"],
                      c["samples"], c["errors"], c["shards_requeued"], c.get("shards_speculated")]])]
    parts += [_figure(f) for f in figures]
    actors = run.get("actors") or []
    if actors:
        parts.append(_table(["actor", "node", "device", "CPUs", "requests", "batch (mean fill)", "samples", "shards",
                             "busy fraction", "host ms/sample", "cores to keep the device busy"],
                            [[a.get("name"), a.get("host"), a.get("device"), a.get("cpus"), a.get("requests"),
                              _batch(a), a.get("samples"), a.get("shards"), a.get("busy_fraction"), a.get("host_ms_per_sample"),
                              a.get("host_cores_needed")]
                             for a in sorted(actors, key=lambda a: (a.get("host") or "", a.get("name") or ""))],
                            "Actors (busy fraction: the share of its time the device had work)"))
    stages = t.get("stage_mean_ms") or {}
    if stages:
        parts.append(_table(list(stages), [list(stages.values())], "Mean time per sample and stage (ms)"))
    return "".join(parts)


# -- the page ----------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;padding:0 1em;color:#222}
header{border-bottom:2px solid #4477aa;margin-bottom:1em}header h1{font-size:1.5em;margin:.2em 0}
.meta{color:#555;font-size:13px;line-height:1.5}.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:.8em 0}
.card{border:1px solid #ccd;border-radius:6px;padding:.4em .9em;min-width:6em}.card b{display:block;font-size:1.4em}
.card span{font-size:12px;color:#555}nav{font-size:13px;margin:.5em 0 1em}nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
td:first-child{text-align:left}th{background:#f0f0f0}figure{margin:1.2em 0}img{max-width:100%}
figcaption{font-size:13px;color:#444;max-width:900px;margin-top:.3em}details{margin:.5em 0 1em}
summary{cursor:pointer}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def report_files(task: Any) -> tuple[str, ...]:
    """Every file a report of `task` may write, relative to the output folder (recorded in
    the run's manifest before writing)."""
    return ("report.html", *(f"report/{name}" for name in (*task.figure_names, *RUN_FIGURES)))


def write_report(output: Path, ev: Evaluation, task: Any, data_root: str | Path | Location, run: dict[str, Any] | None = None,
                 options: Any = None) -> Path:
    """Write OUTPUT/report.html and OUTPUT/report/*; returns the HTML path. `task`: the
    task's hooks (rayinfer.jobs.tasks.Task); `options`: its options as the job used them."""
    output = Path(output)
    folder = output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    items = task.figures(ev, Location.of(data_root), folder, options)
    time_jobs = _time_jobs(run, folder)
    drawn = render([*items, *time_jobs])  # every figure at once, where the CPUs allow
    figures = [f for f in drawn if f.file not in RUN_FIGURES]
    time_figures = [f for f in drawn if f.file in RUN_FIGURES]
    keys = task.summary(ev)
    headline = [k for k in task.headline(ev) if ev.metrics.get(k) is not None]
    tables = "".join(_table(t.header, t.sorted_rows(), t.title + (f", highest {t.sort_by} first" if t.sort_by else ""))
                     for t in task.tables(ev))
    time_html = _time_section(run, time_figures)
    title = f"rayinfer {ev.task} report"
    meta = []
    if run:
        meta.append(f"model: <b>{html.escape(str(run['config']['model']))}</b>")
        if run.get("runtime"):
            meta.append(f"runtime: {html.escape(runtime_text(run['runtime']))}")
        if run.get("model_family"):
            meta.append(f"model family: {html.escape(family_text(run['model_family']))}")
    meta.append(f"data: {html.escape(str(data_root))}")
    meta.append(f"images: {number(ev.metrics.get('images'))}")
    if run:
        meta.append(f"run: {html.escape(str(run['timings'].get('started', '')))}, "
                    f"{number(run['timings'].get('total_s'))} s, {number(run['throughput'].get('samples_per_s'))} samples/s")
    cards = "".join(f'<div class="card"><b>{number(ev.metrics.get(k))}</b><span>{html.escape(k)}</span></div>'
                    for k in headline)
    figs = "".join(_figure(f) for f in figures)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><header><h1>{title}</h1><div class="meta">{'<br>'.join(meta)}</div><div class="cards">{cards}</div></header>
<nav><a href="#figures">Figures</a><a href="#metrics">Metrics and tables</a><a href="#time">Where the time went</a></nav>
<h2 id="figures">Figures</h2>{figs or '<p>This task draws no figures.</p>'}
<h2 id="metrics">Metrics</h2>{_table(keys, [[ev.metrics.get(k) for k in keys]])}{tables}
<h2 id="time">Where the time went</h2>{time_html}
<script>window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figuresShown = shown; document.body.dataset.figures = document.images.length;
  document.body.dataset.loadMs = performance.now().toFixed(1); }});</script>
<script type="application/json" id="metrics">{html.escape(json.dumps({k: ev.metrics.get(k) for k in keys}))}</script>
</body></html>"""
    path = output / "report.html"
    path.write_text(page)
    log.info("report: %s (%d figures, %.1f MB)", path, len(figures) + len(time_figures), len(page) / 1e6)
    return path


def _change(d: Any) -> str:
    """B - A: integers as integers, other numbers to 3 decimals, signed."""
    if d is None:
        return "–"
    return f"{d:+,d}" if isinstance(d, int) else f"{d:+.3f}"


def write_compare_report(page: Path, names: tuple[str, str], rows: list[tuple[str, Any, Any, Any]],
                         a: Evaluation, b: Evaluation, runs: tuple[Any, Any], task: Any,
                         data_root: str | Path | Location) -> Path:
    """`rayinfer compare A B --report PAGE`: the two runs' metrics side by side, per-class AP
    deltas sorted (where the task has classes), and the task's comparison figures (COCO: the
    images whose errors changed most). Figures also go to PAGE's folder, under PAGE-figures/.
    `names`: the runs as the user named them; the page calls them A and B."""
    labels = ("A", "B")
    page = Path(page)
    folder = page.with_name(page.stem + "-figures")
    folder.mkdir(parents=True, exist_ok=True)
    figures = task.compare_figures(a, b, runs, Location.of(data_root), folder, labels)
    keys = task.summary(a)
    ordered = sorted(rows, key=lambda r: (r[0] not in keys, keys.index(r[0]) if r[0] in keys else 0))
    metrics = _table(["metric", *labels, "change"], [[k, va, vb, _change(d)] for k, va, vb, d in ordered])
    per_class = ""
    pa_, pb_ = a.metrics.get("per_class_AP") or {}, b.metrics.get("per_class_AP") or {}
    deltas = sorted(((pb_[c] - pa_[c], c) for c in pa_ if pa_.get(c) is not None and pb_.get(c) is not None))
    if deltas:
        per_class = _table(["class", *labels, "change"], [[c, pa_[c], pb_[c], _change(d)] for d, c in deltas],
                           f"AP50-95 per class, largest drop first ({len(deltas)} classes)")
    headline = [k for k in task.headline(a) if a.metrics.get(k) is not None and b.metrics.get(k) is not None]
    cards = "".join(f'<div class="card"><b>{number(a.metrics[k])} → {number(b.metrics[k])}</b>'
                    f'<span>{html.escape(k)}</span></div>' for k in headline)
    title = f"rayinfer compare ({html.escape(a.task)})"
    text = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><header><h1>{title}</h1><div class="meta">A: <b>{html.escape(names[0])}</b><br>B: <b>{html.escape(names[1])}</b>
<br>data: {html.escape(str(data_root))}, images: {number(a.metrics.get('images'))} / {number(b.metrics.get('images'))}</div>
<div class="cards">{cards}</div></header>
<h2>Metrics</h2>{metrics}{per_class}
<h2>Figures</h2>{''.join(_figure(f) for f in figures) or '<p>This task draws no comparison figures.</p>'}
<script>window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figuresShown = shown; document.body.dataset.figures = document.images.length;
  document.body.dataset.loadMs = performance.now().toFixed(1); }});</script>
</body></html>"""
    page.write_text(text)
    log.info("compare report: %s", page)
    return page
