"""Sweeps through a real Slurm cluster (scripts/slurm_cluster.sh start; .ci/run brings one up).

Skipped with a reason where no cluster answers. Covers: every job's run record, a job cancelled
with scancel and a job that hits its time limit are both recorded as failed without hanging the
sweep, and a timed-out job is requeued by submitit and resumes from its checkpoint.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import BIN, TINY, run_cli


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


CLUSTER_UP = _cluster_up()
if not CLUSTER_UP and os.environ.get("QATLAB_REQUIRE_SLURM"):  # CI brings a cluster up: never skip there
    raise RuntimeError("QATLAB_REQUIRE_SLURM is set but no Slurm cluster answers sinfo")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CLUSTER_UP, reason="no Slurm cluster answering sinfo "
                                                   "(start one with: scripts/slurm_cluster.sh start)")]
SLURM = ["launcher=slurm_cpu", "logger=none"]


def records(sweep):
    return [read_record(p) for p in sweep.rglob("run.json")]


def test_slurm_sweep_runs_every_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "bits=4,16", *TINY, *SLURM, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    recs = records(sweep)
    assert sorted(r["axes"]["bits"] for r in recs) == [4, 16]
    assert all(r["status"] == "completed" for r in recs)
    # They really ran as Slurm array tasks.
    assert all(r["slurm"]["job_id"] and r["slurm"]["array_task_id"] is not None for r in recs)
    assert "| completed |" in (sweep / "summary.md").read_text()


def test_cancelled_job_is_failed_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # Job "steps=8" finishes; "steps=99999" is cancelled with scancel as soon as it trains.
    # (Cancelling an array task that is still pending is not tested: sacct never lists it and
    # submitit then waits for it forever.)
    args = ["-m", "trainer.steps=8,99999", "experiment=smoke", "data.val_tokens=2048", *SLURM,
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([str(BIN / "qatlab"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    cancelled = None
    while time.time() < deadline and cancelled is None and proc.poll() is None:
        for r in records(sweep) if sweep.exists() else []:
            if r["config"]["trainer"]["steps"] == 99999 and r["status"] == "running" and r["slurm"]["job_id"]:
                # <array job>_<task>: a task's own SLURM_JOB_ID may be the array's, and cancelling
                # that would cancel every task.
                subprocess.run(["scancel", f"{r['slurm']['array_job_id']}_{r['slurm']['array_task_id']}"], check=True)
                cancelled = r
                break
        time.sleep(0.5)
    assert cancelled is not None, "the job to cancel never started"
    out, err = proc.communicate(timeout=600)  # must end: no hang on a killed job
    assert proc.returncode == 1, err[-3000:]  # a failed job makes the sweep exit non-zero
    by_steps = {r["config"]["trainer"]["steps"]: r for r in records(sweep)}
    assert by_steps[8]["status"] == "completed"
    assert by_steps[99999]["status"] == "failed"
    assert "killed by Slurm" in by_steps[99999]["error"] and "CANCELLED" in by_steps[99999]["error"]
    assert "1 failed" in out and "1 completed" in out


def test_timed_out_job_without_requeue_is_failed(tmp_path):
    sweep = tmp_path / "sweep"
    # A 1-minute limit with no requeue allowed: submitit's time-limit signal ends the job.
    args = ["-m", "trainer.steps=99999", "experiment=smoke", "data.val_tokens=2048", *SLURM,
            "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30", "hydra.launcher.max_num_timeout=0",
            f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=tmp_path, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    (r,) = records(sweep)
    # Either submitit's time-limit signal ended it ("timed-out too many times") or, when that
    # signal came before the job was running, Slurm killed it at the limit (state TIMEOUT).
    assert r["status"] == "failed" and ("timed-out" in r["error"] or "TIMEOUT" in r["error"]), r["error"]
    assert "1 failed" in result.stdout


def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    """Preemption: Slurm requeues a running job (as `scontrol requeue` does). The new allocation
    runs the same submission, which finds the job's checkpoint and resumes."""
    sweep = tmp_path / "sweep"
    args = ["-m", "trainer.steps=150", "experiment=smoke", "trainer.checkpoint_every=20", "trainer.val_every=0",
            "data.val_tokens=2048", *SLURM, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([str(BIN / "qatlab"), *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(sweep.glob("*/checkpoint.pt")):
        time.sleep(0.5)
    (record,) = records(sweep)
    job_id = record["slurm"]["job_id"]
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    # Slurm holds a requeued job back for a while (BeginTime); release it now.
    for _ in range(60):
        if subprocess.run(["scontrol", "update", f"jobid={job_id}", "starttime=now"], capture_output=True).returncode == 0:
            break
        time.sleep(0.5)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    (r,) = records(sweep)
    assert r["status"] == "completed"
    assert r["resumed_from_step"] and r["resumed_from_step"] >= 20
    assert int(r["slurm"]["restart_count"]) >= 1
