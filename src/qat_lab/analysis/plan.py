"""Predict, don't grid: plan a warmdown sweep from a few pilot runs (`qatlab-analyze --plan`).

    qatlab-analyze --plan multirun_outputs/<pilots> --out plan/ [--plan-grid 0 0.1 0.2 0.33 0.5 0.75]

The pilots of a cell (every key but warmdown and seed, pipeline's cells) are a few warmdowns,
e.g. constant LR (warmdown 0) and one warmdown run, over a few seeds. Per cell:

1. The annealing laws are fitted on the pilots' curves (cell_fit.fit_cell: Tissue's law on its
   λ grid and the Multi-Power Law; the law with the smaller held-out error is used, Tissue's when
   every pilot curve was fitted and none is left to judge by).
2. Uncertainty of the predicted optimum: a bootstrap over seeds (whole runs, never points of one
   curve: METHOD section 8) — the seeds are resampled with replacement, the seed-mean curves rebuilt
   and the law refitted — pooled with the spread over λ (Tissue's law: every λ of the grid in every
   resample, because the data do not pin λ down). The 90% interval is the 5th-95th percentile of
   the optima so pooled; the predicted final loss of each grid warmdown gets one the same way.
3. Predicted final losses are put on the scale of the final evaluation. The laws are fitted to
   `curve_loss` (one fixed held-out batch), whose last point differs from a run's final val_loss
   (the whole val split, quantised round trip) by a nearly constant amount per run; the cell's
   offset, the pilots' mean of (final val_loss - last curve_loss), is added to every predicted
   final loss (CellPlan.offset). The offset moves no optimum: it only makes the predicted losses
   comparable with the ones a sweep will report.
4. A cell is decisive when that interval, snapped to the user's grid, spans at most one grid step:
   then the optimum and its two grid neighbours contain the whole interval, and the reduced sweep
   `qatlab -m <the cell's fixed overrides> warmdown=<those three> seed=<the pilots' seeds>` checks
   the prediction. An undecided cell gets the full grid.

The command reuses the overrides the pilots were launched with (a record's job_name is Hydra's
override_dirname: `bits=16,experiment=cpu_schedule_study,seed=0,warmdown=0`) minus warmdown and
seed, so it composes the same config (the experiment preset included) and passes qatlab's
preflight; warmdown and seed on the command line win over a preset's grid.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qat_lab.analysis import annealing_law as al
from qat_lab.analysis import cell_fit
from qat_lab.analysis import multipower_law as mpl
from qat_lab.analysis.cells import CELL_ID
from qat_lab.atomic import atomic_write

DEFAULT_GRID = (0.0, 0.1, 0.2, 0.33, 0.5, 0.75)
"""The warmdown grid a full sweep would run (the study's)."""
DEFAULT_RESAMPLES = 30
INTERVAL = (5.0, 95.0)
"""Percentiles of the 90% interval."""
SWEPT = ("warmdown", "seed")
"""The keys the planned command sweeps; every other override is the cell's and stays fixed."""


# ------------------------------------------------------------------------------ overrides

def job_overrides(record: dict) -> list[str]:
    """The Hydra overrides a run was launched with, from its job_name (Hydra's override_dirname:
    key=value pairs joined by commas; a comma followed by `key=` starts the next pair, so values with
    commas inside brackets survive)."""
    name = record.get("job_name") or ""
    if "=" not in name:
        return []
    return re.split(r",(?=[\w.+~/@-]+=)", name)


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def fixed_overrides(records: list[dict]) -> tuple[list[str], str]:
    """(the overrides every pilot of a cell shares except warmdown and seed, a note if they differ)."""
    sets = [[o for o in job_overrides(r) if override_key(o) not in SWEPT] for r in records]
    first = sets[0] if sets else []
    differ = any(s != first for s in sets[1:])
    return first, ("the pilots of this cell were launched with different overrides; the first run's are used"
                   if differ else "")


def fmt(v: float) -> str:
    return f"{v:g}"


def command(fixed: list[str], warmdowns: list[float], seeds: list) -> str:
    return " ".join(["qatlab", "-m", *fixed, "warmdown=" + ",".join(fmt(w) for w in warmdowns),
                     "seed=" + ",".join(str(s) for s in seeds)])


# ------------------------------------------------------------------------------ the grid

def snap(value: float, grid: tuple[float, ...]) -> int:
    """Index of the grid value nearest to `value`."""
    return int(np.argmin(np.abs(np.asarray(grid) - value)))


def neighbours(index: int, grid: tuple[float, ...]) -> list[float]:
    """The grid value at `index` and its neighbours (two values at the grid's ends)."""
    return list(grid[max(index - 1, 0):index + 2])


# ------------------------------------------------------------------------------ one cell

@dataclass
class CellPlan:
    cell: str
    seeds: list
    pilot_warmdowns: list[float]
    steps: int
    law: cell_fit.CellLaw
    optima: np.ndarray
    """Predicted optimal warmdown (on the 0.02 candidate grid) of every bootstrap resample x λ."""
    grid: tuple[float, ...]
    grid_final: np.ndarray
    """(resample x λ) x grid: predicted final loss of each grid warmdown."""
    point_final: np.ndarray
    """The full-data fit's predicted final loss of each grid warmdown (the law used), offset included."""
    fixed: list[str]
    law_final: dict[str, np.ndarray] = field(default_factory=dict)
    """Each law's ('tissue', 'mpl') full-data predicted final loss of each grid warmdown, offset included."""
    offset: float = 0.0
    """Added to every predicted final loss: the pilots' mean (final val_loss - last point of the fitted
    curve), the calibration of curve_loss to the final evaluation (0 when the records lack either)."""
    notes: list[str] = field(default_factory=list)
    blocker: str = ""
    """Why the pilots cannot decide the cell whatever the interval says ('' when they can)."""

    @property
    def optimum(self) -> float:
        """The grid warmdown with the lowest predicted final loss (full-data fit of the law used)."""
        return float(self.grid[int(np.argmin(self.point_final))])

    @property
    def interval(self) -> tuple[float, float]:
        lo, hi = np.percentile(self.optima, INTERVAL)
        return float(lo), float(hi)

    @property
    def decisive(self) -> bool:
        """The interval spans at most one grid step: the optimum and its neighbours cover it."""
        if self.blocker:
            return False
        lo, hi = (snap(v, self.grid) for v in self.interval)
        at = snap(self.optimum, self.grid)
        return hi - lo <= 1 and lo >= at - 1 and hi <= at + 1

    @property
    def warmdowns(self) -> list[float]:
        return neighbours(snap(self.optimum, self.grid), self.grid) if self.decisive else list(self.grid)

    @property
    def command(self) -> str:
        return command(self.fixed, self.warmdowns, self.seeds)

    @property
    def runs(self) -> int:
        return len(self.warmdowns) * len(self.seeds)

    @property
    def full_runs(self) -> int:
        return len(self.grid) * len(self.seeds)

    def to_json(self) -> dict:
        lo, hi = self.interval
        q = np.percentile(self.grid_final, INTERVAL, axis=0)
        return {
            "cell": self.cell, "pilot_warmdowns": self.pilot_warmdowns, "seeds": self.seeds, "steps": self.steps,
            "loss_column": self.law.column, "law_used": self.law.law_used,
            "lambda_grid": list(self.law.lambdas), "best_lambda": self.law.best_lam,
            "tissue_optimum": self.law.chosen.get("predicted_optimum"), "mpl_optimum": self.law.mpl_optimum,
            "predicted_optimum": self.optimum, "interval_90": [lo, hi], "n_resamples_x_lambda": len(self.optima),
            "decisive": self.decisive, "undecided_because": self.blocker or None, "edge_flags": self.law.edge_flags,
            "offset_to_val_loss": self.offset,
            "grid": [{"warmdown": w, "predicted_final": float(p), "interval_90": [float(a), float(b)],
                      **{f"predicted_final_{k}": float(v[i]) for k, v in self.law_final.items()}}
                     for i, (w, p, a, b) in enumerate(zip(self.grid, self.point_final, q[0], q[1]))],
            "command": self.command, "runs": self.runs, "full_grid_runs": self.full_runs,
            "runs_saved": self.full_runs - self.runs, "steps_saved": (self.full_runs - self.runs) * self.steps,
            "notes": self.notes,
        }


def _tissue_resample(curves: list[al.Curve], lambdas, etas_fine: np.ndarray, etas_grid: np.ndarray):
    """Tissue's law refitted on one resample at every λ (chained as fit_cell does): the optimum
    on the candidate grid and the final loss of each grid warmdown, one row per λ."""
    optima, finals, warm = [], [], None
    for lam in sorted(lambdas):
        fit = al.fit_law(curves, lam, warm_start=warm, n_polish=al.N_POLISH if warm is None else 0)
        warm = fit.params
        optima.append(al.CANDIDATE_FRACTIONS[int(np.argmin(al.predicted_final(fit.params, lam, etas_fine)))])
        finals.append(al.predicted_final(fit.params, lam, etas_grid))
    return optima, finals


def _mpl_resample(curves: list[al.Curve], start: dict, schedule, steps: int, lr_mult: float, grid):
    """The Multi-Power Law refitted on one resample, from the full-data fit (one polish: fast)."""
    fit = mpl.fit_mpl(curves, max_points=cell_fit.MPL_OPTIONS["max_points"], n_polish=0, warm_start=start)
    optimum, _ = mpl.predicted_optimum(fit.params, schedule, steps, lr_mult)
    final = mpl.predicted_final(fit.params, mpl.candidate_etas(schedule, steps, lr_mult, grid), schedule.warmup_steps)
    return [optimum], [final]


def final_offset(runs: list[cell_fit.RunCurve], records: dict[str, dict]) -> tuple[float, str]:
    """(the mean over runs of final val_loss - the last point of the run's fitted curve, a note
    when some run lacks it); 0 with a note when no run has both."""
    gaps = []
    for r in runs:
        final = ((records.get(r.run_id) or {}).get("results") or {}).get("val_loss")
        last = r.loss[np.isfinite(r.loss)]
        if isinstance(final, (int, float)) and math.isfinite(final) and len(last):
            gaps.append(float(final) - float(last[-1]))
    if not gaps:
        return 0.0, "no run has both a final val_loss and a curve: predicted losses are on the curve's scale"
    note = "" if len(gaps) == len(runs) else f"offset to val_loss from {len(gaps)} of {len(runs)} runs"
    return float(np.mean(gaps)), note


def plan_cell(cell: str, runs: list[cell_fit.RunCurve], schedule, steps: int, lr_mult: float, fixed: list[str],
              grid=DEFAULT_GRID, resamples: int = DEFAULT_RESAMPLES, lambdas=None, seed: int = 0,
              records: dict[str, dict] | None = None) -> CellPlan:
    """Fit the laws on a cell's pilot runs, bootstrap its seeds, and plan the sweep that checks it
    (records: the runs' records, for the offset to the final evaluation; None: no offset)."""
    grid = tuple(sorted(float(g) for g in grid))
    curves = cell_fit.mean_curves(runs)
    law = cell_fit.fit_cell(cell, curves, schedule, steps, lr_mult, None, fit_warmdowns=[c.warmdown for c in curves]
                      if len(curves) <= 2 else None, lambdas=lambdas)
    lambdas = law.lambdas
    etas_fine = al.candidate_etas(schedule, steps, lr_mult)
    etas_grid = al.candidate_etas(schedule, steps, lr_mult, grid)
    use_mpl = law.law_used == "mpl"
    law_final = {"tissue": al.predicted_final(law.best.params, law.best_lam, etas_grid)}
    if law.mpl is not None:
        law_final["mpl"] = mpl.predicted_final(law.mpl.params, mpl.candidate_etas(schedule, steps, lr_mult, grid),
                                               schedule.warmup_steps)
    point = law_final["mpl" if use_mpl else "tissue"]
    seeds = sorted({r.seed for r in runs}, key=str)
    rng = np.random.default_rng(seed)
    optima, finals, notes = [], [], []
    fit_wds = set(law.fit_warmdowns)
    for _ in range(resamples if len(seeds) > 1 else 0):
        drawn = rng.choice(len(seeds), size=len(seeds), replace=True)
        # A seed drawn twice counts twice in the seed mean: that is the bootstrap's weight.
        sample = [r for i in drawn for r in runs if r.seed == seeds[i] and r.warmdown in fit_wds]
        sample_curves = cell_fit.mean_curves(sample)
        if {c.warmdown for c in sample_curves} != fit_wds:  # a seed missing a warmdown: skip the draw
            continue
        o, f = (_mpl_resample(sample_curves, law.mpl.params, schedule, steps, lr_mult, grid) if use_mpl
                else _tissue_resample(sample_curves, lambdas, etas_fine, etas_grid))
        optima += o
        finals += f
    if not optima:  # one seed: the spread over λ of the full-data fit is all there is
        notes.append("one seed: no bootstrap, the interval is the spread over λ alone")
        optima = [r["predicted_optimum"] for r in law.by_lambda]
        finals = [al.predicted_final(law.fits[lam].params, lam, etas_grid) for lam in sorted(law.fits)]
    # A constant-LR curve says nothing about what annealing buys (S2 = 0 on it: C is free and the
    # fit sets it to 0, "predicting" warmdown 0 with no spread at all).
    blocker = "" if any(c.warmdown > 0 for c in curves) else "no pilot anneals: the annealing term is not measured"
    offset, note = final_offset(runs, records) if records is not None else (0.0, "")
    if note:
        notes.append(note)
    return CellPlan(cell=cell, seeds=seeds, pilot_warmdowns=sorted({r.warmdown for r in runs}), steps=steps, law=law,
                    optima=np.asarray(optima, dtype=float), grid=grid, grid_final=np.asarray(finals) + offset,
                    point_final=np.asarray(point) + offset, fixed=fixed, notes=notes, blocker=blocker,
                    law_final={k: v + offset for k, v in law_final.items()}, offset=offset)


# ------------------------------------------------------------------------------ the sweep

def plan(runset, grid=DEFAULT_GRID, resamples: int = DEFAULT_RESAMPLES, lambdas=None, seed: int = 0
         ) -> tuple[list[CellPlan], list[str]]:
    """One CellPlan per warmdown cell of the pilot runs (cells as pipeline makes them)."""
    from qat_lab.analysis import pipeline

    a = pipeline.analyse(runset, pipeline.Options(anneal=False, max_plots=0))
    if a.by_warmdown is None:
        return [], ["the records have no warmdown axis: nothing to plan"]
    records = {run.run_id: run.record for run in runset.runs}
    table = a.by_warmdown.table(a.table)
    table = table[table["used"]]
    plans, notes = [], []
    for cell, g in table.groupby(CELL_ID, sort=False):
        runs, cell_notes = cell_fit.cell_runs(g, records, runset.history)
        notes += cell_notes
        first = records[g["run_id"].iloc[0]]
        schedule = al.schedule_of(first)
        if not runs or schedule is None or schedule.kind != "wsd":
            notes.append(f"{cell}: no complete curve or no WSD schedule: not planned")
            continue
        fixed, note = fixed_overrides([records[r] for r in g["run_id"]])
        p = plan_cell(cell, runs, schedule, int(g["steps"].iloc[0]),
                      float(g["lr_mult"].iloc[0]) if "lr_mult" in g else 1.0, fixed, grid, resamples, lambdas, seed,
                      records)
        if note:
            p.notes.append(note)
        if not fixed:
            p.notes.append("no overrides in the pilots' job names: the command sets warmdown and seed only")
        plans.append(p)
    return plans, notes


def totals(plans: list[CellPlan]) -> dict:
    runs = sum(p.runs for p in plans)
    full = sum(p.full_runs for p in plans)
    return {"cells": len(plans), "decisive": sum(p.decisive for p in plans), "runs": runs, "full_grid_runs": full,
            "runs_saved": full - runs, "steps": sum(p.runs * p.steps for p in plans),
            "steps_saved": sum((p.full_runs - p.runs) * p.steps for p in plans)}


def render(plans: list[CellPlan], notes: list[str]) -> str:
    """The plan as text (printed, and plan.md)."""
    out = []
    for p in plans:
        lo, hi = p.interval
        law = {"tissue": "Tissue", "mpl": "Multi-Power"}[p.law.law_used]
        err = p.law.heldout_error
        out += [f"## {p.cell}", "",
                f"- pilots: warmdown {', '.join(fmt(w) for w in p.pilot_warmdowns)} x seeds "
                f"{', '.join(map(str, p.seeds))}, {p.steps} steps, fitted on {p.law.column}",
                f"- law used: {law} (held-out final error Tissue {_pct(err.get('tissue'))}, "
                f"MPL {_pct(err.get('mpl'))}); Tissue optimum {_opt(p.law.chosen.get('predicted_optimum'))} "
                f"at λ {p.law.best_lam:g}, MPL optimum {_opt(p.law.mpl_optimum)}",
                f"- predicted optimum {fmt(p.optimum)} (grid), 90% interval [{lo:.2f}, {hi:.2f}] over "
                f"{len(p.optima)} resample x λ fits: "
                + ("**decisive**" if p.decisive else f"**undecided** ({p.blocker or 'interval wider than one grid step'})"),
                f"- predicted final val loss (curve + offset {p.offset:+.4f}): " + ", ".join(
                    f"{fmt(w)}: {f:.4f}" for w, f in zip(p.grid, p.point_final))]
        out += [f"- flag: {f}" for f in p.law.edge_flags] + [f"- note: {n}" for n in p.notes]
        out += ["", f"    {p.command}", "",
                f"{p.runs} runs ({p.runs * p.steps} steps) instead of {p.full_runs} ({p.full_runs * p.steps}): "
                f"{p.full_runs - p.runs} runs, {(p.full_runs - p.runs) * p.steps} steps saved.", ""]
    t = totals(plans)
    out += [f"Total: {t['decisive']} of {t['cells']} cell(s) decisive; {t['runs']} runs ({t['steps']} steps) "
            f"instead of {t['full_grid_runs']}; {t['runs_saved']} runs, {t['steps_saved']} steps saved."]
    if notes:
        out += ["", "Runs left out:"] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _pct(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _opt(x) -> str:
    return "-" if x is None else fmt(x)


def write(plans: list[CellPlan], notes: list[str], out: str | Path) -> Path:
    """plan.json and plan.md in `out`; returns plan.md's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "plan.json", json.dumps({"cells": [p.to_json() for p in plans], "totals": totals(plans),
                                                "notes": notes}, indent=1, default=str))
    return atomic_write(out / "plan.md", "# Sweep plan from pilot runs\n\n" + render(plans, notes))
