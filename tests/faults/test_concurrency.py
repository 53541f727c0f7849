"""The same sweep launched twice into one sweep dir (two terminals, a resubmitted array): every job
is trained exactly once, every record completed, every history intact, one W&B run per job."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FAST, history_steps, records, start_cli

pytestmark = pytest.mark.slow


def test_two_identical_sweeps_started_two_seconds_apart(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1,2,3", *FAST, "trainer.steps=40", "logger=wandb", f"hydra.sweep.dir={sweep}"]
    first = start_cli(args, tmp_path)
    time.sleep(2.0)
    second = start_cli(args, tmp_path)
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err1[-2000:], err2[-2000:])

    trained = [line for line in (out1 + out2).splitlines() if ": completed " in line]
    skipped = [line for line in (out1 + out2).splitlines()
               if "running in another process" in line or "already completed, skipped" in line]
    assert len(trained) == 4, out1 + out2  # each job trained by exactly one of the two processes
    assert len(skipped) == 4  # and skipped by the other, which said why
    recs = records(sweep)
    assert len(recs) == 4 and all(r["status"] == "completed" for r in recs.values())
    for name in recs:
        job = sweep / name
        assert history_steps(job) == list(range(41)), name
        assert b"\0" not in (job / "metrics.csv").read_bytes()
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1, name
        assert not (job / "job.lock").exists()
