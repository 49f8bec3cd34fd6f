"""Ends an embedded Ray's processes when the driver that started it dies.

`rayinfer run` starts Ray inside its own process. Killed with SIGKILL, the driver takes
gcs_server and the raylet with it, but Ray's agents (dashboard agent, runtime-env
agent, whose process titles no longer name the session) can stay alive, re-parented
to init. `watch()` starts this module as a small process in its own session: it keeps
the list of the driver's descendants up to date (every `POLL_S`), and once the driver's
PID is gone it SIGKILLs every listed process that is still the same process (same start
time, so a reused PID is never hit). It ends by itself once the driver has no
descendant left (after a normal `ray.shutdown()`). Linux only (/proc); elsewhere a no-op.

    python -m rayinfer.jobs.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> dict[int, int]:
    """Every live descendant of `pid`: pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[1] != "Z":
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[2]
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p != os.getpid() and p not in out:
            out[p] = starts[p]
            todo.extend(children.get(p, []))
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] != "Z"


def reap(driver_pid: int) -> None:
    known: dict[int, int] = descendants(driver_pid)
    while alive(driver_pid):
        current = descendants(driver_pid)
        if not current and known:
            return  # Ray was shut down normally
        known.update(current)
        known = {p: t for p, t in known.items() if (st := _stat(p)) is not None and st[2] == t}
        time.sleep(POLL_S)
    for pid, start in known.items():
        st = _stat(pid)
        if st is not None and st[2] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def watch() -> None:
    """Start the reaper for this process and the Ray it started."""
    if not Path("/proc").is_dir():
        return
    subprocess.Popen([sys.executable, "-m", "rayinfer.jobs.reaper", str(os.getpid())],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


if __name__ == "__main__":
    reap(int(sys.argv[1]))
