"""iEF / EF / SF through the real CLI: a short QAT run of each lowers the loss and completes, and a
batch over the memory budget fails before training with a clear error."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def train_losses(job_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(job_dir / "metrics.csv")))
    return [float(r["train_loss"]) for r in rows if r["train_loss"] != ""]


def test_ief_ef_sf_runs_lower_the_loss_at_4_bits(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "optim=ief,ef,sf", "bits=4", *TINY, "trainer.steps=12", f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    recs = {r["axes"]["optim"]: r for r in map(read_record, sweep.rglob("run.json"))}
    assert sorted(recs) == ["ef", "ief", "sf"]
    for mode, r in recs.items():
        assert r["status"] == "completed", (mode, r["error"])
        assert r["axes"]["bits"] == 4 and r["results"]["steps_done"] == 12
        losses = train_losses(Path(r["job_dir"]))
        assert len(losses) == 12
        assert losses[-1] < losses[0] - 0.5, (mode, losses)
        # the per-step LR of the one group is logged like any optimiser's, and follows the schedule
        rows = list(csv.DictReader(open(Path(r["job_dir"]) / "metrics.csv")))
        assert float(rows[11][f"lr/{mode}/all"]) < float(rows[0][f"lr/{mode}/all"])


def test_batch_over_the_memory_budget_fails_before_any_job_starts(tmp_path):
    sweep = tmp_path / "sweep"
    # cpu-xs at batch 32: J alone is 14 MB, so 20 MB cannot hold a stored J but fits recompute mode.
    # The recompute job of the same sweep fits; it must not start either (preflight checks every job).
    result = run_cli(["-m", "optim=ief", "optim.memory_budget_mb=20", "optim.jacobian=recompute,store", *TINY, f"hydra.sweep.dir={sweep}"],
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("qatlab: error:")]
    assert len(errors) == 1
    assert errors[0].startswith("qatlab: error: optim.memory_budget_mb=20 is too small for optim=ief on batches of 32 x 128")
    assert "optim.jacobian=recompute" in errors[0]
    assert not sweep.exists()  # nothing was launched


def test_the_suggested_recompute_mode_fits_the_same_budget_and_trains(tmp_path):
    # Batch 8 keeps the recomputed Gram cheap (chunks of 1: 36 per-sequence passes a step).
    small = ["optim=ief", "optim.memory_budget_mb=12", "data.batch_size=8", *TINY, "trainer.steps=4"]
    stored = run_cli([*small, "optim.jacobian=store", f"hydra.run.dir={tmp_path / 'stored'}"], cwd=tmp_path)
    assert stored.returncode == 2 and "optim.jacobian=recompute" in stored.stderr, stored.stderr[-3000:]
    run_dir = tmp_path / "run"
    result = run_cli([*small, "optim.jacobian=recompute", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    r = read_record(run_dir)
    assert r["status"] == "completed"
    losses = train_losses(run_dir)
    assert len(losses) == 4 and losses[-1] < losses[0]
