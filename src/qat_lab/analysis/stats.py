"""Paired statistics across seeds (METHOD section 7): t, z, wins, exact sign test, Holm.

Seeds are the replicates; two warmdowns of one cell share their seeds (same init, same data
order), so they are compared seed by seed: d_s = L(a, s) - L(b, s).

- t = mean(d) / (sd(d, ddof=1) / sqrt(n)) against Student's t with n - 1 dof.
- z is the same statistic read against the normal distribution (what the paper quotes; with few
  seeds it overstates significance, which is why t is reported beside it).
- The sign test counts wins, drops ties and takes the exact two-sided binomial p (10/10 -> 0.002).
  With 5 seeds its smallest possible p is 0.0625: it can never be significant there, by design.
- Holm's step-down correction keeps the family-wise error over many cells at alpha.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class Paired:
    n: int
    mean: float
    sd: float
    t: float
    df: int
    p_t: float
    z: float
    p_z: float
    wins: int
    """Seeds where d > 0 (the second of the pair, b, had the lower loss)."""
    ties: int
    p_sign: float

    def as_dict(self) -> dict:
        return asdict(self)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (ties already dropped): binomial(wins + losses, 1/2).

    The distribution is symmetric, so the two-sided p is twice the smaller tail (capped at 1),
    summed exactly in integers (the same number scipy.stats.binomtest gives; tested).
    """
    n = wins + losses
    if not n:
        return float("nan")
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired(d: np.ndarray) -> Paired:
    """Statistics of the per-seed differences d_s = L(a, s) - L(b, s)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        t = mean / (sd / math.sqrt(n))
        p_t = float(2 * stats.t.sf(abs(t), n - 1))
        p_z = float(2 * stats.norm.sf(abs(t)))
    elif n > 1 and mean != 0:  # every seed moved by exactly the same amount: infinitely sure
        t, p_t, p_z = math.copysign(math.inf, mean), 0.0, 0.0
    else:  # one seed (no spread to test against) or no difference at all
        t, p_t, p_z = math.nan, math.nan, math.nan
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return Paired(n=n, mean=mean, sd=sd, t=t, df=n - 1, p_t=p_t, z=t, p_z=p_z, wins=wins, ties=n - wins - losses,
                  p_sign=sign_test_p(wins, losses))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN stays NaN and is not counted in the family."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    # The i-th smallest p is multiplied by (m - i); a running max keeps the adjusted p monotone.
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out
