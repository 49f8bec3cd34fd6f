"""`OUTPUT/report.html`: one self-contained page (figures embedded) plus the PNGs.

The page: the task's summary metrics, its tables and figures (its `tables` and `figures`
hooks: COCO's PR curves, per-class AP and example detections; NYU's example rows and error
vs depth), then the throughput and utilisation figures from run.json.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any


from rayinfer.datasets.storage import Location
from rayinfer.jobs.evaluate import Evaluation
from rayinfer.jobs.format import runtime_text

log = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display), for the tasks' figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, folder: Path, name: str) -> bytes:
    """Write `fig` to folder/NAME.png, close it, and return the PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    data = buf.getvalue()
    (folder / f"{name}.png").write_bytes(data)
    return data


# -- page ---------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _throughput_section(run: dict[str, Any] | None) -> str:
    if not run:
        return "<p>No run.json: throughput unknown (evaluated offline from a results file).</p>"
    t, c = run["timings"], run["counts"]
    parts = [_table(["samples/s steady", "samples/s end to end", "inference s", "actor start s", "total s",
                     "samples", "errors", "shards re-queued"],
                    [[run["throughput"]["samples_per_s"], run["throughput"].get("end_to_end_samples_per_s"),
                      t["inference_s"], t["setup_s"], t["total_s"],
                      c["samples"], c["errors"], c["shards_requeued"]]])]
    stages = t.get("stage_mean_ms") or {}
    if stages:
        parts.append("<h3>Mean time per sample and stage (ms)</h3>")
        parts.append(_table(list(stages), [list(stages.values())]))
    spread = t.get("stage_percentiles_ms") or {}
    if spread:
        parts.append("<h3>Time per sample and stage, spread (ms)</h3>")
        parts.append(_table(["stage", "p50", "p90", "p99"], [[k, v["p50"], v["p90"], v["p99"]] for k, v in spread.items()]))
    actors = run.get("actors") or []
    if actors:
        parts.append("<h3>Actors</h3>")
        parts.append(_table(["actor", "host", "device", "CPUs", "requests", "samples", "shards", "busy fraction",
                             "host ms/sample", "cores to keep the device busy"],
                            [[a.get("name"), a.get("host"), a.get("device"), a.get("cpus"), a.get("requests"),
                              a.get("samples"), a.get("shards"), a.get("busy_fraction"), a.get("host_ms_per_sample"),
                              a.get("host_cores_needed")] for a in actors]))
    return "".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f0f0f0}figure{margin:1em 0}img{max-width:100%}h1{font-size:1.5em}"""


def report_files(task: Any) -> tuple[str, ...]:
    """Every file a report of `task` may write, relative to the output folder (recorded in
    the run's manifest before writing)."""
    return ("report.html", *(f"report/{name}.png" for name in task.figure_names))


def write_report(output: Path, ev: Evaluation, task: Any, data_root: str | Path | Location, run: dict[str, Any] | None = None,
                 options: Any = None) -> Path:
    """Write OUTPUT/report.html and OUTPUT/report/*.png; returns the HTML path. `task`: the
    task's hooks (rayinfer.jobs.tasks.Task); `options`: its options as the job used them."""
    output = Path(output)
    folder = output / "report"
    folder.mkdir(parents=True, exist_ok=True)
    figures = task.figures(ev, Location.of(data_root), folder, options)
    keys = task.summary(ev)
    slices = "".join(f"<h2>{html.escape(t.title)}</h2>" + _table(t.header, t.rows) for t in task.tables(ev, everything=True))
    title = f"rayinfer {ev.task} report"
    model = html.escape(str(run["config"]["model"])) if run else ""
    runtime = (f"<br>runtime: {html.escape(runtime_text(run['runtime']))}"
               if run and run.get("runtime") else "")
    figs = "".join(
        f'<figure id="fig-{name}"><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f"<figcaption>{name.replace('_', ' ')}</figcaption></figure>"
        for name, data in figures
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body><h1>{title}</h1><p>model: {model}{runtime}<br>data: {html.escape(str(data_root))}<br>images: {ev.metrics.get('images')}</p>
<h2>Metrics</h2>{_table(keys, [[ev.metrics.get(k) for k in keys]])}
{slices}<h2>Figures</h2>{figs}
<h2>Throughput and utilisation</h2>{_throughput_section(run)}
<script>window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figuresShown = shown; }});</script>
<script type="application/json" id="metrics">{html.escape(json.dumps({k: ev.metrics.get(k) for k in keys}))}</script>
</body></html>"""
    path = output / "report.html"
    path.write_text(page)
    log.info("report: %s", path)
    return path
