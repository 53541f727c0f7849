"""Experiment presets compose into complete grids of the documented size; --dry-run lists them."""

from __future__ import annotations

import pytest

from qat_lab.cli import dry_run, preflight
from qat_lab.errors import ConfigError

EXPECTED_JOBS = {
    "phase2": 720,          # 4 sizes x 4 warmdowns x 3 lr_mult x 3 bits x 5 seeds
    "phase5_adamw": 120,
    "phase5_cosine": 60,
    "phase5_length": 120,
    "phase5_sizes": 50,
    "phase5_int4": 280,
    "cpu_phase2": 72,
    "cpu_qat_start": 120,   # bits {4,6} x 6 QAT-start arms x 2 warmdowns x 5 seeds
    "qat_start": 288,       # 4 sizes x bits {4,6} x 6 arms x 2 warmdowns x 3 seeds
    "cpu_schedule_study": 36,   # bits {16,6,4} x 6 warmdowns x 2 seeds
    "cpu_pilot": 12,            # bits {16,6,4} x warmdown {0,0.5} x 2 seeds
    "phase2_pilot": 216,        # 4 sizes x 3 lr_mult x 3 bits x 2 warmdowns x 3 seeds
    "phase5_int4_pilot": 84,    # 7 sizes x 2 bits x 2 warmdowns x 3 seeds
}


@pytest.mark.parametrize("name, jobs", sorted(EXPECTED_JOBS.items()))
def test_preset_job_count(name, jobs):
    listing = dry_run([f"experiment={name}"], multirun=True)
    assert listing.splitlines()[0] == f"{jobs} jobs"
    table_rows = [line for line in listing.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert sum(int(row.split("|")[2]) for row in table_rows) == jobs


def test_preflight_validates_a_preset_grid():
    # phase2 is larger than the preflight limit: a covering subset is composed and validated.
    # On Slurm its GPU jobs run on the cluster's nodes, so this machine's devices are not asked.
    assert preflight(["experiment=phase2", "launcher=slurm"], multirun=True) == 720


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_preset_run_here_without_a_gpu_is_refused():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        preflight(["experiment=phase2"], multirun=True)


def test_command_line_wins_over_the_preset_grid():
    listing = dry_run(["experiment=phase2", "seed=0", "model=15m"], multirun=True)
    assert listing.splitlines()[0] == f"{720 // 5 // 4} jobs"


def test_token_budget_sets_steps_from_model_size():
    small = dry_run(["experiment=phase2", "model=15m"], multirun=True)
    large = dry_run(["experiment=phase2", "model=100m"], multirun=True)
    steps = lambda text: int(next(l for l in text.splitlines() if l.startswith("| 1")).split("|")[3])
    # 20 tokens per non-embedding parameter: the 100m preset runs ~7x longer than 15m.
    assert 6 < steps(large) / steps(small) < 8


def test_without_multirun_a_preset_grid_is_an_error():
    """Without -m Hydra would run one job with the defaults, not the preset's grid."""
    for check in (lambda: dry_run(["experiment=phase2"], multirun=False),
                  lambda: preflight(["experiment=cpu_phase2"], multirun=False)):
        with pytest.raises(ConfigError, match=r"is a sweep of \d+ jobs: run it with -m"):
            check()
