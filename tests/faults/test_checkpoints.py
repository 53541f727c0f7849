"""Checkpoints are untrusted input: a planted pickle runs no code, a truncated or foreign
checkpoint is set aside (one line naming it) and the job completes from step 0."""

from __future__ import annotations

import signal

import pytest
import torch

from qat_lab.records import read_record
from tests.faults.conftest import FAST, history_rows, history_steps, run_cli, start_cli, wait_for

pytestmark = pytest.mark.slow


class _Planted:
    """Unpickling this runs code: it touches a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("every", [0, 5])
def test_planted_pickle_runs_no_code(tmp_path, every):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"format": "qatlab-checkpoint/1", "payload": _Planted(marker)}, run_dir / "checkpoint.pt")
    result = run_cli([*FAST, f"trainer.checkpoint_every={every}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not marker.exists()
    r = read_record(run_dir)
    assert r["status"] == "completed" and r["resumed_from_step"] is None
    if every:  # read (weights_only: refused), set aside, never loaded again
        assert "cannot be read" in result.stdout and "set aside as checkpoint.pt.unusable-" in result.stdout
        assert list(run_dir.glob("checkpoint.pt.unusable-*"))
    assert history_steps(run_dir) == list(range(21))


def killed_after_a_checkpoint(tmp_path, run_dir) -> list[str]:
    """Start a 60-step run that checkpoints every 10 steps, SIGKILL it after its first checkpoint
    and some history; returns its command line (to run it again)."""
    args = [*FAST, "trainer.steps=60", "trainer.checkpoint_every=10", f"hydra.run.dir={run_dir}"]
    proc = start_cli(args, tmp_path)
    wait_for(lambda: (run_dir / "checkpoint.pt").exists() and history_rows(run_dir) > 25, what="a checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return args


def test_truncated_checkpoint_is_set_aside_and_the_job_completes(tmp_path):
    run_dir = tmp_path / "run"
    args = killed_after_a_checkpoint(tmp_path, run_dir)
    ckpt = run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])  # half-written, as a kill mid-save would leave

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    lines = [line for line in again.stdout.splitlines() if "checkpoint.pt" in line]
    assert len(lines) == 1 and "cannot be read" in lines[0] and "starting from step 0" in lines[0], again.stdout
    r = read_record(run_dir)
    assert r["status"] == "completed" and r["resumed_from_step"] is None
    assert history_steps(run_dir) == list(range(61))  # rewritten from step 0, every step once


def test_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    run_dir = tmp_path / "run"
    args = killed_after_a_checkpoint(tmp_path, run_dir)
    again = run_cli([*args, "optim.matrix_lr=0.03"], cwd=tmp_path)  # a different run in the same dir
    assert again.returncode == 0, again.stderr[-2000:]
    assert "was written by another configuration" in again.stdout
    assert read_record(run_dir)["resumed_from_step"] is None
