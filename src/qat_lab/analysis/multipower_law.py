"""The Multi-Power Law (Luo et al., ICLR 2025, arXiv 2503.12811; METHOD section 8b).

The law. In the paper's notation the updates after warmup are tau = 1..T with LR eta_tau, eta_0 is
the LR at the end of warmup (the peak), S_W is the LR area of the warmup, and

    L(t)  = L0 + A * (S1(t) + S_W)^(-alpha) - LD(t),          S1(t)  = sum_{tau=1..t} eta_tau
    LD(t) = B * sum_{k=1..t} (eta_{k-1} - eta_k) * G(eta_k^(-gamma) * S_k(t)),
                                                               S_k(t) = sum_{tau=k..t} eta_tau
    G(x)  = 1 - (C x + 1)^(-beta)

with seven parameters (L0, A, alpha, B, C, beta, gamma), all >= 0; L(t) is the loss after t
post-warmup updates. A constant schedule has LD = 0: a power law in the LR area. Each LR drop
eta_{k-1} - eta_k buys a loss reduction of up to B times the drop, which saturates (G from 0 to 1)
as LR area S_k(t) accumulates after the drop, the faster the smaller the new LR (eta_k^-gamma).

Mapping onto qatlab's indices (annealing_law's convention). qatlab's updates are i = 0..T-1 with
eta[i]; row r of metrics.csv is the loss after r updates (it has seen eta[0..r-1]). With W warmup
updates, the paper's update tau is qatlab's update W + tau - 1 and the paper's L(t) is row
r = W + t; eta_0 is eta[W-1] (qatlab's ramp (i+1)/W reaches the peak at i = W-1), or eta[0] when
W = 0 (no drop at the first update). With P[r] = sum_{i<r} eta[i] (annealing_law.areas' S1, here
on the trace as run):

    S1(t) + S_W = P[r]                 all r updates, the warmup at its true LRs
    S_k(t)      = P[r] - P[j]          j = W + k - 1, the update where the new LR first applies,
                                       through update r - 1 (both ends included, as the paper's)
    drop_k      = eta[j-1] - eta[j]    for j = max(W, 1) .. r - 1

Only the j where the LR changes contribute, so LD at n rows is an (n rows) x (m change steps)
matrix expression: S = max(P[r] - P[j], 0) (zero exactly when j >= r: the drop has not happened
after r updates), G on that matrix, a product with the drop vector; rows before the first change
are skipped (LD = 0 there). No loop over steps: whole long curves are predicted in blocks of rows
(_BLOCK_ENTRIES) only to bound memory. predicted_final evaluates one row per trace, vectorised
over (traces x steps).

What differs from annealing_law (where qatlab and the paper differ, MPL follows the paper):
- The warmup. annealing_law counts warmup steps at peak LR (Tissue et al.); MPL's S_W is the LR
  area of the warmup as run, so the fit restores qatlab's linear ramp eta[i] = peak (i+1)/W
  (mpl_trace; lr_trace stores the warmup at peak): S_W = peak (W+1)/2 rather than peak W. LR
  changes inside the warmup are not drops: the sum starts at the first post-warmup update. (The
  authors' released code also sums its drop term over the warmup, where the LR rises, i.e. a
  negative drop of the whole peak; we follow the paper's formula, METHOD 8b.)
- The fitted points are annealing_law's: rows r >= max(W, 1) with a finite positive loss, so the
  two laws see the same points of the same curves, except that a curve with more of them than
  max_points is fitted on a subsample (below), and that for a trace read from logged LRs
  lr_trace's warmup is the first step at peak, W - 1 for qatlab's ramp: mpl_trace takes W there,
  so MPL fits one row fewer than annealing_law (the row before the last warmup update).
- The eta units are qatlab's (schedule x lr_mult), not absolute LRs as in the paper, so A, B and C
  are not the paper's numbers: the law is invariant under eta -> f eta with A f^alpha, B / f,
  C f^(gamma - 1) (rescale_params); L0 and the exponents are unit-free.

eta_k = 0 (a trace that reaches exactly 0, e.g. hand-made or logged; qatlab's wsd and cosine never
run an update at 0, since r < 1 at the last step). eta_k^(-gamma) is infinite, and the law is
taken at its limit: while the LR stays 0 after the drop, S_k(t) = 0 and G = 0 (an update at LR 0
changes nothing, so the loss after it equals the loss before it; this is also the limit eta_k -> 0
for gamma < 1); once LR area accrues after it (the LR rose again), x = inf and G = 1 (the limit for
any gamma > 0). With gamma = 0 exactly, eta_k^0 = 1; with C = 0 or beta = 0, G = 0 everywhere. In
the fit these terms carry no gradient (G is flat in C, beta, gamma > 0 there).

Fit (annealing_law's discipline): Huber loss (delta HUBER_DELTA) on log(observed) - log(predicted),
normalised to the mean over points divided by delta^2 (order 1-100, so LBFGS_OPTIONS' ftol means
what it says), every parameter >= 0 with upper bounds alpha <= 4, beta <= 10, gamma <= 2 (UPPER:
beyond them u^-alpha and eta^-gamma span dozens of decades on a long trace and the fit means
nothing) and B x peak <= the largest fitted loss (B_MAX_LOSS), analytic derivatives. Variables are
scaled: eta by the pooled peak, LR areas by the largest P at a fitted point, so that
(L0, a, b) are of the order of the loss; c = C peak^-gamma P_max spans decades, and L-BFGS-B works
on every variable divided by its start value (exponents unscaled).
Each start is polished twice: least_squares' trust-region-reflective method with loss='huber',
f_scale=delta (exactly the same objective and bounds, Gauss-Newton on the residuals' Jacobian),
then L-BFGS-B (LBFGS_OPTIONS) from its result, whose exit status the fit reports. L-BFGS-B alone
stalls in the law's long curved valleys (B G(x) ~ B - B (C x)^-beta once C x >> 1: B, C and beta
trade off): on noise-free curves it stopped on ftol at an objective of ~1e-5 with B off by a factor
of 2, where the TRF stage reaches 1e-27 and the planted parameters in ~100 evaluations.
Starts: a grid over (gamma, C, beta) x alpha (GRID_*, 4 x 6 x 4 x 7 = 672 points); at each the law
is linear in (L0, A, B), solved by non-negative least squares; G depends on (gamma, C, beta) only
and A's power on alpha only, so the matrix work is 96 evaluations of G, not 672. The points are
ranked by the Huber objective and the N_POLISH best (and warm_start, if given) are polished; the
exit status of every start is counted and the best result is reported with its own.

Subsampling: a curve with more fitted rows than max_points (DEFAULT_MAX_POINTS = 400; None: all) is
fitted on max_points of them, "uniform" in step (the default; first and last rows included) or
"log" (log-spaced from the first fitted row to the last, deduplicated, so possibly fewer). Uniform
is the default because log spacing puts most points in the early descent, where LD = 0, and few in
the warmdown that determines B, C, beta and gamma. The LR areas are always computed on the full
per-step trace; only the points where the law is evaluated are thinned. Each curve gets its own
max_points, so a pooled fit weighs the curves equally per point, whatever their length.

What one warmdown can tell: with constant + one WSD curve (1000 steps) and 0.1% per-step noise,
L0, A, alpha come out within 1-2% and gamma within ~25%, while B, C and beta trade off along a
valley (over six noise seeds B was 320-3300, beta 0.02-1.9); the loss drop they make on the fitted
warmdown is right to ~1%, held-out final losses (warmdown 0.2) to 0.01-0.16%, the optimal warmdown
to one step of the 0.02 grid. With more noise the fit may follow the valley to B large, beta -> 0
(B G -> B beta log(1 + C x)), towards B's bound (at_bound says when it gets there).

Cost (2 shared cores): at T = 20,000 with a 30% warmdown (5,999 change steps), LD at 400 rows takes
~25 ms, LD at all 19,800 rows ~1.1 s, predicted_final for 51 candidate traces ~70 ms, and the
objective with its gradient on 2 x 400 points ~18 ms (the elementwise work goes through rows in
cache-sized chunks, _CHUNK_ENTRIES, 4x faster than whole-matrix temporaries). A fit on 2 curves of
1,000 steps takes 2-4 s (up to ~13 s when a start crawls along the valley to TRF's evaluation cap),
and on 2 curves of 20,000 steps ~17 s.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from qat_lab.analysis.annealing_law import CANDIDATE_FRACTIONS, HUBER_DELTA, LBFGS_OPTIONS, Curve, FitOutcome, Trace
from qat_lab.schedules import ScheduleConfig

PARAM_NAMES = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
EQUATION = ("L(t) = L0 + A (S1(t) + S_W)^-alpha - B sum_k (eta_{k-1} - eta_k) G(eta_k^-gamma S_k(t)), "
            "G(x) = 1 - (C x + 1)^-beta")
UPPER = {"alpha": 4.0, "beta": 10.0, "gamma": 2.0}
"""Upper bounds of the exponents; every parameter is >= 0. B is bounded by B_MAX_LOSS x the largest
fitted loss / the peak eta (_Problem.upper); L0, A and C are unbounded above."""
B_MAX_LOSS = 1.0
"""B x peak is the loss reduction the law credits to a full drop from the peak to 0 once it has
saturated (G = 1): more than the whole loss is meaningless. Without a bound a noisy fit on one
warmdown can run off along B -> inf, beta -> 0 (B G -> B beta log(1 + C x), a limit law)."""
DEFAULT_MAX_POINTS = 400
SPACINGS = ("uniform", "log")
GRID_ALPHA = (0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5)
GRID_GAMMA = (0.1, 0.4, 0.7, 1.0)
GRID_BETA = (0.25, 0.5, 1.0, 2.0)
GRID_C = tuple(float(c) for c in np.geomspace(0.3, 3e4, 6))
"""In scaled units, c = C peak^-gamma P_max: a drop whose LR area since is a fraction s of the whole
(scaled) area has C x = c s (eta / peak)^-gamma; real curves have c of 10-1e4."""
N_POLISH = 4
TRF_OPTIONS = {"xtol": 1e-12, "ftol": 1e-12, "gtol": 1e-12, "max_nfev": 500}
"""least_squares' stage of every start: tight, with a cap on evaluations (a start that needs more is
crawling along a valley; L-BFGS-B takes over from where it stopped)."""
_CHUNK_ENTRIES = 1 << 16
"""Rows x change steps per chunk of the elementwise work (512 KB of float64: stays in cache)."""
_BLOCK_ENTRIES = 1 << 22
"""Rows x change steps per block when a long curve is predicted at many rows (32 MB of float64)."""
_PRED_FLOOR = 1e-12


# ------------------------------------------------------------------------------ traces and the law

def mpl_trace(trace: Trace) -> tuple[np.ndarray, int]:
    """(the LRs as run, the number of warmup updates W): trace.eta with qatlab's linear warmup ramp
    restored.

    annealing_law.lr_trace stores the warmup at peak LR (Tissue et al.'s convention); the MPL's S_W
    is the warmup's true area, and qatlab's ramp is peak (i+1)/W (ScheduleConfig.multiplier), so
    eta[i] = eta[W-1] (i+1) / W for i < W. A trace from the config has trace.warmup = W; one from
    logged LRs (source 'metrics.csv ...') has the first step at peak, which is W - 1 for this ramp
    (W = 1 reads as 0, which is the same trace), so W = trace.warmup + 1 there.
    """
    eta = np.array(trace.eta, dtype=float)
    w = int(trace.warmup)
    if w > 0 and trace.source != "config":
        w += 1
    if w > 0:
        eta[:w] = eta[w - 1] * (np.arange(w) + 1.0) / w
    return eta, w


def mpl_eta(trace: Trace) -> np.ndarray:
    """The LRs as run (mpl_trace without W)."""
    return mpl_trace(trace)[0]


def rescale_params(params: dict, factor: float) -> dict:
    """The parameters of the same law for eta' = factor x eta (e.g. factor = the base LR, to compare
    qatlab's multiplier-unit fits with the paper's absolute-LR ones)."""
    p = dict(params)
    p["A"] = params["A"] * factor ** params["alpha"]
    p["B"] = params["B"] / factor
    p["C"] = params["C"] * factor ** (params["gamma"] - 1.0)
    return p


def _params(params) -> tuple[float, ...]:
    if isinstance(params, dict):
        return tuple(float(params[k]) for k in PARAM_NAMES)
    return tuple(float(v) for v in params)


def _changes(eta: np.ndarray, warmup: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(j, drop_j = eta[j-1] - eta[j], eta[j]) for the post-warmup updates j where the LR changes."""
    start = max(int(warmup), 1)
    drop = eta[start - 1:-1] - eta[start:]
    j = np.flatnonzero(drop != 0.0) + start
    return j, drop[j - start], eta[j]


