"""The per-job lock (qat_lab.joblock): one holder, stale locks taken, foreign locks never removed."""

import json
import os
import socket
import subprocess
import sys
import time

from qat_lab import joblock
from qat_lab.joblock import LOCK_NAME, JobLock, read_holder


def _plant(job_dir, **info):
    lock = {"host": socket.gethostname(), "pid": os.getpid(), "start": None, "slurm_job": None, "token": "theirs",
            **info}
    (job_dir / LOCK_NAME).write_text(json.dumps(lock))
    return job_dir / LOCK_NAME


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_holder_at_a_time(tmp_path):
    a, b = JobLock(tmp_path), JobLock(tmp_path)
    assert a.acquire() is None and a.owned()
    holder = b.acquire()
    assert holder is not None and holder.pid == os.getpid() and "heartbeat" in holder.describe()
    a.release()
    assert not (tmp_path / LOCK_NAME).exists()
    assert b.acquire() is None
    b.release()


def test_a_dead_holder_on_this_host_is_stale(tmp_path):
    _plant(tmp_path, pid=_dead_pid())
    lock = JobLock(tmp_path)
    assert lock.acquire() is None and lock.owned()
    lock.release()


def test_a_reused_pid_is_stale(tmp_path):
    _plant(tmp_path, start="1")  # our pid, but a process that started at another time
    lock = JobLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


def test_a_live_holder_elsewhere_is_respected_until_its_heartbeat_is_old(tmp_path, monkeypatch):
    path = _plant(tmp_path, host="another-node")
    assert JobLock(tmp_path).acquire() is not None  # fresh heartbeat on another host: held
    old = time.time() - joblock.STALE_S - 60
    os.utime(path, (old, old))
    assert read_holder(path).stale()
    lock = JobLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


def test_the_earlier_incarnation_of_this_slurm_job_is_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    _plant(tmp_path, host="another-node", slurm_job="4242")
    lock = JobLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


def test_release_never_removes_a_lock_that_is_not_ours(tmp_path):
    lock = JobLock(tmp_path)
    assert lock.acquire() is None
    _plant(tmp_path, token="someone-else")  # taken over (only a three-way race could do this)
    assert not lock.owned()
    lock.release()
    assert (tmp_path / LOCK_NAME).exists()


def test_heartbeat_touches_the_lock_and_notices_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setattr(joblock, "HEARTBEAT_S", 0.05)
    lock = JobLock(tmp_path)
    assert lock.acquire() is None
    path = tmp_path / LOCK_NAME
    os.utime(path, (1, 1))
    time.sleep(0.3)
    assert path.stat().st_mtime > 1e9  # touched again
    _plant(tmp_path, token="someone-else")
    time.sleep(0.3)
    assert lock.lost
    lock.release()
