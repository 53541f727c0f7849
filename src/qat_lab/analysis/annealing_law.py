"""The scaling law with LR annealing (Tissue et al. 2024; METHOD section 8).

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)

for the whole loss curve of a run, where eta_i is the LR multiplier of update i (schedule value
times lr_mult), S1(s) = sum_{i<s} eta_i is the forward area and S2(s) = sum_{i<s} m_i, with
m_i = lambda * m_{i-1} + (eta_{i-1} - eta_i), the annealing area.

Index convention. Row t of metrics.csv holds the loss of batch t on the weights entering update
t, i.e. after t updates; so the loss at row t is paired with the areas of updates 0..t-1. S1 and
S2 are computed on every optimiser step (an IIR filter over the full trace): subsampling the LR
trace would silently change the momentum's lag. Warmup steps count at peak LR (as the authors
do) and only post-warmup points are fitted.

Fit: Huber loss (delta 1e-3) on log(observed) - log(predicted), L-BFGS-B with every parameter
>= 0. Many starts: for each alpha on a grid the model is linear in (L0, A, C), so a non-negative
least-squares solve gives a good start per alpha; the best few starts are polished with tight
tolerances (the defaults stop early: the objective is small and L-BFGS-B's ftol is relative to
max(|f|, 1)), the exit status of every start is kept, the best is reported with its own status.
lambda is chosen on a small grid by the fit objective, and the report shows how every result,
the predicted optimal warmdown above all, moves with lambda. The grid is scaled to the run length
(scaled_lambdas): the momentum's time constant tau = 1 / (1 - lambda) is a fraction of the steps,
so that a 150-step and a 20,000-step run are asked the same question.

Which curve. Runs that log `curve_loss` (the loss on one fixed held-out batch every
trainer.curve_every steps, at warmdown start and after the last step) are fitted on it: it has no
batch-to-batch noise, so a few dozen points pin the law better than every noisy train-loss step.
Older records without it fall back to the per-step train_loss (Curve.column says which).

Beside this law, fit_cell fits the Multi-Power Law (multipower_law) on the same curves, scores both
on the held-out curves' final loss and predicts the optimum with the better one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, signal

from qat_lab.schedules import ScheduleConfig

HUBER_DELTA = 1e-3
DEFAULT_LAMBDAS = (0.9, 0.95, 0.99, 0.995, 0.999)
ALPHA_STARTS = tuple(np.geomspace(0.05, 3.0, 12))
N_POLISH = 2
"""Alpha-grid starts (the best by their linear pre-fit) polished with L-BFGS-B at the first lambda
of the grid; the others are polished from the previous lambda's solution (the fits are chained
along the grid), and the chosen one once more from its own best alpha-grid start."""
CANDIDATE_STEP = 0.02
CANDIDATE_FRACTIONS = tuple(np.round(np.arange(0.0, 1.0 + 1e-9, CANDIDATE_STEP), 2))
"""Warmdown fractions the fitted law is asked about when it predicts the optimum."""
LBFGS_OPTIONS = {"maxiter": 20000, "maxfun": 50000, "ftol": 1e-12, "gtol": 1e-8, "maxls": 50}
"""Tight: the objective is normalised to order 1-100 (see _Problem), so ftol is ~1e-11 absolute,
where scipy's default (2.2e-9 relative to max(|f|, 1)) would stop on an unnormalised objective of
order 1e-5 after it has barely moved."""
PARAM_NAMES = ("L0", "A", "alpha", "C")
TAU_FRACTIONS = (0.01, 0.03, 0.1, 0.3)
"""The momentum's time constant tau = 1 / (1 - lambda) as fractions of the run length (scaled_lambdas)."""
LOSS_COLUMNS = ("curve_loss", "train_loss")
"""The loss columns a fit can use, preferred first."""
MPL_OPTIONS = {"max_points": 80, "n_polish": 1}
"""The Multi-Power Law fit beside this one in fit_cell: subsampled to 80 points per curve and one
polished start, ~0.3 s a cell (its defaults, 400 points and 4 starts, take 1-8 s: too slow for a
sweep of 100 cells). Recovery on 80 uniform points differs from 400 well inside the noise."""


# ------------------------------------------------------------------------------ LR traces, areas

def schedule_of(record: dict) -> ScheduleConfig | None:
    """The run's schedule rebuilt from its resolved config (None if the record has none)."""
    fields = dict((record.get("config") or {}).get("schedule") or {})
    if not fields:
        return None
    fields.pop("_target_", None)
    return ScheduleConfig(**fields)


@dataclass
class Trace:
    eta: np.ndarray
    """LR multiplier for updates 0..T-1 (schedule x lr_mult), warmup steps already set to peak."""
    warmup: int
    source: str
    note: str = ""


