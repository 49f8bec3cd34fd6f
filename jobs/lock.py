"""One writer per run: the lock a job takes on its output before writing anything.

    lock = run_lock(output_url, storage_options)
    lock.acquire()          # RunLockedError (a SetupError: one line, exit 2) naming the holder
    try:
        ...                 # the job: prepare, commit shards, evaluate, report
    finally:
        lock.release()

The lock is `OUTPUT/.rayinfer.lock`, a small JSON body naming its holder: host, pid,
start time, a random token, and when the holder last renewed it. Two jobs on one output
would otherwise both commit shards there and each evaluate a mix of both.

- **A folder** (`LocalLock`): the file is created and held with `fcntl.flock`, which the
  kernel releases when the holding process ends, however it ends (SIGKILL included). A job
  that gets the flock on a file that still names another holder finds a stale lock (that
  holder is gone) and takes it over with a warning. After taking the flock the path is
  checked to still be the file locked (a holder releasing unlinks it first), so two jobs
  never hold two files under one name.
- **S3** (`ObjectLock`): the object is created only if absent (`If-None-Match: *`, S3's
  conditional write), then renewed every `LEASE_S / 4` seconds by a compare-and-swap on its
  ETag (`If-Match`), so a holder whose lease was taken over learns it. A lock is stale when
  its holder has not renewed it for `LEASE_S` seconds, or at once when it names a process of
  this host that is gone; it is taken over with the same compare-and-swap, which only one
  of two contenders can win.
- **GCS**: pyarrow's client (the one this project reads GCS with) sends no preconditions,
  so the object is checked, written and read back: two jobs that start within one round
  trip of each other can both take it. The lease and takeover are as for S3.

`holder(url)` reads a lock without taking it (`rayinfer eval` says a run is being written).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from rayinfer.datasets.base import SetupError
from rayinfer.datasets.storage import Location, is_remote, obstore_text, storage_error

log = logging.getLogger(__name__)

LOCK_NAME = ".rayinfer.lock"
#: seconds a remote holder's lock stays valid without renewal
LEASE_S = 60.0


class RunLockedError(SetupError):
    """Another job holds the output: one line naming it, exit 2."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a pid
    reused by a later process has another; None where there is no such process (or no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(body: dict[str, Any]) -> bool:
    """Whether the holder a lock body names is a running process of this host (False for a
    process that is gone, or whose pid now belongs to another process)."""
    pid = body.get("pid")
    if not isinstance(pid, int):
        return False
    start = _process_start(pid)
    return start is not None and start == body.get("pid_start", start)


def refused(body: dict[str, Any], where: str) -> RunLockedError:
    """The one line a job that finds the output held stops with."""
    return RunLockedError(f"{describe(body, where)}; wait for it or choose another --output")


def describe(body: dict[str, Any], where: str) -> str:
    return (f"{where} is being written by pid {body.get('pid')} on host {body.get('host')} since "
            f"{body.get('started', '?')}")


def _new_body() -> dict[str, Any]:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), "renewed": now,
            "token": secrets.token_hex(8)}


