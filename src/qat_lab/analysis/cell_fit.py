"""One warmdown cell's schedule laws: Tissue's law (annealing_law) and the Multi-Power Law
(multipower_law) fitted on the same seed-mean loss curves, both scored on the held-out curves'
final loss, and the better one predicting the cell's optimal warmdown.

    runs of a cell -> curves (cell_curves: curve_loss where logged, seed means per warmdown)
      -> fit_laws (the costly part: Tissue at every λ, chained; the Multi-Power Law; cacheable,
         fit_cache.py) -> fit_cell (held-out quality per λ, predicted optima, edge flags, the law
         used) -> CellLaw (what the report, fits.json, the figures and the planner read)

The two law modules know nothing of each other; this one combines them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qat_lab.analysis import multipower_law as mpl
from qat_lab.analysis.annealing_law import (
    CANDIDATE_FRACTIONS, CANDIDATE_STEP, HUBER_DELTA, N_POLISH, Curve, Fit, Trace, areas, by_step, candidate_etas,
    curve_quality, fit_law, law, loss_column, lr_trace, pooled_quality, predicted_final, scaled_lambdas,
)
from qat_lab.schedules import ScheduleConfig

MPL_OPTIONS = {"max_points": 80, "n_polish": 1}
"""The Multi-Power Law fit beside this one in fit_cell: subsampled to 80 points per curve and one
polished start, ~0.3 s a cell (its defaults, 400 points and 4 starts, take 1-8 s: too slow for a
sweep of 100 cells). Recovery on 80 uniform points differs from 400 well inside the noise."""


@dataclass
class CellLaw:
    cell: str
    fit_warmdowns: list[float]
    heldout_warmdowns: list[float]
    curves: list[Curve]
    fits: dict[float, Fit] = field(default_factory=dict)
    """lambda -> fit."""
    best_lam: float | None = None
    by_lambda: list[dict] = field(default_factory=list)
    empirical_optimum: float | None = None
    candidates: list[float] = field(default_factory=list)
    candidate_final: dict[float, list[float]] = field(default_factory=dict)
    note: str = ""
    lambdas: tuple[float, ...] = ()
    """The lambda grid the law was fitted on (scaled_lambdas of the run length unless given)."""
    mpl: object | None = None
    """The Multi-Power Law's fit on the same curves (multipower_law.MPLFit; None: not fitted)."""
    mpl_candidate_final: list[float] = field(default_factory=list)
    mpl_optimum: float | None = None
    heldout_error: dict[str, float] = field(default_factory=dict)
    """law ('tissue', 'mpl') -> mean |predicted - observed| / observed of the held-out curves' final loss."""
    law_used: str = "tissue"
    """The law whose predicted optimum the cell reports: the one with the smaller held-out error
    (Tissue's, the simpler, when there is no held-out curve to judge by)."""

    @property
    def column(self) -> str:
        """The loss column the curves come from ('mixed' if they differ)."""
        cols = {c.column for c in self.curves}
        return cols.pop() if len(cols) == 1 else "mixed" if cols else ""

    @property
    def predicted_optimum(self) -> float | None:
        """The predicted optimal warmdown of the law used (None: not predicted)."""
        if self.law_used == "mpl" and self.mpl_optimum is not None:
            return self.mpl_optimum
        return self.chosen.get("predicted_optimum")

    @property
    def edge_flags(self) -> list[str]:
        """Why a prediction may lie outside what was asked: an optimum at warmdown 0 or 1 (the edge of
        the candidate grid: the law prefers an extreme it may not describe), or the chosen lambda at
        the edge of its grid (the best lambda may lie beyond it)."""
        flags = []
        opt = self.predicted_optimum
        if opt is not None and opt in (CANDIDATE_FRACTIONS[0], CANDIDATE_FRACTIONS[-1]):
            flags.append(f"optimum at the edge of the candidate grid (warmdown {opt:g})")
        grid = sorted(self.lambdas or self.fits)
        if len(grid) > 1 and self.best_lam in (grid[0], grid[-1]):
            flags.append(f"best λ {self.best_lam:g} at the edge of the λ grid ({grid[0]:g}-{grid[-1]:g})")
        return flags

    @property
    def best(self) -> Fit | None:
        return self.fits.get(self.best_lam)

    @property
    def chosen(self) -> dict:
        """The lambda-sensitivity row of the chosen lambda ({} before fitting)."""
        return next((r for r in self.by_lambda if r["lambda"] == self.best_lam), {})

    @property
    def optimum_range(self) -> tuple[float, float] | None:
        """(min, max) of the predicted optimal warmdown over the lambda grid (None: not predicted)."""
        values = [r["predicted_optimum"] for r in self.by_lambda if "predicted_optimum" in r]
        return (min(values), max(values)) if values else None

    @property
    def undetermined(self) -> str:
        """Why the predicted optimum is no finding ('' when it is one): the fit is degenerate when
        a parameter sits at its bound AND the predicted optimum moves across the lambda grid by
        more than one candidate step; the curves then do not pin the law down where it matters."""
        best, spread = self.best, self.optimum_range
        if best is None or spread is None or not best.at_bound:
            return ""
        if spread[1] - spread[0] <= CANDIDATE_STEP + 1e-9:
            return ""
        return (f"{', '.join(best.at_bound)} at bound 0 and the predicted optimum moves from {spread[0]:g} to "
                f"{spread[1]:g} across the λ grid")

    def to_json(self) -> dict:
        best = self.best
        return {
            "cell": self.cell, "equation": "L(s) = L0 + A * S1^(-alpha) - C * S2",
            "fit_on_warmdowns": self.fit_warmdowns, "predicted_warmdowns": self.heldout_warmdowns,
            "curves": [{"warmdown": c.warmdown, "n_seeds": c.n_seeds, "steps": len(c.loss), "warmup": c.trace.warmup,
                        "lr_source": c.trace.source, "lr_note": c.trace.note, "runs": c.run_ids} for c in self.curves],
            "huber_delta": HUBER_DELTA, "lambda": self.best_lam,
            "params": best.params if best else None,
            "optimizer": ({"success": best.success, "message": best.message, "starts": best.n_starts,
                           "converged_starts": best.n_converged, "objective": best.objective, "n_points": best.n_points,
                           "at_bound": best.at_bound}
                          if best else None),
            "lambda_sensitivity": self.by_lambda,
            "empirical_optimal_warmdown": self.empirical_optimum,
            "predicted_optimum_undetermined": self.undetermined or None,
            "loss_column": self.column, "lambda_grid": list(self.lambdas),
            "multipower_law": ({**self.mpl.to_json(), "predicted_optimum": self.mpl_optimum} if self.mpl else None),
            "heldout_final_error": self.heldout_error, "law_used": self.law_used,
            "predicted_optimum": self.predicted_optimum, "edge_flags": self.edge_flags,
            "note": self.note,
        }


