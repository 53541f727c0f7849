"""One training per job, however many launches reach it: an exclusive lock file in the job dir.

The same sweep started twice (two terminals, a resubmitted Slurm array) reaches every job twice.
Before a job writes anything it takes `job.lock`; a second process that finds it held by a live
holder skips the job and says who holds it. The lock is a small JSON file (host, pid, the pid's
start time, Slurm job id, a random token) created with link(2) from a private temp file, which
is atomic on local filesystems and on NFS. Its mtime is the heartbeat: a daemon thread touches it
every HEARTBEAT_S seconds while the job runs.

A lock is stale (its holder is gone) and may be taken when
- the holder ran on this host and its process no longer exists (or the pid now belongs to a
  process that started at another time: pid reuse);
- the holder is this very Slurm job, i.e. a requeued job's earlier incarnation, which Slurm ended
  before it started this one;
- otherwise (another host), its heartbeat is older than STALE_S, measured against this
  filesystem's own clock (a probe file's mtime), so clock skew between nodes does not matter.

A stale lock is first renamed to a unique name: of two processes taking it at once only one
rename succeeds. If the file renamed turns out to be a fresh lock (someone took the stale one a
moment before), it is linked back. The holder checks its token at every heartbeat; were it ever
to find another (only a three-way race could do that), `lost` is set and the job does not record
its result as completed. Release removes the file only if it still holds our token.

HEARTBEAT_S and STALE_S can be set through QATLAB_LOCK_HEARTBEAT_S and QATLAB_LOCK_STALE_S.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "job.lock"
HEARTBEAT_S = float(os.environ.get("QATLAB_LOCK_HEARTBEAT_S", 30))
STALE_S = float(os.environ.get("QATLAB_LOCK_STALE_S", 600))


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the comm field may contain spaces and ')'


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _process_start(pid)
    return start is None or now is None or now == start


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


@dataclass
class Holder:
    """Who holds a lock, as its file says."""

    host: str
    pid: int
    start: str | None
    slurm_job: str | None
    token: str
    age_s: float
    """Seconds since the last heartbeat, on the filesystem's clock."""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, heartbeat {self.age_s:.0f} s ago"

    def stale(self) -> bool:
        if self.host == socket.gethostname():
            return not _alive(self.pid, self.start)
        if self.slurm_job is not None and self.slurm_job == _slurm_job():
            return True
        return self.age_s > STALE_S


def _fs_now(directory: Path) -> float:
    """The filesystem's idea of now (what a heartbeat's mtime is compared with)."""
    probe = directory / f".lockclock.{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
        return probe.stat().st_mtime
    except OSError:
        return time.time()
    finally:
        probe.unlink(missing_ok=True)


def read_holder(path: Path) -> Holder | None:
    """The holder of the lock at `path`, or None if there is no lock. A lock that cannot be parsed
    (cut short by a crash) counts as held by nobody alive once its heartbeat is stale."""
    try:
        raw, mtime = path.read_text(), path.stat().st_mtime
    except FileNotFoundError:
        return None
    age = max(0.0, _fs_now(path.parent) - mtime)
    try:
        info = json.loads(raw)
        return Holder(str(info["host"]), int(info["pid"]), info.get("start"), info.get("slurm_job"),
                      str(info["token"]), age)
    except (ValueError, KeyError, TypeError):
        return Holder("?", -1, None, None, "", age)


class JobLock:
    """The lock of one job dir.

        lock = JobLock(job_dir)
        holder = lock.acquire()      # None: we hold it; else who does
        ...
        lock.release()
    """

    def __init__(self, job_dir: str | Path):
        self.path = Path(job_dir) / LOCK_NAME
        self.token = uuid.uuid4().hex
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> str:
        pid = os.getpid()
        return json.dumps({"host": socket.gethostname(), "pid": pid, "start": _process_start(pid),
                           "slurm_job": _slurm_job(), "token": self.token,
                           "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"

    def _create(self) -> bool:
        # Not qat_lab.atomic: taking a lock must fail when one exists, which os.link gives and a
        # rename (it replaces) does not; a lock cut short by a crash is stale once its heartbeat is.
        tmp = self.path.with_name(f".{LOCK_NAME}.{self.token}")
        tmp.write_text(self._content())
        try:
            os.link(tmp, self.path)  # atomic: fails if a lock exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _take_stale(self, stale: Holder) -> None:
        aside = self.path.with_name(f".{LOCK_NAME}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process took it first
        try:
            if json.loads(aside.read_text()).get("token", "") != stale.token:
                try:  # we moved a fresh lock: put it back
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
        except ValueError:
            pass  # an unparsable (stale) lock: drop it
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self) -> Holder | None:
        """Take the lock; returns None on success, else the live holder (the job must be skipped)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                self.held = True
                self._start_heartbeat()
                return None
            holder = read_holder(self.path)
            if holder is None:
                continue  # released in between: try again
            if not holder.stale():
                return holder
            self._take_stale(holder)
        holder = read_holder(self.path)
        return holder or Holder("?", -1, None, None, "", 0.0)

    def owned(self) -> bool:
        """True while the lock file still carries our token."""
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, ValueError):
            return False

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                if not self.owned():
                    self.lost = True
                    return
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a full or flaky disk: the next beat tries again

        self._thread = threading.Thread(target=beat, name=f"joblock:{self.path.parent.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held and self.owned():
            self.path.unlink(missing_ok=True)
        self.held = False
