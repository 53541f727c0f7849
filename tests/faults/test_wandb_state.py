"""The W&B run mirrors the record: final results in its summary, the status as a tag, and a
non-zero exit code unless the run completed; WANDB_MODE=disabled and logger=none write no W&B
files. Checked in the offline run files themselves (tests/wandb_offline.py reads them)."""

from __future__ import annotations

import pytest

from tests import wandb_offline
from tests.faults.conftest import FAST, records, run_cli

pytestmark = pytest.mark.slow


def _run_file(job_dir):
    (path,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def test_wandb_state_mirrors_the_record(tmp_path):
    sweep = tmp_path / "sweep"
    # max_loss 0.5 stops the first job at step 0 (diverged); the second completes.
    result = run_cli(["-m", "trainer.max_loss=0.5,100", *FAST, "trainer.steps=6", "logger=wandb",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, r in records(sweep).items():
        run = _run_file(sweep / name)
        assert wandb_offline.exit_code(run) == (0 if r["status"] == "completed" else 1)
        tags = wandb_offline.tags(run)
        assert {f"status={r['status']}", "bits=16", "optim=muon", f"sweep={sweep.name}", "experiment=smoke"} <= set(tags)
        summary = wandb_offline.summary(run)
        assert summary["status"] == r["status"]
        assert summary["params/non_embedding"] == r["params"]["non_embedding"]
        assert summary["data/fingerprint"] == r["data"]["fingerprint"]
        if r["status"] == "completed":
            for key in ("val_loss", "val_bpb", "latent_val_loss", "quant_gap", "grid_distance_final"):
                assert summary[f"results/{key}"] == pytest.approx(r["results"][key]), key
            assert summary["results/ptq/4/val_loss"] == pytest.approx(r["results"]["ptq"]["4"]["val_loss"])
        else:
            assert summary["divergence/rule"] == "max_loss"


@pytest.mark.parametrize("how", [{"env": {"WANDB_MODE": "disabled"}, "args": ["logger=wandb"]},
                                 {"env": {}, "args": ["logger=none"]}])
def test_disabled_wandb_writes_no_wandb_files(tmp_path, how):
    run_dir = tmp_path / "run"
    result = run_cli([*FAST, "trainer.steps=4", *how["args"], f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                     env=how["env"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("*.wandb"))
    r = records(tmp_path)["run"]
    assert r["status"] == "completed" and r["wandb"]["id"] is None and r["wandb"]["mode"] == "disabled"
