"""A blown-up run is recorded as diverged (with the rule that fired), never averaged in as
completed, and the sweep goes on."""

from __future__ import annotations

import math

import pytest

from qat_lab.records import read_record
from tests.faults.conftest import history_steps, records, run_cli

pytestmark = pytest.mark.slow


def test_lr_blow_up_on_the_default_preset_is_diverged(tmp_path):
    """`qatlab lr_mult=1000`: the loss sits far above ln(256) (the softcap keeps it below 65.5,
    so the old fixed cap of 100 never fired and the run was recorded completed at ~40 bpb)."""
    result = run_cli(["lr_mult=1000", "logger=none", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]  # a diverged run is a result, not a failure
    r = read_record(tmp_path / "run")
    assert r["status"] == "diverged"
    assert r["divergence"]["rule"] == "worse-than-uniform"
    assert r["diverged_at_step"] == r["divergence"]["step"]
    grace = max(20, round(0.1 * r["axes"]["steps"]))
    assert grace + 4 <= r["diverged_at_step"] < r["axes"]["steps"]  # after the grace period and 5 steps above
    assert r["results"]["train_loss_final"] > math.log(256)
    assert "val_loss" not in r["results"]  # no final evaluation: nothing to average in
    assert history_steps(tmp_path / "run") == list(range(r["diverged_at_step"] + 1))
    assert "diverged at step" in result.stdout and "ln(vocab)" in result.stdout


def test_sweep_goes_on_after_a_divergence(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "lr_mult=1000,1", "trainer.steps=40", "logger=none", f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    by_lr = {r["axes"]["lr_mult"]: r for r in records(sweep).values()}
    assert by_lr[1000]["status"] == "diverged" and by_lr[1]["status"] == "completed"
    assert "1 diverged" in result.stdout and "1 completed" in result.stdout