def _peak_warmup(eta: np.ndarray, warmup: int, peak: float) -> np.ndarray:
    eta = eta.copy()
    eta[:warmup] = peak  # the authors count warmup steps at peak LR
    return eta


@functools.lru_cache(maxsize=4096)
def _trace(schedule: tuple, steps: int) -> np.ndarray:
    """ScheduleConfig(*schedule).trace(steps), cached (read-only): a sweep has a handful of
    distinct schedules, so each trace is computed once however many runs and candidates share it.
    The schedule comes as dataclasses.astuple(ScheduleConfig) because the dataclass is unhashable."""
    out = np.asarray(ScheduleConfig(*schedule).trace(steps), dtype=float)
    out.setflags(write=False)
    return out


def by_step(history: pd.DataFrame, column: str, steps: int) -> np.ndarray:
    """history[column] at steps 0..steps-1 as an array (NaN where a step has no value)."""
    out = np.full(steps, np.nan)
    # One float block for the whole frame (a view for metrics.csv histories): much cheaper than
    # pandas column access, which counts when thousands of runs are read.
    cols = list(history.columns)
    data = history.to_numpy(dtype=float)
    step, value = data[:, cols.index("step")], data[:, cols.index(column)]
    ok = (step >= 0) & (step < steps) & (step == np.round(step))
    out[step[ok].astype(int)] = value[ok]
    return out


def lr_trace(record: dict, history: pd.DataFrame | None) -> Trace | None:
    """eta_i for every update of a run: from its config (exact, every step), else from metrics.csv.

    The logged LRs of a parameter group are base_lr * lr_mult * multiplier, so dividing by their
    peak and multiplying by lr_mult gives the same trace; when both exist they are compared and a
    disagreement is noted (it would mean the schedule the run used is not the one its config says).
    """
    steps = record["axes"].get("steps")
    lr_mult = float(record["axes"].get("lr_mult", 1.0) or 1.0)
    schedule = schedule_of(record)
    logged = None
    if history is not None and steps:
        lr_cols = [c for c in history.columns if c.startswith("lr/")]
        if lr_cols:
            col = by_step(history, lr_cols[0], int(steps))
            if np.isfinite(col).all() and col.max() > 0:
                logged = col / col.max() * lr_mult
    if schedule is not None and steps:
        eta = _trace(dataclasses.astuple(schedule), int(steps)) * lr_mult
        note = ""
        if logged is not None and np.max(np.abs(logged - eta)) > 1e-6 * lr_mult:
            gap = np.max(np.abs(logged - eta)) / lr_mult
            note = f"logged LR differs from the config's schedule by up to {gap:.2g} (config used)"
        return Trace(_peak_warmup(eta, schedule.warmup_steps, lr_mult), schedule.warmup_steps, "config", note)
    if logged is not None:
        warmup = int(np.argmax(logged >= logged.max() * (1 - 1e-12)))  # first step at peak
        return Trace(_peak_warmup(logged, warmup, lr_mult), warmup, f"metrics.csv {lr_cols[0]}")
    return None


