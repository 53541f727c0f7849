"""A job killed mid-run (as Slurm does at a time limit) resumes from its checkpoint when re-run,
and ends exactly where an uninterrupted run ends: batch t depends only on (seed, t)."""

from __future__ import annotations

import csv
import signal
import subprocess
import time

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import BIN, run_cli

pytestmark = pytest.mark.slow
ARGS = ["experiment=smoke", "trainer.steps=60", "trainer.checkpoint_every=10", "trainer.val_every=0",
        "data.val_tokens=2048"]


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_killed_job_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(BIN / "qatlab"), *ARGS, f"hydra.run.dir={killed}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        if (killed / "checkpoint.pt").exists() and (killed / "metrics.csv").exists() and len(rows(killed / "metrics.csv")) > 25:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up, like Slurm's SIGKILL
    proc.wait(timeout=30)
    assert read_record(killed)["status"] == "running"

    again = run_cli([*ARGS, f"hydra.run.dir={killed}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from step" in again.stdout
    resumed = read_record(killed)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] >= 20
    assert not (killed / "checkpoint.pt").exists()
    assert [int(r["step"]) for r in rows(killed / "metrics.csv")] == list(range(61))

    reference = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    assert reference.returncode == 0
    ref = read_record(tmp_path / "reference")
    assert resumed["results"]["val_loss"] == pytest.approx(ref["results"]["val_loss"], rel=1e-6)
    ref_rows = rows(tmp_path / "reference" / "metrics.csv")
    assert [r["lr/muon/matrices"] for r in rows(killed / "metrics.csv")] == [r["lr/muon/matrices"] for r in ref_rows]