def default_fit_warmdowns(warmdowns: list[float]) -> list[float]:
    """Fit on the extremes (the closest to constant LR and the longest anneal) and predict the rest;
    with two warmdowns, fit the shorter one and predict the longer."""
    w = sorted(warmdowns)
    if len(w) >= 3:
        return [w[0], w[-1]]
    return w[:1]


def heldout_final_error(final: list[tuple[float, float]]) -> float:
    """Mean |predicted - observed| / observed over (predicted, observed) final losses (NaN: none)."""
    return float(np.mean([abs(p - o) / o for p, o in final])) if final else math.nan


def _tissue_final(curve: Curve, params: dict, lam: float) -> float:
    """Tissue's law at the curve's last finite point."""
    k, _ = curve.final_point()
    s1, s2 = areas(curve.trace.eta, lam)
    return float(law(params, s1[k], s2[k]))


@dataclass
class LawFits:
    """What fit_cell fits, its costly part: Tissue's law at every λ of the grid and the Multi-Power
    Law, on the fit curves. A function of the curves, the grid and the fitting code alone, so it can
    be cached (analysis/fit_cache.py); everything fit_cell derives from it is recomputed."""
    tissue: dict[float, Fit]
    """lambda -> fit (the chain along the grid, the chosen λ refitted from an independent start)."""
    mpl: object | None = None
    """multipower_law.MPLFit; None: not asked for, or not fitted (mpl_error says why)."""
    mpl_error: str = ""


