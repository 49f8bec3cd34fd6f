"""Plain text for the terminal and the report: tables (`rayinfer eval`, `compare`, the benchmarks), the runtime line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rayinfer.actors.model import precision_text


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain fixed-width table."""
    cells = [list(map(str, header))] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def runtime_text(runtime: dict[str, Any]) -> str:
    """"openvino 2026.4.1; precision model: computed at the model's own precision; the faster
    measured, img/s: openvino 26.8, onnxruntime 24.7" for run.json's runtime."""
    text = f"{runtime['name']} {runtime.get('version', '')}".strip()
    if runtime.get("precision"):
        text += f"; precision {precision_text(runtime['precision'])}"
    if runtime.get("differs_from_model"):
        text += f" ({runtime['differs_from_model']}: metrics can differ from the model's own)"
    if runtime.get("probe"):
        figures = ", ".join(f"{k} {v:.1f}" for k, v in sorted(runtime["probe"].items(), key=lambda kv: -kv[1]))
        text += f"; the faster measured, img/s: {figures}{' (cached)' if runtime.get('probe_cached') else ''}"
    return text


def family_text(family: dict[str, Any]) -> str:
    """"end2end (NMS: in the model)" for run.json's model_family."""
    return f"{family['name']} (NMS: {family['nms']})" if family.get("nms") else str(family.get("name"))
