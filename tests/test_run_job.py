"""qat_lab.jobs.run_job in process, on experiment=smoke (like lightning-hydra-template's fast_dev_run
tests): the record's lifecycle, the step history, skip-if-completed, divergence, a crash, resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from qat_lab import jobs
from qat_lab.records import read_record

SMOKE = ["experiment=smoke", "trainer.steps=6", "trainer.val_every=3", "trainer.grid_every=3", "data.val_tokens=1024"]


def task_config(job_dir: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.job.override_dirname = ",".join(overrides)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    task = OmegaConf.create({k: v for k, v in cfg.items() if k != "hydra"})
    return task


def steps(job_dir: Path) -> list[int]:
    with open(job_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_a_smoke_job_completes_with_its_record_and_history(tmp_path):
    job = tmp_path / "job"
    rec = jobs.run_job(task_config(job, [*SMOKE, "bits=4"]))
    assert rec["status"] == "completed"
    on_disk = read_record(job)
    assert on_disk["status"] == "completed" and on_disk["results"]["steps_done"] == 6
    assert on_disk["axes"]["bits"] == 4 and on_disk["params"]["quantised_matrices"]
    assert steps(job) == list(range(7))
    rows = list(csv.DictReader(open(job / "metrics.csv")))
    assert rows[3]["grid_distance"] and rows[3]["val_loss"] and not rows[1]["val_loss"]  # measured every 3 steps
    assert float(rows[6]["val_loss"]) == pytest.approx(on_disk["results"]["val_loss"])  # the final evaluation
    # The loss curve: a fixed held-out batch at step 0 (every 10), at the warmdown start 4, after the last update.
    assert [int(r["step"]) for r in rows if r["curve_loss"]] == [0, 4, 6]
    assert float(rows[6]["curve_loss"]) < float(rows[0]["curve_loss"])
    assert not (job / "job.lock").exists()
    # Run again: skipped, record untouched.
    before = (job / "run.json").read_bytes()
    again = jobs.run_job(task_config(job, [*SMOKE, "bits=4"]))
    assert again["status"] == "completed" and (job / "run.json").read_bytes() == before


def test_a_job_held_by_another_live_process_is_skipped(tmp_path):
    from qat_lab.joblock import JobLock

    job = tmp_path / "job"
    other = JobLock(job)
    assert other.acquire() is None
    try:
        assert jobs.run_job(task_config(job, SMOKE))["status"] == "held"
        assert not (job / "run.json").exists()
    finally:
        other.release()


def test_divergence_is_recorded_with_its_rule(tmp_path):
    job = tmp_path / "job"
    rec = jobs.run_job(task_config(job, [*SMOKE, "trainer.max_loss=0.5"]))
    assert rec["status"] == "diverged" and rec["divergence"]["rule"] == "max_loss" and rec["diverged_at_step"] == 0
    assert steps(job) == [0]


def test_a_crash_is_recorded_failed_with_its_traceback(tmp_path, monkeypatch):
    from qat_lab import train

    def boom(*args, **kwargs):
        raise ValueError("planted crash")

    monkeypatch.setattr(train, "collect", boom)
    job = tmp_path / "job"
    failed_before = len(jobs.FAILED)
    rec = jobs.run_job(task_config(job, SMOKE))
    assert rec["status"] == "failed" and rec["error"] == "ValueError: planted crash"
    assert read_record(job)["status"] == "failed"
    assert "planted crash" in (job / "error.txt").read_text()
    assert len(jobs.FAILED) == failed_before + 1


def test_resume_from_a_checkpoint_gives_the_same_run(tmp_path, monkeypatch):
    """Stop a job after its step-4 checkpoint (as a kill would), then run it again: it resumes and
    ends where an uninterrupted run ends, with every history row once."""
    from qat_lab.callbacks import monitor as monitor_mod

    overrides = [*SMOKE, "trainer.steps=8", "trainer.checkpoint_every=4"]
    reference = jobs.run_job(task_config(tmp_path / "ref", overrides))

    original = monitor_mod.TrainingMonitor.on_train_batch_end

    def die_after_checkpoint(self, trainer, pl_module, *args):
        original(self, trainer, pl_module, *args)
        if pl_module.step == 5:
            raise KeyboardInterrupt  # what Ctrl-C would raise

    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", die_after_checkpoint)
    job = tmp_path / "job"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        jobs.run_job(task_config(job, overrides))
    assert read_record(job)["status"] == "interrupted" and (job / "checkpoint.pt").exists()
    monkeypatch.setattr(monitor_mod.TrainingMonitor, "on_train_batch_end", original)
    rec = jobs.run_job(task_config(job, overrides))
    assert rec["status"] == "completed" and rec["resumed_from_step"] == 4
    assert rec["results"]["val_loss"] == pytest.approx(reference["results"]["val_loss"], rel=1e-6)
    assert steps(job) == list(range(9))


def test_accumulated_micro_batches_give_the_same_run(tmp_path):
    """trainer.accumulate_grad_batches splits the batch; the update is the same up to float rounding."""
    whole = jobs.run_job(task_config(tmp_path / "whole", SMOKE))
    split = jobs.run_job(task_config(tmp_path / "split", [*SMOKE, "trainer.accumulate_grad_batches=4"]))
    assert split["status"] == "completed"
    assert split["results"]["val_loss"] == pytest.approx(whole["results"]["val_loss"], rel=1e-4)


def test_lightning_settings_reach_the_trainer(tmp_path, monkeypatch):
    import lightning as L
    from lightning.pytorch.profilers import SimpleProfiler

    from qat_lab import train

    made = []

    class Recorded(L.Trainer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(train.L, "Trainer", Recorded)
    clipped = []
    monkeypatch.setattr(train.torch.nn.utils, "clip_grad_value_", lambda params, v: clipped.append(v))
    rec = jobs.run_job(task_config(tmp_path / "job", [*SMOKE, "trainer.deterministic=true", "trainer.profiler=simple",
                                                      "trainer.grad_clip=0.5", "trainer.grad_clip_algorithm=value"]))
    assert rec["status"] == "completed"
    (trainer,) = made
    assert isinstance(trainer.profiler, SimpleProfiler)
    assert train.torch.are_deterministic_algorithms_enabled()  # what Trainer(deterministic=True) switches on
    train.torch.use_deterministic_algorithms(False)
    assert clipped == [0.5] * 6  # every update clipped by value


def test_a_config_that_no_longer_validates_is_a_failed_record_not_a_crash(tmp_path):
    """The preflight passed it, but the config files changed under a running sweep."""
    job = tmp_path / "job"
    cfg = task_config(job, SMOKE)
    with open_dict(cfg):
        cfg.trainer.steps = 0
    rec = jobs.run_job(cfg)
    assert rec["status"] == "failed" and "trainer.steps=0" in rec["error"]
    assert read_record(job)["status"] == "failed"