def areas(eta: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2) after k = 0..T updates (index k), from the full per-step trace."""
    eta = np.asarray(eta, dtype=float)
    drops = np.concatenate([[0.0], eta[:-1] - eta[1:]])  # eta_{i-1} - eta_i, nothing before step 0
    m = signal.lfilter([1.0], [1.0, -lam], drops)        # m_i = lam * m_{i-1} + drop_i
    s1 = np.concatenate([[0.0], np.cumsum(eta)])
    s2 = np.concatenate([[0.0], np.cumsum(m)])
    return s1, s2


def scaled_lambdas(steps: int, fractions=TAU_FRACTIONS) -> tuple[float, ...]:
    """lambda = 1 - 1/tau with tau = steps x fraction: the momentum remembers a fixed share of the run.

    A fixed grid (0.9 ... 0.999) means a lag of 10-1000 steps whatever the run length: all of a
    150-step run at one end, a sliver of a 20,000-step one at the other. Values outside (0, 1)
    (tau <= 1 on very short runs) are dropped and duplicates merged.
    """
    lams = {round(1.0 - 1.0 / (steps * f), 12) for f in fractions if steps * f > 1.0}  # round: dedupe
    return tuple(sorted(lam for lam in lams if 0.0 < lam < 1.0)) or DEFAULT_LAMBDAS


def loss_column(history: pd.DataFrame | None) -> str:
    """'curve_loss' when the history has one finite value of it, else 'train_loss' (older records)."""
    if history is not None and "curve_loss" in history and history["curve_loss"].notna().any():
        return "curve_loss"
    return "train_loss"


def law(params: dict | np.ndarray, s1, s2) -> np.ndarray:
    L0, A, alpha, C = (params[k] for k in PARAM_NAMES) if isinstance(params, dict) else params
    with np.errstate(divide="ignore"):
        return L0 + A * np.power(s1, -alpha) - C * s2


# ------------------------------------------------------------------------------ curves and fit

@dataclass
class Curve:
    """One loss curve to fit or predict: a seed-mean loss with its LR trace."""
    warmdown: float
    loss: np.ndarray
    """Loss after k updates (row k of metrics.csv): k = 0..T-1 for train_loss, 0..T for curve_loss
    (logged after the last step too); NaN where the column has no value."""
    trace: Trace
    n_seeds: int
    run_ids: list[str] = field(default_factory=list)
    """The runs whose curves were averaged (fits.json names them rather than repeating the data)."""
    column: str = "train_loss"
    """The metrics.csv column the loss comes from (LOSS_COLUMNS)."""

    def final_point(self) -> tuple[int, float]:
        """(row, loss) of the last finite point: the run's final loss as the curve measures it."""
        k = int(np.flatnonzero(np.isfinite(self.loss))[-1])
        return k, float(self.loss[k])

    def points(self, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(k, S1, S2, loss) at the fitted points: post-warmup, S1 > 0, finite loss."""
        s1, s2 = areas(self.trace.eta, lam)
        k = np.arange(len(self.loss))
        keep = (k >= max(self.trace.warmup, 1)) & np.isfinite(self.loss) & (self.loss > 0)
        return k[keep], s1[k[keep]], s2[k[keep]], self.loss[keep]


@dataclass
class Fit:
    params: dict[str, float]
    lam: float
    objective: float
    success: bool
    message: str
    n_starts: int
    n_converged: int
    n_points: int

    @property
    def at_bound(self) -> list[str]:
        """Parameters pinned at their bound 0: the data did not determine them (e.g. L0 = 0 when
        the curves are still in their fast early descent); worth a flag in the report."""
        return [k for k in PARAM_NAMES if self.params[k] == 0.0]


class _Problem:
    """The Huber objective in scaled variables: S1 and S2 divided by their maxima.

    The raw areas run from 1 to T * lr_mult (S1) and from 0 to a few hundred (S2), which makes
    A and C differ by orders of magnitude; scaling both to [0, 1] conditions L-BFGS-B.
    """

    def __init__(self, s1: np.ndarray, s2: np.ndarray, y: np.ndarray, delta: float):
        self.sc1 = float(s1.max())
        self.sc2 = float(s2.max()) if s2.max() > 0 else 1.0
        self.u, self.v, self.y, self.delta = s1 / self.sc1, s2 / self.sc2, y, delta
        self.logy, self.logu = np.log(y), np.log(self.u)
        # Mean Huber / delta^2: about |r|/delta in the linear regime, so values of order 1-100 and
        # L-BFGS-B's relative ftol means what it says.
        self.norm = 1.0 / (len(y) * delta * delta)

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        L0, a, alpha, c = theta
        pw = np.exp(-alpha * self.logu)
        pred = L0 + a * pw - c * self.v
        if pred.min() <= 1e-12:
            # log(pred) is undefined: charge a large, finite cost (what a prediction of 1e-12
            # would cost) so the line search backs off, without a gradient through the floor.
            ok = pred > 1e-12
            pred = np.where(ok, pred, 1e-12)
        else:
            ok = None
        r = self.logy - np.log(pred)
        psi = np.clip(r, -self.delta, self.delta)  # Huber's derivative
        value = float(psi @ (r - 0.5 * psi)) * self.norm  # = sum of Huber(r): r^2/2 inside, delta(|r| - delta/2) outside
        w = psi / pred * -self.norm  # d(objective)/d(pred) per point
        if ok is not None:
            w = np.where(ok, w, 0.0)
        wpw = w * pw
        return value, np.array([w.sum(), wpw.sum(), -a * (wpw @ self.logu), -(w @ self.v)])

    def linear_start(self, alpha: float) -> np.ndarray:
        """(L0, a, alpha, c) with L0, a, c >= 0 from non-negative least squares at this alpha."""
        X = np.column_stack([np.ones_like(self.u), np.exp(-alpha * self.logu), -self.v])
        coef, _ = optimize.nnls(X, self.y)
        return np.array([coef[0], coef[1], alpha, coef[2]])

    def to_params(self, theta: np.ndarray) -> dict[str, float]:
        L0, a, alpha, c = theta
        return {"L0": float(L0), "A": float(a * self.sc1 ** alpha), "alpha": float(alpha), "C": float(c / self.sc2)}

    def from_params(self, p: dict[str, float]) -> np.ndarray:
        return np.array([p["L0"], p["A"] / self.sc1 ** p["alpha"], p["alpha"], p["C"] * self.sc2])


def fit_law(curves: list[Curve], lam: float, delta: float = HUBER_DELTA, warm_start: dict | None = None,
            n_polish: int = N_POLISH) -> Fit:
    """Fit (L0, A, alpha, C) at one lambda on the pooled post-warmup points of `curves`.

    Starts: one per alpha of ALPHA_STARTS with (L0, A, C) from a non-negative linear fit; the
    `n_polish` best of them, and `warm_start` if given, are polished; the best result is kept.
    """
    pts = [c.points(lam) for c in curves]
    s1, s2, y = (np.concatenate([p[i] for p in pts]) for i in (1, 2, 3))
    prob = _Problem(s1, s2, y, delta)
    starts = [prob.linear_start(a) for a in ALPHA_STARTS] if n_polish else []
    starts.sort(key=lambda th: prob.value_grad(th)[0])
    starts = starts[:n_polish]
    if warm_start is not None:
        starts.append(prob.from_params(warm_start))
    best, n_ok = None, 0
    for theta0 in starts:
        res = optimize.minimize(prob.value_grad, theta0, jac=True, method="L-BFGS-B",
                                bounds=[(0.0, None)] * 4, options=LBFGS_OPTIONS)
        n_ok += bool(res.success)
        if best is None or res.fun < best.fun:
            best = res
    return Fit(params=prob.to_params(best.x), lam=lam, objective=float(best.fun), success=bool(best.success),
               message=str(best.message), n_starts=len(starts), n_converged=n_ok, n_points=len(y))


def curve_quality(curve: Curve, params: dict, lam: float) -> dict:
    """R^2 and MAE (nats) of the law's prediction of one curve, over its post-warmup points."""
    _, s1, s2, y = curve.points(lam)
    pred = law(params, s1, s2)
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"warmdown": curve.warmdown, "n_seeds": curve.n_seeds, "n_points": len(y),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan, "mae": float(np.abs(y - pred).mean()),
            "ss_res": ss_res, "ss_tot": ss_tot, "final_observed": float(y[-1]), "final_predicted": float(pred[-1])}