def fit_laws(fit_curves: list[Curve], lambdas: tuple[float, ...], with_mpl: bool = True) -> LawFits:
    """Tissue's law at every lambda (chained along the grid) and, with_mpl, the Multi-Power Law."""
    fits: dict[float, Fit] = {}
    warm = None
    for lam in sorted(lambdas):
        # The first lambda is polished from N_POLISH alpha-grid starts; each next one from its
        # neighbour's solution (the objective moves smoothly with lambda, so the neighbour is an
        # excellent start, and 100 cells x 5 lambdas stay within seconds). The chosen lambda gets
        # an independent alpha-grid start below.
        fits[lam] = fit_law(fit_curves, lam, warm_start=warm, n_polish=N_POLISH if warm is None else 0)
        warm = fits[lam].params
    best = min(fits, key=lambda lam: fits[lam].objective)
    if best != min(lambdas):  # reached by chaining only: give it an independent start too
        fits[best] = fit_law(fit_curves, best, warm_start=fits[best].params, n_polish=1)
    out = LawFits(tissue=fits)
    if with_mpl:
        try:
            out.mpl = mpl.fit_mpl(fit_curves, **MPL_OPTIONS)
        except ValueError as e:  # too few points; the cell keeps Tissue's law
            out.mpl_error = str(e)
    return out


def _mpl_predictions(out: CellLaw, mpl_fit, held: list[Curve], schedule, steps: int, lr_mult: float,
                     can_predict_optimum: bool) -> None:
    """The Multi-Power Law's held-out error and predicted optimum."""
    out.mpl = mpl_fit
    finals = []
    for c in held:
        eta, w = mpl.mpl_trace(c.trace)
        k, obs = c.final_point()
        finals.append((float(mpl.law_curve(mpl_fit.params, eta, w, [k])[0]), obs))
    out.heldout_error["mpl"] = heldout_final_error(finals)
    if can_predict_optimum:
        out.mpl_optimum, final = mpl.predicted_optimum(mpl_fit.params, schedule, steps, lr_mult)
        out.mpl_candidate_final = final.tolist()


def fit_cell(cell: str, curves: list[Curve], schedule: ScheduleConfig | None, steps: int, lr_mult: float,
             empirical_optimum: float | None, fit_warmdowns: list[float] | None = None,
             lambdas=None, with_mpl: bool = True, fitter=None) -> CellLaw:
    """Fit the law on some of a cell's curves, predict the others, at every lambda of the grid
    (None: scaled_lambdas(steps)); with_mpl: the Multi-Power Law beside it, and the better of the
    two on the held-out final losses predicts the optimum. `fitter` does the fitting (None:
    fit_laws; a cache passes its wrapper of it, fit_cache.FitCache.fit_laws)."""
    lambdas = tuple(lambdas) if lambdas else scaled_lambdas(steps)
    wds = [c.warmdown for c in curves]
    chosen = [w for w in (fit_warmdowns if fit_warmdowns else default_fit_warmdowns(wds)) if w in wds]
    out = CellLaw(cell=cell, fit_warmdowns=chosen, heldout_warmdowns=[w for w in wds if w not in chosen],
                  curves=curves, empirical_optimum=empirical_optimum, lambdas=tuple(sorted(lambdas)))
    if not chosen:
        out.note = f"none of the requested fit warmdowns ({fit_warmdowns}) is in this cell"
        return out
    fit_curves = [c for c in curves if c.warmdown in chosen]
    held = [c for c in curves if c.warmdown not in chosen]
    if not held:
        out.note = "every curve was used for fitting: no held-out curve to predict"
    can_predict_optimum = schedule is not None and schedule.kind == "wsd"
    if can_predict_optimum:
        etas = candidate_etas(schedule, steps, lr_mult)
        out.candidates = list(CANDIDATE_FRACTIONS)
    elif schedule is not None:
        out.note += f"{'; ' if out.note else ''}schedule '{schedule.kind}' has no warmdown: no optimum to predict"
    tested = sorted(wds)
    tested_etas = np.array([c.trace.eta for c in sorted(curves, key=lambda c: c.warmdown)])
    fitted = (fitter or fit_laws)(fit_curves, tuple(sorted(lambdas)), with_mpl)
    out.fits = dict(sorted(fitted.tissue.items()))
    out.best_lam = min(out.fits, key=lambda lam: out.fits[lam].objective)
    for lam in sorted(lambdas):
        fit = out.fits[lam]
        held_q = [curve_quality(c, fit.params, lam) for c in held]
        row = {"lambda": lam, "objective": fit.objective, "success": fit.success, "params": fit.params,
               "fit": pooled_quality([curve_quality(c, fit.params, lam) for c in fit_curves], fit_curves, lam),
               "heldout": pooled_quality(held_q, held, lam), "heldout_curves": held_q}
        final_tested = predicted_final(fit.params, lam, tested_etas)
        row["predicted_optimum_among_tested"] = float(tested[int(np.argmin(final_tested))])
        if can_predict_optimum:
            final = predicted_final(fit.params, lam, etas)
            out.candidate_final[lam] = final.tolist()
            row["predicted_optimum"] = float(CANDIDATE_FRACTIONS[int(np.argmin(final))])
        out.by_lambda.append(row)
    out.heldout_error["tissue"] = heldout_final_error(
        [(_tissue_final(c, out.best.params, out.best_lam), c.final_point()[1]) for c in held])
    if fitted.mpl_error:
        out.note += f"{'; ' if out.note else ''}Multi-Power Law not fitted: {fitted.mpl_error}"
    if fitted.mpl is not None:
        _mpl_predictions(out, fitted.mpl, held, schedule, steps, lr_mult, can_predict_optimum)
        # The better law on what neither saw; a tie or no held-out curve keeps the simpler law.
        if out.heldout_error.get("mpl", math.nan) < out.heldout_error["tissue"]:
            out.law_used = "mpl"
    return out


