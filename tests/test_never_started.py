"""The record the Slurm launcher writes for a job killed before it started (records.content).

It is read off the composed config alone (no RunSpec: the launcher stays clear of the config
layer), so it must agree with what the job itself would have recorded on every axis it states,
and its missing axes must not add columns to the sweep table.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import OmegaConf

from qat_lab import summary
from qat_lab.config import build_spec
from qat_lab.records import job_identity, never_started_record, new_record


def _compose(overrides: list[str]):
    with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        return hydra.compose("config", overrides=overrides)


def _ident(tmp_path: Path, name: str, num: int) -> dict:
    return job_identity(tmp_path / name, tmp_path, name, num)


def test_never_started_record_states_the_axes_its_job_would_have(tmp_path: Path):
    cfg = _compose(["bits=4", "warmdown=0.1", "trainer.steps=99999", "logger=none"])
    record = never_started_record(cfg, _ident(tmp_path, "bits=4", 0), "killed by Slurm (state CANCELLED)")
    assert record["status"] == "failed" and record["error"] == "killed by Slurm (state CANCELLED)"
    assert record["finished_at"] is not None and record["wandb"]["mode"] == "disabled"
    assert record["config"] == OmegaConf.to_container(cfg, resolve=True)
    expected = build_spec(cfg).axes()
    assert record["axes"]["steps"] == 99999
    assert all(expected[k] == v for k, v in record["axes"].items()), (record["axes"], expected)


def test_a_token_budget_leaves_steps_unstated(tmp_path: Path):
    cfg = _compose(["trainer.tokens_per_param=20"])
    assert "steps" not in never_started_record(cfg, _ident(tmp_path, "x", 0), "killed")["axes"]


def test_its_missing_axes_add_no_column_to_the_sweep_table(tmp_path: Path):
    ran = [_compose([f"bits={b}", "logger=none"]) for b in (16, 4)]
    records = [new_record(build_spec(cfg), _ident(tmp_path, str(i), i), cfg) for i, cfg in enumerate(ran)]
    killed = never_started_record(_compose(["bits=6", "logger=none"]), _ident(tmp_path, "bits=6", 2), "killed")
    head = summary.sweep_table([*records, killed]).splitlines()[0]
    assert [c.strip() for c in head.strip("|").split("|")][:2] == ["bits", "warmdown"]
    assert "schedule" not in head and "qat_start" not in head and "data" not in head