def _pooled(quality: list[dict], curves: list[Curve], lam: float) -> dict:
    if not quality:
        return {"r2": math.nan, "mae": math.nan}
    ys = np.concatenate([c.points(lam)[3] for c in curves])
    ss_res = sum(q["ss_res"] for q in quality)
    ss_tot = float(((ys - ys.mean()) ** 2).sum())
    mae = sum(q["mae"] * q["n_points"] for q in quality) / sum(q["n_points"] for q in quality)
    return {"r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan, "mae": mae}


@functools.lru_cache(maxsize=256)
def _candidate_etas(schedule: tuple, steps: int, lr_mult: float, fractions: tuple = CANDIDATE_FRACTIONS) -> np.ndarray:
    """eta traces (rows, warmup at peak) for candidate warmdown fractions of one schedule; shared by all cells."""
    base = ScheduleConfig(*schedule)
    rows = [_trace(dataclasses.astuple(dataclasses.replace(base, warmdown=float(f))), steps) for f in fractions]
    return np.array([_peak_warmup(r * lr_mult, base.warmup_steps, lr_mult) for r in rows])


def candidate_etas(schedule: ScheduleConfig, steps: int, lr_mult: float = 1.0, fractions=CANDIDATE_FRACTIONS) -> np.ndarray:
    """Traces of `schedule` at each warmdown fraction, warmup at peak (this law's convention)."""
    return _candidate_etas(dataclasses.astuple(schedule), steps, lr_mult, tuple(float(f) for f in fractions))


def predicted_final(params: dict, lam: float, etas: np.ndarray) -> np.ndarray:
    """The law's loss after the last update for each row of eta traces."""
    drops = np.concatenate([np.zeros((len(etas), 1)), etas[:, :-1] - etas[:, 1:]], axis=1)
    m = signal.lfilter([1.0], [1.0, -lam], drops, axis=1)
    return law(params, etas.sum(axis=1), m.sum(axis=1))


# ------------------------------------------------------------------------------ one cell

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
        from qat_lab.analysis import multipower_law as mpl  # imports this module: a late import

        try:
            out.mpl = mpl.fit_mpl(fit_curves, **MPL_OPTIONS)
        except ValueError as e:  # too few points; the cell keeps Tissue's law
            out.mpl_error = str(e)
    return out


def _mpl_predictions(out: CellLaw, mpl_fit, held: list[Curve], schedule, steps: int, lr_mult: float,
                     can_predict_optimum: bool) -> None:
    """The Multi-Power Law's held-out error and predicted optimum."""
    from qat_lab.analysis import multipower_law as mpl  # imports this module: a late import

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
        etas = _candidate_etas(dataclasses.astuple(schedule), steps, lr_mult)
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
               "fit": _pooled([curve_quality(c, fit.params, lam) for c in fit_curves], fit_curves, lam),
               "heldout": _pooled(held_q, held, lam), "heldout_curves": held_q}
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