def _accumulate(S, log_eta, drop, dmat, c, beta, gamma, grad):
    """sum_j drop_j G(c eta_j^-gamma S_rj) per row of S (rows x changes, all eta_j > 0), and with
    grad its derivatives in c, beta, gamma. dmat = [drop, drop * log_eta] (changes x 2).

    Rows go through in chunks of about _CHUNK_ENTRIES entries: the arithmetic is elementwise on
    the chunk, and chunks that stay in cache are ~4x faster than whole-matrix temporaries (a
    121 x 5998 matrix: 22 ms against 98 ms with derivatives)."""
    n = len(S)
    outs = [np.empty(n) for _ in range(4 if grad else 1)]
    eg = np.exp(-gamma * log_eta)
    step = max(1, _CHUNK_ENTRIES // max(S.shape[1], 1))
    for lo in range(0, n, step):
        sl = slice(lo, lo + step)
        x = S[sl] * eg
        cx = x * c
        lv = np.log1p(cx)
        em = np.multiply(lv, -beta)
        np.expm1(em, out=em)                    # q - 1, q = (1 + c x)^-beta
        outs[0][sl] = -(em @ drop)              # G = 1 - q, exact for small c x
        if not grad:
            continue
        q = np.add(em, 1.0, out=em)
        lv *= q
        outs[2][sl] = lv @ drop                 # dG/dbeta = q log(1 + c x)
        cx += 1.0
        x *= q
        x /= cx
        x *= beta                               # dG/dc = beta q x / (1 + c x)
        both = x @ dmat
        outs[1][sl] = both[:, 0]
        outs[3][sl] = -c * both[:, 1]           # dG/dgamma = dG/dc c (-log eta)
    return outs


def _zero_lr_sum(Sz: np.ndarray, dz: np.ndarray, c: float, beta: float, gamma: float) -> np.ndarray:
    """The drops to an LR of exactly 0 (see the docstring): G = [S > 0] for gamma, c, beta > 0."""
    if c == 0.0 or beta == 0.0:
        return np.zeros(len(Sz))
    if gamma == 0.0:  # eta^0 = 1
        return -(np.expm1(-beta * np.log1p(c * Sz)) @ dz)
    return (Sz > 0.0).astype(float) @ dz


def _rows_default(T: int, warmup: int) -> np.ndarray:
    return np.arange(max(int(warmup), 1), T + 1)


def loss_drop(params, eta, warmup: int = 0, rows=None) -> np.ndarray:
    """LD after r updates for each r in rows (default every post-warmup row max(W,1)..T), eta as run.

    Vectorised over (rows x change steps), in blocks of rows of at most _BLOCK_ENTRIES entries.
    """
    _, _, _, B, C, beta, gamma = _params(params)
    eta = np.asarray(eta, dtype=float)
    rows = _rows_default(len(eta), warmup) if rows is None else np.asarray(rows, dtype=int)
    P = np.concatenate([[0.0], np.cumsum(eta)])
    j, drop, eta_j = _changes(eta, warmup)
    out = np.zeros(len(rows))
    if len(j) == 0 or len(rows) == 0 or B == 0.0:
        return out
    pos = eta_j > 0
    jp, dp, jz, dz = j[pos], drop[pos], j[~pos], drop[~pos]
    log_eta = np.log(eta_j[pos])
    dmat = np.column_stack([dp, dp * log_eta])
    active = np.flatnonzero(rows > j[0])  # LD = 0 up to the first change (a WSD's stable phase)
    step = max(1, _BLOCK_ENTRIES // len(j))
    for lo in range(0, len(active), step):  # blocks of rows (memory), not a loop over steps
        at = active[lo:lo + step]
        r = P[rows[at]][:, None]
        ld = _accumulate(np.maximum(r - P[jp][None, :], 0.0), log_eta, dp, dmat, C, beta, gamma, False)[0]
        if len(jz):
            ld = ld + _zero_lr_sum(np.maximum(r - P[jz][None, :], 0.0), dz, C, beta, gamma)
        out[at] = B * ld
    return out


def law_curve(params, eta, warmup: int = 0, rows=None) -> np.ndarray:
    """The law's loss after r updates for r in rows (default every row 0..T); eta as run (mpl_trace).

    NaN at rows before max(W, 1): the warmup is not the law's business (and P[0] = 0).
    """
    L0, A, alpha, *_ = _params(params)
    eta = np.asarray(eta, dtype=float)
    rows = np.arange(len(eta) + 1) if rows is None else np.asarray(rows, dtype=int)
    P = np.concatenate([[0.0], np.cumsum(eta)])
    out = np.full(len(rows), np.nan)
    ok = rows >= max(int(warmup), 1)
    out[ok] = L0 + A * P[rows[ok]] ** -alpha - loss_drop(params, eta, warmup, rows[ok])
    return out


def predicted_final(params, etas, warmup: int = 0) -> np.ndarray:
    """The law's loss after the last update for each row of `etas` (traces as run, one length and
    warmup), vectorised over (traces x steps): the final loss of every candidate schedule at once."""
    L0, A, alpha, B, C, beta, gamma = _params(params)
    etas = np.atleast_2d(np.asarray(etas, dtype=float))
    start = max(int(warmup), 1)
    P = np.cumsum(etas, axis=1)
    total = P[:, -1]
    power = L0 + A * total ** -alpha
    if etas.shape[1] <= start or B == 0.0 or C == 0.0 or beta == 0.0:
        return power
    drop = etas[:, start - 1:-1] - etas[:, start:]        # at updates j = start..T-1 (0 where no change)
    S = np.maximum(total[:, None] - P[:, start - 1:-1], 0.0)  # P[T] - P[j] = sum_{i=j..T-1} eta_i
    with np.errstate(divide="ignore", invalid="ignore"):
        pw = np.power(etas[:, start:], -gamma)               # inf at eta = 0 (gamma > 0), 1 at gamma = 0
        x = np.where(S > 0.0, S * pw, 0.0)                   # S = 0: G = 0 whatever eta; S > 0, eta = 0: x = inf, G = 1
    g = -np.expm1(-beta * np.log1p(C * x))
    return power - B * np.einsum("ij,ij->i", g, drop)


@functools.lru_cache(maxsize=64)
def _schedule_trace(schedule: tuple, steps: int) -> np.ndarray:
    out = np.asarray(ScheduleConfig(*schedule).trace(steps), dtype=float)
    out.setflags(write=False)
    return out


def candidate_etas(schedule: ScheduleConfig, steps: int, lr_mult: float = 1.0,
                   fractions=CANDIDATE_FRACTIONS) -> np.ndarray:
    """Traces as run (warmup ramp included) for every warmdown fraction of one schedule, as rows."""
    return np.array([_schedule_trace(dataclasses.astuple(dataclasses.replace(schedule, warmdown=float(f))), steps)
                     for f in fractions]) * lr_mult


def predicted_optimum(params, schedule: ScheduleConfig, steps: int, lr_mult: float = 1.0,
                      fractions=CANDIDATE_FRACTIONS) -> tuple[float, np.ndarray]:
    """(the warmdown fraction with the lowest predicted final loss, the final losses per fraction)."""
    final = predicted_final(params, candidate_etas(schedule, steps, lr_mult, fractions), schedule.warmup_steps)
    return float(fractions[int(np.argmin(final))]), final


# ------------------------------------------------------------------------------ fitted points

def fit_rows(curve: Curve, max_points: int | None = DEFAULT_MAX_POINTS, spacing: str = "uniform") -> np.ndarray:
    """The rows of `curve` the law is fitted on: annealing_law's (r >= max(W, 1), finite loss > 0;
    W from mpl_trace, so a trace from logged LRs starts one row later than annealing_law's, whose
    warmup there is W - 1), thinned to at most max_points (None: all) by `spacing` ('uniform' or
    'log', see the docstring)."""
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r} is not one of {', '.join(SPACINGS)}")
    k = np.arange(len(curve.loss))
    rows = k[(k >= max(mpl_trace(curve.trace)[1], 1)) & np.isfinite(curve.loss) & (curve.loss > 0)]
    if max_points is None or len(rows) <= max_points:
        return rows
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (the first and last rows)")
    if spacing == "uniform":
        return rows[np.round(np.linspace(0, len(rows) - 1, max_points)).astype(int)]
    want = np.geomspace(rows[0], rows[-1], max_points)
    pos = np.clip(np.searchsorted(rows, want), 0, len(rows) - 1)
    left = np.clip(pos - 1, 0, len(rows) - 1)
    nearest = np.where(np.abs(rows[left] - want) < np.abs(rows[pos] - want), left, pos)
    return rows[np.unique(nearest)]


@dataclass
class _Block:
    """One curve's fitted points in scaled units. Only the rows after its first LR change are in the
    matrices (the others have LD = 0: a WSD curve's stable phase costs nothing)."""
    n: int                # fitted points of the curve
    active: np.ndarray    # indices (into the curve's points) of the rows with some change before them
    S: np.ndarray         # (active x changes to eta > 0): LR area since the change / P_max, 0 before it
    log_eta: np.ndarray   # log(eta_j / peak)
    drop: np.ndarray      # drop_j / peak
    dmat: np.ndarray      # [drop, drop * log_eta]
    Sz: np.ndarray        # (active x changes to eta = 0): the same
    dz: np.ndarray


def _curve_data(curve: Curve, eta: np.ndarray | None, max_points, spacing):
    as_run, warmup = mpl_trace(curve.trace)
    eta = as_run if eta is None else np.asarray(eta, dtype=float)
    if len(eta) < len(curve.loss) - 1:
        raise ValueError("the LR trace is shorter than the loss curve")
    rows = fit_rows(curve, max_points, spacing)
    P = np.concatenate([[0.0], np.cumsum(eta)])
    j, drop, eta_j = _changes(eta, warmup)
    keep = j < (rows.max() if len(rows) else 0)  # changes after the last fitted row never count
    return rows, P, curve.loss[rows], j[keep], drop[keep], eta_j[keep], float(eta.max())


class _Problem:
    """The Huber objective, residuals and derivatives in scaled variables (L0, a, alpha, b, c, beta,
    gamma): u = P / P_max, eta_hat = eta / peak, d_hat = drop / peak, S_hat = S / P_max, and

        pred = L0 + a u^-alpha - b sum_j d_hat_j G(c eta_hat_j^-gamma S_hat_rj)

    (to_params / from_params convert to and from the law's parameters)."""

    def __init__(self, data: list, delta: float):
        self.peak = max(d[6] for d in data)
        self.sc1 = max(float(d[1][d[0]].max()) for d in data if len(d[0]))
        u, y, self.blocks = [], [], []
        for rows, P, loss, j, drop, eta_j, _ in data:
            u.append(P[rows] / self.sc1)
            y.append(loss)
            active = np.flatnonzero(rows > j.min()) if len(j) else np.zeros(0, dtype=int)
            S = np.maximum(P[rows[active]][:, None] - P[j][None, :], 0.0) / self.sc1
            pos = eta_j > 0
            log_eta = np.log(eta_j[pos] / self.peak)
            d = drop / self.peak
            self.blocks.append(_Block(len(rows), active, S[:, pos], log_eta, d[pos],
                                      np.column_stack([d[pos], d[pos] * log_eta]), S[:, ~pos], d[~pos]))
        self.u, self.y = np.concatenate(u), np.concatenate(y)
        self.logu, self.logy = np.log(self.u), np.log(self.y)
        self.delta = delta
        self.norm = 1.0 / (len(self.y) * delta * delta)  # mean Huber / delta^2: order 1-100
        self.upper = np.array([np.inf, np.inf, UPPER["alpha"], B_MAX_LOSS * float(self.y.max()), np.inf,
                               UPPER["beta"], UPPER["gamma"]])
        """Upper bounds of the scaled variables (b = B x peak)."""
        self._last = None

    def drop_term(self, c: float, beta: float, gamma: float, grad: bool = False) -> list[np.ndarray]:
        """[D] or [D, dD/dc, dD/dbeta, dD/dgamma] per point, D = sum_j d_hat_j G_rj, pooled."""
        outs = [np.zeros(len(self.y)) for _ in range(4 if grad else 1)]
        at = 0
        for blk in self.blocks:
            idx = at + blk.active
            if len(idx) and blk.S.shape[1]:
                for o, v in zip(outs, _accumulate(blk.S, blk.log_eta, blk.drop, blk.dmat, c, beta, gamma, grad)):
                    o[idx] += v
            if len(idx) and blk.Sz.shape[1]:  # drops to LR 0: no gradient (flat in c, beta, gamma > 0)
                outs[0][idx] += _zero_lr_sum(blk.Sz, blk.dz, c, beta, gamma)
            at += blk.n
        return outs

    def predict(self, theta: np.ndarray, grad: bool = False):
        """pred per point and, with grad, d(pred)/d(theta) as a (points x 7) matrix (the last one is
        kept: least_squares asks for the residuals and then the Jacobian at the same point)."""
        key = np.asarray(theta, dtype=float).tobytes()
        if grad and self._last is not None and self._last[0] == key:
            return self._last[1]
        L0, a, alpha, b, c, beta, gamma = theta
        terms = self.drop_term(c, beta, gamma, grad)
        pw = np.exp(-alpha * self.logu)
        pred = L0 + a * pw - b * terms[0]
        if not grad:
            return pred
        D, Dc, Dbeta, Dgamma = terms
        J = np.column_stack([np.ones_like(pw), pw, -a * pw * self.logu, -D, -b * Dc, -b * Dbeta, -b * Dgamma])
        self._last = (key, (pred, J))
        return pred, J

    def _huber(self, pred: np.ndarray):
        ok = pred > _PRED_FLOOR
        if not ok.all():
            # log(pred) is undefined: charge what a prediction of 1e-12 would cost, so the line
            # search backs off, without a gradient through the floor (as annealing_law does).
            pred = np.where(ok, pred, _PRED_FLOOR)
        r = self.logy - np.log(pred)
        psi = np.clip(r, -self.delta, self.delta)           # Huber's derivative
        value = float(psi @ (r - 0.5 * psi)) * self.norm
        w = np.where(ok, psi / pred * -self.norm, 0.0)      # d(objective)/d(pred)
        return value, w

    def value(self, theta: np.ndarray) -> float:
        return self._huber(self.predict(theta))[0]

    def value_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        pred, J = self.predict(theta, grad=True)
        value, w = self._huber(pred)
        return value, w @ J

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        """log(observed) - log(predicted): least_squares' Huber on these is the same objective.
        Computed with the derivatives (about 1.5 x the cost), which the Jacobian then reuses."""
        return self.logy - np.log(np.maximum(self.predict(theta, grad=True)[0], _PRED_FLOOR))

    def residual_jac(self, theta: np.ndarray) -> np.ndarray:
        pred, J = self.predict(theta, grad=True)
        ok = pred > _PRED_FLOOR
        return np.where(ok[:, None], -J / np.where(ok, pred, 1.0)[:, None], 0.0)

    def grid_starts(self, grid_alpha, grid_gamma, grid_c, grid_beta) -> list[tuple[float, np.ndarray]]:
        """(objective, theta) at every grid point with (L0, a, b) from non-negative least squares."""
        pws = {al: np.exp(-al * self.logu) for al in grid_alpha}
        ones = np.ones_like(self.u)
        out = []
        for gamma in grid_gamma:
            for c in grid_c:
                for beta in grid_beta:
                    (D,) = self.drop_term(c, beta, gamma)  # one G per (gamma, c, beta)
                    for al, pw in pws.items():
                        coef, _ = optimize.nnls(np.column_stack([ones, pw, -D]), self.y)
                        theta = np.array([coef[0], coef[1], al, coef[2], c, beta, gamma])
                        out.append((self._huber(coef[0] + coef[1] * pw - coef[2] * D)[0], theta))
        return out

    def to_params(self, theta: np.ndarray) -> dict[str, float]:
        L0, a, alpha, b, c, beta, gamma = (float(v) for v in theta)
        return {"L0": L0, "A": a * self.sc1 ** alpha, "alpha": alpha, "B": b / self.peak,
                "C": c * self.peak ** gamma / self.sc1, "beta": beta, "gamma": gamma}

    def from_params(self, p: dict) -> np.ndarray:
        return np.array([p["L0"], p["A"] / self.sc1 ** p["alpha"], p["alpha"], p["B"] * self.peak,
                         p["C"] * self.sc1 / self.peak ** p["gamma"], p["beta"], p["gamma"]])


def _polish(prob: _Problem, theta0: np.ndarray, delta: float):
    """One start: least_squares TRF on the Huber objective, then L-BFGS-B from its result (see the
    module docstring for why both). Returns (theta, objective, L-BFGS-B result, least_squares result)."""
    ub = prob.upper
    theta0 = np.clip(theta0, 0.0, ub)
    ls = optimize.least_squares(prob.residuals, theta0, jac=prob.residual_jac, bounds=(np.zeros(7), ub),
                                method="trf", loss="huber", f_scale=delta, x_scale="jac", **TRF_OPTIONS)
    theta1 = np.clip(ls.x, 0.0, ub)
    # TRF first moves a start that sits on a bound 1e-10 inside it (make_strictly_feasible); a
    # variable the data never moved from there (no gradient: B with no drop in the data) goes back
    # on its bound, so that L-BFGS-B starts there and at_bound reports it.
    on_bound = (theta0 == 0.0) | (theta0 == ub)
    theta1 = np.where(on_bound & (np.abs(theta1 - theta0) <= 1e-9 * np.maximum(1.0, np.abs(theta0))), theta0, theta1)
    if not prob.value(theta1) <= prob.value(theta0):  # (NaN-safe) never hand L-BFGS-B a worse point
        theta1 = theta0
    scale = np.where(theta1 > 0, theta1, 1.0)
    scale[[2, 5, 6]] = 1.0  # the exponents are O(1) already, and their bounds stay put

    def fun(z):
        v, g = prob.value_grad(z * scale)
        return v, g * scale

    bounds = [(0.0, None if np.isinf(u) else float(u)) for u in ub / scale]
    res = optimize.minimize(fun, theta1 / scale, jac=True, method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS)
    theta = np.clip(res.x * scale, 0.0, ub)
    at_ub = np.isclose(theta, ub, rtol=1e-12, atol=0.0)
    theta[at_ub] = ub[at_ub]  # exactly at the bound where L-BFGS-B put it (z * scale rounds)
    return theta, float(res.fun), res, ls


# ------------------------------------------------------------------------------ the fit

@dataclass
class MPLFit(FitOutcome):
    """The Multi-Power Law's fit; success is the last stage's (L-BFGS-B), the starts are the best
    grid points plus warm_start if given."""
    n_grid: int = 0
    """Grid points evaluated (each with its NNLS solve) to choose the starts."""
    trf_message: str = ""
    """least_squares' message for the best start (its first stage)."""
    trf_success: bool = False
    """Whether that stage met its tolerances (False: it used all TRF_OPTIONS['max_nfev'], typically
    crawling along the B-beta valley of a fit that cannot tell G's shape; L-BFGS-B took over)."""
    max_points: int | None = DEFAULT_MAX_POINTS
    spacing: str = "uniform"
    upper: dict[str, float] = dataclasses.field(default_factory=dict)
    """The upper bounds the fit ran under, in the law's units (UPPER, and B's from B_MAX_LOSS)."""

    @property
    def at_bound(self) -> list[str]:
        """Parameters pinned at a bound (0, or their upper bound): the data did not determine them
        (e.g. B = 0 when no fitted curve anneals, B at its bound with beta -> 0 when one noisy
        warmdown cannot tell G's shape); worth a flag in the report."""
        return [k for k in PARAM_NAMES if self.params[k] == 0.0
                or (k in self.upper and math.isclose(self.params[k], self.upper[k], rel_tol=1e-9))]

    def to_json(self) -> dict:
        return {"equation": EQUATION, "params": dict(self.params), "huber_delta": HUBER_DELTA,
                "warmup": "S_W = LR area of the warmup as run (qatlab's linear ramp restored)",
                "points": {"n_points": self.n_points, "max_points_per_curve": self.max_points,
                           "spacing": self.spacing},
                "optimizer": {"success": self.success, "message": self.message, "starts": self.n_starts,
                              "converged_starts": self.n_converged, "grid_points": self.n_grid,
                              "trf_success": self.trf_success, "trf_message": self.trf_message,
                              "objective": self.objective, "upper_bounds": dict(self.upper),
                              "at_bound": self.at_bound}}


def fit_mpl(curves: list[Curve], etas: list | None = None, max_points: int | None = DEFAULT_MAX_POINTS,
            spacing: str = "uniform", delta: float = HUBER_DELTA, n_polish: int = N_POLISH,
            warm_start: dict | None = None, grid_alpha=GRID_ALPHA, grid_gamma=GRID_GAMMA, grid_c=GRID_C,
            grid_beta=GRID_BETA) -> MPLFit:
    """Fit the seven parameters on the pooled fitted points of `curves`.

    etas: the traces as run, one per curve (default mpl_trace(curve.trace)'s: qatlab's ramp
    restored), in any units (the parameters come out in the same ones); W is mpl_trace's either way.
    Starts: every grid point with (L0, A, B) by NNLS, ranked by the objective; the n_polish best, and
    warm_start if given, are polished (least_squares TRF, then L-BFGS-B); the best result is kept
    with its own exit status.
    """
    if not curves:
        raise ValueError("no curves to fit")
    etas = [None] * len(curves) if etas is None else list(etas)
    if len(etas) != len(curves):
        raise ValueError("one eta trace per curve")
    data = [_curve_data(c, e, max_points, spacing) for c, e in zip(curves, etas)]
    if sum(len(d[0]) for d in data) == 0:
        raise ValueError("no fitted points (every row is in the warmup or has no finite loss)")
    prob = _Problem(data, delta)
    grid = prob.grid_starts(grid_alpha, grid_gamma, grid_c, grid_beta) if n_polish else []
    grid.sort(key=lambda s: s[0])
    starts = [th for _, th in grid[:n_polish]]
    if warm_start is not None:
        starts.append(prob.from_params(warm_start))
    if not starts:
        raise ValueError("no starts: n_polish = 0 and no warm_start")
    best, n_ok = None, 0
    for theta0 in starts:
        out = _polish(prob, theta0, delta)
        n_ok += bool(out[2].success)
        if best is None or out[1] < best[1]:
            best = out
    theta, objective, res, ls = best
    return MPLFit(params=prob.to_params(theta), objective=objective, success=bool(res.success),
                  message=str(res.message), n_starts=len(starts), n_converged=n_ok, n_points=len(prob.y),
                  n_grid=len(grid), trf_message=str(ls.message), trf_success=bool(ls.status > 0),
                  max_points=max_points, spacing=spacing, upper=dict(UPPER, B=float(prob.upper[3]) / prob.peak))


def curve_quality(curve: Curve, params: dict, eta: np.ndarray | None = None) -> dict:
    """R^2 and MAE (nats) of the law's prediction of one curve over all its fitted-eligible rows
    (no subsampling), and its final loss observed and predicted."""
    as_run, warmup = mpl_trace(curve.trace)
    eta = as_run if eta is None else np.asarray(eta, dtype=float)
    rows = fit_rows(curve, None)
    y = curve.loss[rows]
    pred = law_curve(params, eta, warmup, rows)
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"warmdown": curve.warmdown, "n_points": len(y), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else math.nan,
            "mae": float(np.abs(y - pred).mean()), "final_observed": float(y[-1]), "final_predicted": float(pred[-1])}
