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

One cell's fits (this law beside the Multi-Power Law, the better one predicting) are cell_fit.py's.
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
from qat_lab.validation import build_dataclass

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


# ------------------------------------------------------------------------------ LR traces, areas

def schedule_of(record: dict) -> ScheduleConfig | None:
    """The run's schedule rebuilt from its resolved config (None if the record has none)."""
    fields = (record.get("config") or {}).get("schedule") or {}
    return build_dataclass(fields, "schedule", ScheduleConfig) if fields else None


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
class FitOutcome:
    """What a fit of either law reports: its parameters, and how the optimiser ended."""
    params: dict[str, float]
    objective: float
    """The Huber objective of the best start (normalised: mean Huber / delta^2)."""
    success: bool
    """L-BFGS-B's exit status for the best start."""
    message: str
    n_starts: int
    """Starts polished."""
    n_converged: int
    """Of those, how many L-BFGS-B reported converged."""
    n_points: int


@dataclass
class Fit(FitOutcome):
    """Tissue's law fitted at one lambda."""
    lam: float = math.nan

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


def pooled_quality(quality: list[dict], curves: list[Curve], lam: float) -> dict:
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