class LocalLock:
    """The lock of a run in a folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self._fd: int | None = None
        self._made_root = False

    def acquire(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise SetupError(f"output {self.root} exists and is not a folder")
        self._made_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    body = _read_fd(fd)
                    if not body:  # the holder writes it just after taking the flock
                        time.sleep(0.2)
                        body = _read_fd(fd)
                    os.close(fd)
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    self._undo_root()
                    raise refused(body, str(self.root))
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)  # the holder released (unlinked) it between our open and our flock: again
            before = _read_fd(fd)
            if before.get("pid"):
                log.warning("%s: taking over the lock of pid %s on host %s (since %s): that process is gone",
                            self.root, before.get("pid"), before.get("host"), before.get("started"))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_new_body()).encode(), 0)
            self._fd = fd
        except OSError as exc:
            self._undo_root()
            raise SetupError(f"cannot lock {self.path}: {exc.strerror or exc}") from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # before the flock goes: see acquire's inode check
        finally:
            os.close(self._fd)
            self._fd = None
        self._undo_root()

    def _undo_root(self) -> None:
        """The output folder this lock created, removed again if nothing else went into it."""
        if self._made_root:
            try:
                self.root.rmdir()
            except OSError:
                pass


def _read_fd(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        body = json.loads(data) if data else {}
        return body if isinstance(body, dict) else {}
    except (OSError, ValueError):
        return {}


class ObjectLock:
    """The lock of a run in object storage (see the module docstring)."""

    def __init__(self, root: Location, lease_s: float = LEASE_S) -> None:
        self.root = root
        self.object = root / LOCK_NAME
        self.lease_s = lease_s
        self._body: dict[str, Any] | None = None
        self._version: str | None = None  # the ETag of what we last wrote (S3)
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- the store's operations: S3 with preconditions, others checked and read back ---------
    def _key(self) -> str:
        return self.object._key.partition("/")[2]

    def _get(self) -> tuple[dict[str, Any], str | None] | None:
        """(the lock's body, its version) or None when there is none."""
        try:
            if self.object.scheme == "s3":
                import obstore
                import obstore.exceptions as oe

                try:
                    got = obstore.get(self.object._s3, self._key())
                    data, version = got.bytes().to_bytes(), got.meta.get("e_tag")
                except oe.NotFoundError:
                    return None
                except oe.BaseError as exc:
                    raise _one_line(exc) from None
            else:
                data, version = self.object.read_bytes(), None
        except FileNotFoundError:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        return (body if isinstance(body, dict) else {}), version

    def _put(self, body: dict[str, Any], over: tuple[dict[str, Any], str | None] | None) -> bool:
        """Write the lock: only if absent (`over` None), else only over the lock `over` (its
        body and version) as found; False when another writer got there first."""
        data = json.dumps(body).encode()
        if self.object.scheme == "s3":
            import obstore
            import obstore.exceptions as oe

            try:
                mode: Any = "create" if over is None else {"e_tag": over[1]}
                self._version = obstore.put(self.object._s3, self._key(), data, mode=mode)["e_tag"]
                return True
            except (oe.AlreadyExistsError, oe.PreconditionError):
                return False
            except oe.BaseError as exc:
                raise _one_line(exc) from None
        current = self._get()
        if (current is not None) if over is None else (current is None or current[0] != over[0]):
            return False
        self.object.write_bytes(data)
        time.sleep(0.2)  # then read back: a contender that wrote in between wins, and we see it
        back = self._get()
        return back is not None and back[0].get("token") == body.get("token")

    # -- the protocol -----------------------------------------------------------------------
    def acquire(self) -> None:
        try:
            self._acquire()
        except OSError as exc:
            raise SetupError(f"cannot lock {self.object}: {storage_error(exc)}") from None

    def _acquire(self) -> None:
        body = _new_body()
        self._body = body
        if self._put(body, None):
            self._start_renewing()
            return
        found = self._get()
        if found is None:  # released between our two requests
            if self._put(body, None):
                self._start_renewing()
                return
            found = self._get() or ({}, None)
        current = found[0]
        if not self._stale(current):
            raise refused(current, self.root.url)
        if not self._put(body, found):
            current = (self._get() or ({}, None))[0]
            raise refused(current, self.root.url)
        why = "its lease expired" if time.time() - float(current.get("renewed", 0)) > self.lease_s else "that process is gone"
        log.warning("%s: taking over the lock of pid %s on host %s (since %s): %s", self.root.url, current.get("pid"),
                    current.get("host"), current.get("started"), why)
        self._start_renewing()

    def _stale(self, body: dict[str, Any]) -> bool:
        if time.time() - float(body.get("renewed", 0) or 0) > self.lease_s:
            return True
        return body.get("host") == socket.gethostname() and not _alive(body)

    def _start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew_loop, name="rayinfer-lock", daemon=True)
        self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                body = {**(self._body or {}), "renewed": time.time()}
                if not self._put(body, (self._body or {}, self._version)):
                    log.error("%s: another job took the lock over; this job's results there are no longer its own",
                              self.root.url)
                    return
                self._body = body
            except OSError as exc:  # the store unreachable for a moment: the lease covers it
                log.warning("%s: renewing the lock failed: %s", self.root.url, storage_error(exc))

    def release(self) -> None:
        if self._body is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(10)
        try:
            current = self._get()
            if current is not None and current[0].get("token") == self._body.get("token"):
                self.object.delete()
        except OSError as exc:
            log.warning("%s: the lock was not removed (%s); the next job takes it over", self.object, storage_error(exc))
        self._body = None


def _one_line(exc: BaseException) -> OSError:
    """obstore's error as an OSError of one line."""
    return OSError(" ".join(obstore_text(exc).split()[:40]))


def run_lock(url: str, options: dict[str, Any] | None = None) -> LocalLock | ObjectLock:
    """The lock of the run at `url`: a folder, or a prefix in object storage."""
    return ObjectLock(Location(url, options)) if is_remote(url) else LocalLock(url)


def holder(url: str, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The live holder of the run at `url` (its lock's body), or None: for readers that take
    no lock (`rayinfer eval`, `compare`)."""
    if is_remote(url):
        lock = ObjectLock(Location(url, options))
        try:
            found = lock._get()
        except OSError:
            return None
        return found[0] if found and not lock._stale(found[0]) else None
    try:
        body = json.loads((Path(url) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None  # no lock: released, or never taken
    if not isinstance(body, dict):
        return None
    # a reader takes no flock (it would make a starting job's attempt fail): the holder's pid
    # says whether it is alive on this host; on another host (a shared file system) it is taken
    # to be
    return body if body.get("host") != socket.gethostname() or _alive(body) else None
