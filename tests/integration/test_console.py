"""What a researcher sees: progress lines on the console and in each job's qatlab.log, a sweep's
"job k/n" with an ETA, and none of the known third-party noise."""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import TINY, run_cli

pytestmark = pytest.mark.slow
NOISE = ("LeafSpec", "The anonymous setting has no effect", "Mismatch dtype", "Cannot dispatch to fused")


def test_progress_lines_sweep_eta_and_a_quiet_console(tmp_path):
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # W&B's own warnings must not show
    result = run_cli(["-m", "seed=0,1", *TINY, "trainer.log_every=2", "logger=wandb", "trainer.precision=bf16-mixed",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in out, noise
    assert "job 1/2" in result.stdout and "job 2/2" in result.stdout and "left)" in result.stdout  # ETA from job 1
    for job in sweep.glob("seed=*"):
        log = (job / "qatlab.log").read_text()
        steps = [line for line in log.splitlines() if ": step " in line and "tok/s" in line and "ETA" in line]
        assert len(steps) == 4, log  # steps 2, 4, 6, 8 of 8
        assert "completed" in log


def test_quiet_mode_keeps_only_the_result_lines(tmp_path):
    result = run_cli(["-q", *TINY, "trainer.log_every=2", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": step " not in result.stdout and ": completed " in result.stdout
