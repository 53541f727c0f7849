"""Paired statistics across seeds (METHOD section 7): t, z, wins, exact sign test, Holm.

Seeds are the replicates; two warmdowns of one cell share their seeds (same init, same data
order), so they are compared seed by seed: d_s = L(a, s) - L(b, s).

- t = mean(d) / (sd(d, ddof=1) / sqrt(n)) against Student's t with n - 1 dof.
- z is the same statistic read against the normal distribution (what the paper quotes; with few
  seeds it overstates significance, which is why t is reported beside it).
- The sign test counts wins, drops ties and takes the exact two-sided binomial p (10/10 -> 0.002).
  With 5 seeds its smallest possible p is 0.0625: it can never be significant there, by design,
  so the report never reads a non-significant sign test on <= 5 seeds as a negative.
- Holm's step-down correction keeps the family-wise error over many cells at alpha.
The tests are scipy's (ttest_1samp, binomtest) and statsmodels' (multipletests, Holm); this
module adds the pairing, the one-seed and zero-spread cases and NaN handling around them.
"""

from __future__ import annotations

import functools
import gc
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class Paired:
    """A seed-paired comparison of two levels a, b: d_s = L(a, s) - L(b, s) over the shared seeds."""
    n: int
    """Seeds in both levels."""
    mean: float
    """Mean of d (> 0: b had the lower loss)."""
    sd: float
    """Sample sd of d (ddof 1)."""
    t: float
    """mean / (sd / sqrt(n)), the one-sample t statistic."""
    df: int
    p_t: float
    """Two-sided p of t with n - 1 dof."""
    z: float
    """The same statistic read as a z score (the paper's "paired z")."""
    p_z: float
    wins: int
    """Seeds where d > 0 (the second of the pair, b, had the lower loss)."""
    ties: int
    p_sign: float
    """Exact two-sided sign test on the non-tied seeds."""

    def as_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1024)
def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (ties already dropped): scipy's binomial test at p = 1/2.
    Cached: a sweep has a handful of distinct (wins, losses) pairs and thousands of comparisons."""
    n = wins + losses
    return float(stats.binomtest(wins, n, 0.5).pvalue) if n else math.nan


def paired(d: np.ndarray) -> Paired:
    """Statistics of the per-seed differences d_s = L(a, s) - L(b, s)."""
    return paired_many([d])[0]


def paired_many(ds: list[np.ndarray]) -> list[Paired]:
    """paired() of many difference vectors, with one scipy t-test per distinct length (the
    comparisons of a sweep mostly share their seed count, so this is one vectorised call)."""
    ds = [np.asarray(d, dtype=float) for d in ds]
    t = np.full(len(ds), np.nan)
    p_t = np.full(len(ds), np.nan)
    by_len: dict[int, list[int]] = {}
    for i, d in enumerate(ds):
        if len(d) > 1:
            by_len.setdefault(len(d), []).append(i)
    for idx in by_len.values():
        block = np.stack([ds[i] for i in idx])
        spread = block.std(axis=1, ddof=1) > 0
        if spread.any():
            with warnings.catch_warnings():  # nearly equal differences: scipy warns, the t is still right
                warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.ttest_1samp(block[spread], 0.0, axis=1)
            t[np.asarray(idx)[spread]] = res.statistic
            p_t[np.asarray(idx)[spread]] = res.pvalue
    out = []
    for i, d in enumerate(ds):
        n = len(d)
        mean = float(d.mean()) if n else math.nan
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        ti, pti = float(t[i]), float(p_t[i])
        if n > 1 and not sd > 0 and mean != 0:  # every seed moved by exactly the same amount: infinitely sure
            ti, pti = math.copysign(math.inf, mean), 0.0
        # else NaN: one seed (no spread to test against) or no difference at all
        p_z = 0.0 if math.isinf(ti) else float(2 * stats.norm.sf(abs(ti))) if not math.isnan(ti) else math.nan
        wins, losses = int((d > 0).sum()), int((d < 0).sum())
        out.append(Paired(n=n, mean=mean, sd=sd, t=ti, df=n - 1, p_t=pti, z=ti, p_z=p_z, wins=wins,
                          ties=n - wins - losses, p_sign=sign_test_p(wins, losses)))
    return out


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (statsmodels); NaN stays NaN and is not counted in the family."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        # statsmodels' Holm ends with gc.collect(), which walks the whole heap (pandas, scipy,
        # every record: 0.1 s a call here). A frozen heap is skipped by the collector, so the
        # call costs what the arithmetic does; unfreeze hands the objects back unchanged.
        gc.freeze()
        try:
            out[ok] = multipletests(p[ok], method="holm")[1]
        finally:
            gc.unfreeze()
    return out


def min_sign_p(n: int) -> float:
    """The smallest two-sided p the exact sign test can give with n informative seeds (n/n wins)."""
    return sign_test_p(n, 0) if n else math.nan


def sign_test_can_reject(n: int, alpha: float = 0.05) -> bool:
    """Whether n seeds can make the sign test significant at all (n <= 5 cannot: 5/5 gives 0.0625)."""
    return n > 0 and min_sign_p(n) < alpha
