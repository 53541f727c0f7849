"""Data-parallel training through Lightning (DDP on two CPU processes, gloo): one job dir, one run
record, one history and one W&B run, whatever the number of processes."""

from __future__ import annotations

import csv

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def test_two_process_ddp_writes_one_of_everything(tmp_path):
    run_dir = tmp_path / "run"
    # Late QAT too: the switch is a buffer, broadcast from rank 0, so every rank trains the same way.
    result = run_cli(["experiment=smoke", "trainer.steps=10", "data.val_tokens=2048", "logger=wandb", "bits=4",
                      "quant.start=0.5", *DDP, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    r = read_record(run_dir)
    assert r["status"] == "completed"
    assert r["tokens"]["world_size"] == 2 and r["results"]["steps_done"] == 10
    assert r["tokens"]["train"] == 10 * 2 * r["axes"]["batch_size"] * r["axes"]["seq_len"]
    history = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(row["step"]) for row in history] == list(range(11))
    assert [row["qat_on"] for row in history[:10]] == ["0"] * 5 + ["1"] * 5
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert result.stdout.count("completed") == 1  # one summary line: rank 1 prints nothing
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun_outputs").exists()


def test_multi_device_local_sweep_is_refused_before_work(tmp_path):
    result = run_cli(["-m", "bits=4,16", "experiment=smoke", *DDP, "hydra.sweep.dir=sweep"], cwd=tmp_path)
    assert result.returncode == 2
    assert "tasks_per_node" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweep").exists()