@dataclass
class RunCurve:
    """One run's loss curve (before the seed mean): what a bootstrap over seeds resamples."""
    run_id: str
    warmdown: float
    seed: object
    loss: np.ndarray
    trace: Trace
    column: str


def run_loss(history: pd.DataFrame, column: str, steps: int) -> np.ndarray | None:
    """The run's loss by row, or None if incomplete: train_loss at every row 0..T-1; curve_loss
    (sparse) at rows 0..T, complete when it has its last point, the loss after the last step."""
    if column == "train_loss":
        loss = by_step(history, column, steps)
        return loss if np.isfinite(loss).all() else None
    loss = by_step(history, column, steps + 1)
    return loss if np.isfinite(loss[-1]) and np.isfinite(loss).sum() >= 3 else None


def cell_runs(runs_in_cell: pd.DataFrame, records: dict[str, dict], history) -> tuple[list[RunCurve], list[str]]:
    """Every run's loss curve; runs without a complete history (or LR trace) are listed instead.

    One column for the whole cell: curve_loss if every run with a history logged it, else
    train_loss, so that the curves compared within a cell measure the same thing."""
    rows = list(zip(runs_in_cell["run_id"].tolist(), runs_in_cell["warmdown"].tolist(), runs_in_cell["steps"].tolist(),
                    runs_in_cell["seed"].tolist() if "seed" in runs_in_cell else [None] * len(runs_in_cell)))
    hists = {run_id: history(run_id) for run_id, *_ in rows}
    have = [h for h in hists.values() if h is not None]
    column = "curve_loss" if have and all(loss_column(h) == "curve_loss" for h in have) else "train_loss"
    out, notes, traces = [], [], {}
    for run_id, wd, steps, seed in rows:
        hist = hists[run_id]
        if hist is None or column not in hist:
            notes.append(f"{run_id}: no history")
            continue
        loss = run_loss(hist, column, int(steps))
        if loss is None:
            notes.append(f"{run_id}: incomplete {column} history")
            continue
        if wd not in traces:  # every seed of one warmdown shares the schedule
            traces[wd] = lr_trace(records[run_id], hist)
        if traces[wd] is None:
            notes.append(f"{run_id} (warmdown {wd:g}): no LR trace (no schedule in its config, no complete lr/ column)")
            continue
        out.append(RunCurve(run_id, float(wd), seed, loss, traces[wd], column))
    return out, notes


def mean_curves(runs: list[RunCurve]) -> list[Curve]:
    """Seed-mean curves per warmdown (a run listed twice, as a bootstrap draws it, counts twice)."""
    out = []
    for wd in sorted({r.warmdown for r in runs}):
        group = [r for r in runs if r.warmdown == wd]
        out.append(Curve(warmdown=wd, loss=np.mean([r.loss for r in group], axis=0), trace=group[0].trace,
                         n_seeds=len({r.run_id for r in group}), run_ids=[r.run_id for r in group],
                         column=group[0].column))
    return out


def cell_curves(runs_in_cell: pd.DataFrame, records: dict[str, dict], history) -> tuple[list[Curve], list[str]]:
    """Seed-mean loss curves per warmdown (curve_loss where logged); runs without a complete history are listed."""
    runs, notes = cell_runs(runs_in_cell, records, history)
    return mean_curves(runs), notes
