"""SIGINT, SIGTERM and SIGKILL during a single run and during a sweep: exit codes, records, and a
re-run that finishes every job exactly once with no gap in its history."""

from __future__ import annotations

import signal

import pytest

from qat_lab.records import completed_record, read_record
from tests.faults.conftest import FAST, history_rows, history_steps, records, run_cli, start_cli, wait_for

pytestmark = pytest.mark.slow
LONG = [*FAST, "trainer.steps=100000"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_a_single_run(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = start_cli([*LONG, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for(lambda: history_rows(run_dir) > 0 or proc.poll() is not None, what="training to start")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    r = read_record(run_dir)
    assert r["status"] == "interrupted" and r["error"] == sig.name
    assert completed_record(run_dir) is None  # a re-run does not skip it
    assert "Traceback" not in err
    assert f"stopped by {sig.name}" in err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_a_sweep_and_a_rerun_finishes_every_job_once(tmp_path, sig, code):
    sweep = tmp_path / "sweep"
    # Three jobs of 60 steps with checkpoints every 10: the first is signalled mid-run.
    args = ["-m", "seed=0,1,2", *FAST, "trainer.steps=60", "trainer.checkpoint_every=10", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(args, tmp_path)
    wait_for(lambda: any(history_rows(d) > 25 for d in sweep.glob("*")) if sweep.exists() else False,
             what="the first job to pass a checkpoint")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    recs = records(sweep)
    assert [r["status"] for r in recs.values()] == ["interrupted"]  # the sweep stopped: no later job started
    assert [r["error"] for r in recs.values()] == [sig.name]
    assert "Traceback" not in err and f"stopped by {sig.name}" in err

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout
    recs = records(sweep)
    assert len(recs) == 3 and all(r["status"] == "completed" for r in recs.values())
    for name in recs:
        assert history_steps(sweep / name) == list(range(61)), name  # every step exactly once

    third = run_cli(args, cwd=tmp_path)  # nothing left to do: every job is skipped, none trains twice
    assert third.returncode == 0 and third.stdout.count("already completed, skipped") == 3


@pytest.mark.parametrize("sweep", [True, False], ids=["sweep", "single"])
def test_sigkill_leaves_a_running_record_and_a_rerun_resumes(tmp_path, sweep):
    out = tmp_path / "out"
    where = ["-m", "seed=0,1", f"hydra.sweep.dir={out}"] if sweep else [f"hydra.run.dir={out}"]
    args = [*where, *FAST, "trainer.steps=60", "trainer.checkpoint_every=10"]
    proc = start_cli(args, tmp_path)
    wait_for(lambda: any(history_rows(d) > 25 for d in [out, *out.glob("*")]) or proc.poll() is not None,
             what="the first job to pass a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (killed,) = records(out).values()
    assert killed["status"] == "running"  # nothing can record a SIGKILL; the lock says who held the job

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout  # the dead holder's lock was stale, the checkpoint good
    recs = records(out)
    assert len(recs) == (2 if sweep else 1) and all(r["status"] == "completed" for r in recs.values())
    resumed = [r for r in recs.values() if r["resumed_from_step"]]
    assert len(resumed) == 1 and resumed[0]["resumed_from_step"] >= 20
    for job_dir in ([out / name for name in recs] if sweep else [out]):
        assert history_steps(job_dir) == list(range(61)), job_dir.name  # every step exactly once
        assert not (job_dir / "job.lock").exists() and not (job_dir / "checkpoint.pt").exists()
