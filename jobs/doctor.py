"""`rayinfer doctor`: what this host offers rayinfer, and which datasets it can find."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from rayinfer.actors.model import available_cpus


#: where `rayinfer download` puts the datasets in the README's quick start (relative to the
#: folder doctor runs in), looked at beside any `--data-root`
DOWNLOAD_ROOTS = (Path("data/coco"), Path("data/nyu"))


def gpus() -> list[str]:
    """GPU names from nvidia-smi, if there is one."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def datasets_found(extra: list[Path]) -> list[tuple[str, Path, bool]]:
    """Each dataset layout a task knows (`Task.layout`) at each root: the `--data-root`s given
    and the quick start's download destinations; and the built-in demo models."""
    from rayinfer.jobs.demo import demo_models
    from rayinfer.jobs.tasks import REGISTRY, get_task

    candidates = []
    for root in [*extra, *(r for r in DOWNLOAD_ROOTS if r not in extra)]:
        for name in REGISTRY:
            layout = get_task(name).layout
            if layout:
                candidates.append((f"{name} at {root}", root / layout[0]))
    candidates += [(f"built-in {task} model", path) for task, path in demo_models().items()]
    return [(name, path, path.exists()) for name, path in candidates]


def report(extra: list[Path]) -> dict[str, Any]:
    import numpy
    import onnxruntime as ort
    import ray

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "ray": ray.__version__,
        "onnxruntime": ort.__version__,
        "numpy": numpy.__version__,
        "providers": ort.get_available_providers(),
        "runtimes": runtimes_info(),
        "cpus_usable": available_cpus(),
        "cpus_total": os.cpu_count(),
        "gpus": gpus(),
        "datasets": [{"name": n, "path": str(p), "found": ok} for n, p, ok in datasets_found(extra)],
    }


def runtimes_info() -> list[dict[str, Any]]:
    """Each registered runtime backend: installed (or why not), its version and the devices it
    sees here."""
    from rayinfer.actors.backends import backends

    out = []
    for b in backends():
        missing = b.installed()
        try:
            devices = [] if missing else list(b.devices())
        except Exception as exc:  # noqa: BLE001 - a backend that cannot list devices says so, doctor goes on
            devices, missing = [], f"cannot list devices: {exc}"
        out.append({"name": b.name, "installed": not missing, "why_not": missing,
                    "version": None if missing else next(iter(b.versions().values()), None), "devices": devices})
    return out


def format_report(info: dict[str, Any]) -> str:
    providers = info["providers"]
    lines = [
        f"python       {info['python']} ({info['platform']})",
        f"ray          {info['ray']}",
        f"onnxruntime  {info['onnxruntime']}",
        f"providers    CPU {'yes' if 'CPUExecutionProvider' in providers else 'NO'}, "
        f"CUDA {'yes' if 'CUDAExecutionProvider' in providers else 'no'}, "
        f"TensorRT {'yes' if 'TensorrtExecutionProvider' in providers else 'no'}",
        "runtimes:",
        *(f"  {r['name']:<12} " + (f"{r['version'] or '-'} (devices: {', '.join(r['devices']) or 'none'})"
                                   if r["installed"] else f"not installed: {r['why_not']}")
          for r in info["runtimes"]),
        f"cpus         {info['cpus_usable']} usable of {info['cpus_total']}",
        f"gpus         {', '.join(info['gpus']) or 'none found (nvidia-smi)'}",
        "datasets and models:",
    ]
    lines += [f"  {'found  ' if d['found'] else 'missing'}  {d['name']}: {d['path']}" for d in info["datasets"]]
    if info["gpus"] and "CUDAExecutionProvider" not in providers:
        lines.append("hint: a GPU is present but this onnxruntime has no CUDA provider: pip install -e '.[gpu]'")
    return "\n".join(lines)
