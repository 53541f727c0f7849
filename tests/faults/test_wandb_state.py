"""The W&B run mirrors the record: final results in its summary, the status as a tag, and a
non-zero exit code unless the run completed, whatever ended the job (divergence, a crash, a storage
error, SIGINT or SIGTERM); WANDB_MODE=disabled and logger=none write no W&B files. Checked in the
offline run files themselves (tests/wandb_offline.py reads them)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests import wandb_offline
from tests.faults.conftest import FAST, history_rows, records, run_cli, start_cli, wait_for

pytestmark = pytest.mark.slow


def _run_file(job_dir: Path) -> Path:
    (path,) = job_dir.glob("wandb/offline-run-*/run-*.wandb")
    return path


def _assert_wandb_mirrors(job_dir: Path, r: dict, sweep_tag: str) -> dict:
    """The offline W&B run of `job_dir` says what its record `r` says; returns the run summary."""
    run = _run_file(job_dir)
    assert r["wandb"]["id"] and run.name == f"run-{r['wandb']['id']}.wandb"
    assert wandb_offline.exit_code(run) == (0 if r["status"] == "completed" else 1)
    tags = wandb_offline.tags(run)
    assert {f"status={r['status']}", "bits=16", "optim=muon", f"sweep={sweep_tag}", "experiment=smoke"} <= set(tags)
    assert "status=running" not in tags
    summary = wandb_offline.summary(run)
    assert summary["status"] == r["status"]
    assert summary["params/non_embedding"] == r["params"]["non_embedding"]
    assert summary["data/fingerprint"] == r["data"]["fingerprint"]
    return summary


def test_wandb_state_mirrors_the_record(tmp_path):
    sweep = tmp_path / "sweep"
    # max_loss 0.5 stops the first job at step 0 (diverged); the second completes.
    result = run_cli(["-m", "trainer.max_loss=0.5,100", *FAST, "trainer.steps=6", "logger=wandb",
                      f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, r in records(sweep).items():
        summary = _assert_wandb_mirrors(sweep / name, r, sweep.name)
        if r["status"] == "completed":
            for key in ("val_loss", "val_bpb", "latent_val_loss", "quant_gap", "grid_distance_final"):
                assert summary[f"results/{key}"] == pytest.approx(r["results"][key]), key
            assert summary["results/ptq/4/val_loss"] == pytest.approx(r["results"]["ptq"]["4"]["val_loss"])
        else:
            assert summary["divergence/rule"] == "max_loss"


@pytest.mark.parametrize("sig, code, sweep", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
                         ids=["sigint-sweep", "sigterm-single"])
def test_an_interrupted_run_finishes_its_wandb_run_interrupted(tmp_path, sig, code, sweep):
    # Ctrl-C during the first job of `qatlab -m seed=0,1` left W&B at status=running (its run was
    # finished before the record said interrupted).
    out = tmp_path / "out"
    args = (["-m", "seed=0,1", f"hydra.sweep.dir={out}"] if sweep else [f"hydra.run.dir={out}"])
    proc = start_cli([*args, *FAST, "trainer.steps=100000", "logger=wandb"], tmp_path)
    wait_for(lambda: any(history_rows(d) > 0 for d in [out, *out.glob("*")]) or proc.poll() is not None,
             what="training to start")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    ((name, r),) = records(out).items() if sweep else [("", read_record(out))]
    assert r["status"] == "interrupted" and r["error"] == sig.name
    summary = _assert_wandb_mirrors(out / name, r, out.name)
    assert summary["error"] == sig.name


def _plant_directory(path: Path) -> bool:
    """Make `path` a non-empty folder, so an atomic write onto it fails (IsADirectoryError)."""
    if path.is_file():
        path.unlink(missing_ok=True)  # a checkpoint written first: the next one fails instead
    try:
        path.mkdir()
        (path / "in-the-way").write_text("")
    except FileExistsError:
        pass
    return path.is_dir()


def test_a_job_failing_mid_run_finishes_its_wandb_run_failed(tmp_path):
    # A storage error after the W&B run exists: the checkpoint cannot replace a folder in its place.
    run_dir = tmp_path / "run"
    proc = start_cli([*FAST, "trainer.steps=100000", "trainer.checkpoint_every=20", "logger=wandb",
                      f"hydra.run.dir={run_dir}"], tmp_path)
    # The W&B run is created after the checkpoint was looked for, before training starts.
    wait_for(lambda: list(run_dir.glob("wandb/offline-run-*")) or proc.poll() is not None, what="the W&B run")
    assert _plant_directory(run_dir / "checkpoint.pt")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    r = read_record(run_dir)
    assert r["status"] == "failed" and "IsADirectoryError" in r["error"], r["error"]
    assert (run_dir / "error.txt").exists()
    summary = _assert_wandb_mirrors(run_dir, r, run_dir.name)
    assert "IsADirectoryError" in summary["error"]


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
