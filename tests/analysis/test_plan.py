"""The planner (qatlab-analyze --plan): planted pilots -> the planted optimum, a command qatlab accepts.

Parameter recovery of each law from noisy curves is tested where the laws live
(test_annealing_law.test_noisy_curves_still_recover_parameters_within_noise,
test_multipower_law.test_noisy_fit_recovers_the_parameters_it_can / ..._predicts_a_held_out_warmdown_and_the_optimum);
here the question is what the planner makes of them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qat_lab.analysis import annealing_law as al, cli, load, plan, synthetic
from qat_lab.schedules import ScheduleConfig

STEPS = 150
LAM = 1 - 1 / (0.1 * STEPS)  # on the scaled λ grid of a 150-step run
ANNEAL = {"L0": 1.6, "A": 2.5, "alpha": 0.5, "C": 0.003}


def pilots(tmp_path: Path, warmdowns=(0.0, 0.5), **kw) -> Path:
    """Planted pilot runs of a real model name (so that qatlab's preflight composes the command)."""
    p = synthetic.Planted(sizes={"cpu-xs": 98_816}, bits=(16,), warmdowns=warmdowns, seeds=(0, 1, 2), steps=STEPS,
                          anneal=ANNEAL, anneal_lambda=LAM, curve_noise=0.003, curve_every=10, **kw)
    return synthetic.write_sweep(tmp_path, p, sweep="pilots")


def planted_optimum(grid=plan.DEFAULT_GRID) -> float:
    """The grid warmdown with the lowest final loss under the planted law."""
    final = al.predicted_final(ANNEAL, LAM, al.candidate_etas(ScheduleConfig(warmdown=0.5), STEPS, 1.0, grid))
    return float(grid[int(np.argmin(final))])


def dry_run_jobs(command: str) -> int:
    """Run the planned command through qatlab's real preflight (--dry-run) and read its job count."""
    args = command.split()
    assert args[:2] == ["qatlab", "-m"]
    exe = Path(sys.executable).parent / "qatlab"
    done = subprocess.run([str(exe), "--dry-run", *args[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return int(re.search(r"total: (\d+) jobs", done.stdout).group(1))


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    sweep = pilots(tmp_path_factory.mktemp("pilots"))
    return plan.plan(load.load_local([sweep]), resamples=20)


def test_the_planner_finds_the_planted_optimum_within_one_grid_step(planned):
    (p,), notes = planned
    assert notes == []
    grid = plan.DEFAULT_GRID
    assert planted_optimum() == 0.2
    assert abs(plan.snap(p.optimum, grid) - plan.snap(planted_optimum(), grid)) <= 1
    lo, hi = p.interval
    assert lo <= p.optimum + 0.1 and hi >= p.optimum - 0.1 and len(p.optima) == 20 * len(p.law.lambdas)
    assert p.law.column == "curve_loss" and p.law.law_used == "tissue"  # no held-out pilot: the simpler law
    assert p.seeds == [0, 1, 2] and p.pilot_warmdowns == [0.0, 0.5]


def test_predicted_losses_are_put_on_the_final_evaluations_scale(tmp_path_factory):
    """The offset is the pilots' mean of (final val_loss - last curve_loss) and shifts every law's
    predicted final loss by exactly that, and no optimum."""
    sweep = pilots(tmp_path_factory.mktemp("offset"))
    runset = load.load_local([sweep])
    for run in runset.runs:  # a run's final evaluation sits above its curve by a run-specific gap
        Path(run.run_id).write_text(json.dumps({**run.record, "results": {
            **run.record["results"], "val_loss": run.record["results"]["val_loss"] + 0.05 + 0.01 * run.record["axes"]["seed"]}}))
    runset = load.load_local([sweep])
    (p,), notes = plan.plan(runset, resamples=3)
    gaps = []
    for run in runset.runs:
        hist = runset.history(run.run_id)
        last = hist["curve_loss"].dropna().iloc[-1]
        gaps.append(run.record["results"]["val_loss"] - last)
    assert p.offset == pytest.approx(np.mean(gaps), abs=1e-12) and p.offset > 0.05
    bare = al.predicted_final(p.law.best.params, p.law.best_lam, al.candidate_etas(
        ScheduleConfig(warmdown=0.5), STEPS, 1.0, plan.DEFAULT_GRID))
    assert np.allclose(p.law_final["tissue"], bare + p.offset, rtol=0, atol=1e-12)
    assert np.allclose(p.point_final, p.law_final[p.law.law_used]) and set(p.law_final) == {"tissue", "mpl"}
    (unshifted,), _ = plan.plan(load.load_local([pilots(tmp_path_factory.mktemp("plain"))]), resamples=3)
    assert p.optimum == unshifted.optimum
    assert f"offset {p.offset:+.4f}" in plan.render([p], notes) and p.to_json()["offset_to_val_loss"] == p.offset


def test_the_printed_command_passes_the_preflight_with_the_expected_job_count(planned):
    (p,), _ = planned
    assert p.command.startswith("qatlab -m bits=16 lr_mult=1.0 model=cpu-xs warmdown=")
    assert "seed=0,1,2" in p.command
    expected = len(p.warmdowns) * 3
    assert p.runs == expected and p.full_runs == 18
    if p.decisive:
        assert p.warmdowns == plan.neighbours(plan.snap(p.optimum, plan.DEFAULT_GRID), plan.DEFAULT_GRID)
    assert dry_run_jobs(p.command) == expected


def test_an_undecided_cell_gets_the_full_grid_and_is_marked(tmp_path):
    # Constant LR alone: the annealing term is not measured, whatever the (zero) spread says.
    (p,), _ = plan.plan(load.load_local([pilots(tmp_path, warmdowns=(0.0,))]), resamples=5)
    assert not p.decisive and "no pilot anneals" in p.blocker
    assert p.warmdowns == list(plan.DEFAULT_GRID) and p.runs == p.full_runs
    text = plan.render([p], [])
    assert "**undecided** (no pilot anneals" in text and "warmdown=0,0.1,0.2,0.33,0.5,0.75 seed=0,1,2" in text
    assert dry_run_jobs(p.command) == 18


def test_the_cli_prints_the_plan_and_writes_plan_json_and_md(tmp_path, capsys):
    sweep = pilots(tmp_path / "in")
    cli.main(["--plan", str(sweep), "--out", str(tmp_path / "out"), "--plan-resamples", "5",
              "--plan-grid", "0", "0.25", "0.5", "0.75", "1"])
    printed = capsys.readouterr().out
    assert "qatlab -m bits=16" in printed and "predicted optimum" in printed and "saved" in printed
    data = json.loads((tmp_path / "out" / "plan.json").read_text())
    (cell,) = data["cells"]
    assert [g["warmdown"] for g in cell["grid"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert data["totals"]["full_grid_runs"] == 15 and cell["command"] in printed
    assert (tmp_path / "out" / "plan.md").read_text().startswith("# Sweep plan")


def test_job_overrides_split_hydras_override_dirname():
    rec = {"job_name": "bits=16,experiment=cpu_schedule_study,model.dims=[1,2],seed=0,warmdown=0.5"}
    assert plan.job_overrides(rec) == ["bits=16", "experiment=cpu_schedule_study", "model.dims=[1,2]", "seed=0",
                                       "warmdown=0.5"]
    assert plan.fixed_overrides([rec])[0] == ["bits=16", "experiment=cpu_schedule_study", "model.dims=[1,2]"]
