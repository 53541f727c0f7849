"""The penalty law: P(N) = a + b ln N by OLS, its 95% prediction intervals, held-out coverage,
and the power-law reading ln P = a + b ln N (METHOD section 7).

N is the non-embedding parameter count (record["params"]["non_embedding"]), in parameters.
A family is every key of the design except the model and the seed (so one law per bits x warmdown
x lr_mult x any extra key such as optim.matrix_lr ...); its points are either per-size seed means (default) or the seed-level points.

Why per-size means by default: seeds at one size share that size's deviation from the line, so
treating them as independent points overstates the dof and narrows the intervals; the means
are the honest unit when the question is "where will a new size land". With 4 sizes the
interval uses t(0.975, 2) = 4.30, and the report says how wide that makes it.

The prediction interval at x0 is yhat0 +- t(1 - alpha/2, n - 2) * s * sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx),
s^2 = RSS / (n - 2): statsmodels' OLS gives it (get_prediction(...).conf_int(obs=True)); the tests
check it against this closed form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qat_lab.analysis.cells import fmt_value, label
from qat_lab.quant import FP_BITS
from qat_lab.records.identity import under

MIN_SIZES = 3
"""A line through two points has no residual dof: no interval, no law worth the name."""
SIZE_TOLERANCE = 0.10
"""A numeric --holdout-sizes value matches the run sizes within this relative distance."""


@dataclass
class LineFit:
    """An OLS line y = a + b x (statsmodels) and the (1 - alpha) prediction intervals it gives."""
    x: np.ndarray
    y: np.ndarray
    a: float
    b: float
    se_a: float
    se_b: float
    s: float
    r2: float
    t_crit: float
    alpha: float
    result: Any
    """statsmodels' RegressionResults (predictions come from it)."""

    @property
    def n(self) -> int:
        return len(self.x)

    def predict(self, x0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(yhat, lower, upper) of the (1 - alpha) prediction interval for a new observation at x0."""
        x0 = np.atleast_1d(np.asarray(x0, dtype=float))
        pred = self.result.get_prediction(np.column_stack([np.ones_like(x0), x0]))
        lo, hi = pred.conf_int(obs=True, alpha=self.alpha).T
        return np.asarray(pred.predicted_mean), lo, hi


def ols_line(x, y, alpha: float = 0.05) -> LineFit:
    """Least-squares line y = a + b x by statsmodels' OLS, with its prediction intervals."""
    from statsmodels.regression.linear_model import OLS

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_SIZES or np.ptp(x) == 0:
        raise ValueError(f"a line with intervals needs {MIN_SIZES}+ distinct x values (got {len(set(x))})")
    res = OLS(y, np.column_stack([np.ones_like(x), x])).fit()
    (a, b), (se_a, se_b) = res.params, res.bse
    return LineFit(x=x, y=y, a=float(a), b=float(b), se_a=float(se_a), se_b=float(se_b), s=math.sqrt(res.scale),
                   r2=float(res.rsquared) if res.centered_tss > 0 else math.nan,
                   t_crit=float(stats.t.ppf(1 - alpha / 2, len(x) - 2)), alpha=alpha, result=res)


def parse_size(token: str) -> float | None:
    """'5M' -> 5e6, '1.5e6' -> 1.5e6, '250k' -> 2.5e5; None if not a number (then it is a model name)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kKmMbBgG]?)\s*", token)
    if not m:
        return None
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(2).lower()]
    return float(m.group(1)) * scale


def resolve_holdout(tokens: list[str], table: pd.DataFrame) -> tuple[set[float], list[str]]:
    """Held-out tokens (model names or sizes) -> the exact sizes they name, plus a note per miss."""
    sizes = table[["model", "size"]].dropna().drop_duplicates() if "model" in table else table[["size"]].dropna()
    chosen, notes = set(), []
    for tok in tokens:
        by_name = sizes.loc[sizes["model"].astype(str) == tok, "size"] if "model" in sizes else pd.Series([], dtype=float)
        if len(by_name):
            chosen.update(by_name.tolist())
            continue
        value = parse_size(tok)
        if value is None or sizes.empty:
            notes.append(f"held-out size {tok!r} matches no model or size in the runs")
            continue
        rel = (sizes["size"] - value).abs() / value
        if rel.min() <= SIZE_TOLERANCE:
            chosen.add(float(sizes["size"].iloc[int(rel.to_numpy().argmin())]))
        else:
            notes.append(f"held-out size {tok!r} is not within {SIZE_TOLERANCE:.0%} of any run size")
    return chosen, notes


def _points(g: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Fit points: per-size seed means (with n) or every seed-level point."""
    if mode == "seeds":
        return pd.DataFrame({"size": g["size"], "penalty": g["penalty"], "n": 1, "seed": g["seed"]})
    sizes, inverse, counts = np.unique(g["size"].to_numpy(float), return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=g["penalty"].to_numpy(float)) / counts
    return pd.DataFrame({"size": sizes, "penalty": means, "n": counts})


def _fit_json(fit: LineFit, kind: str, fit_pts: pd.DataFrame, test_pts: pd.DataFrame) -> dict:
    """Parameters, data, diagnostics and held-out coverage of one fitted law, JSON-ready."""
    to_y = np.exp if kind == "power" else (lambda v: v)
    yhat, lo, hi = fit.predict(np.log(fit_pts["size"].to_numpy(float)))
    out = {
        "kind": kind,
        "equation": "ln P = a + b ln N" if kind == "power" else "P = a + b ln N",
        "params": {"a": fit.a, "b": fit.b}, "se": {"a": fit.se_a, "b": fit.se_b},
        "r2": fit.r2, "s": fit.s, "n": fit.n, "dof": fit.n - 2, "t_crit": fit.t_crit, "alpha": fit.alpha,
        "fit_points": [{"size": float(s), "penalty": float(p), "n_seeds": int(k), "fitted": float(to_y(f)),
                        "pi_lower": float(to_y(l)), "pi_upper": float(to_y(h))}
                       for s, p, k, f, l, h in zip(fit_pts["size"], fit_pts["penalty"], fit_pts["n"], yhat, lo, hi)],
        # Width of the interval in penalty units (for the power law, back on the penalty scale).
        "pi_half_width_mean": float(np.mean((to_y(hi) - to_y(lo)) / 2)),
    }
    if len(test_pts):
        yh, l, h = fit.predict(np.log(test_pts["size"].to_numpy(float)))
        rows = [{"size": float(s), "penalty": float(p), "n_seeds": int(k), "predicted": float(to_y(f)),
                 "pi_lower": float(to_y(a)), "pi_upper": float(to_y(b)), "inside": bool(to_y(a) <= p <= to_y(b))}
                for s, p, k, f, a, b in zip(test_pts["size"], test_pts["penalty"], test_pts["n"], yh, l, h)]
        out["holdout"] = rows
        out["holdout_coverage"] = {"inside": sum(r["inside"] for r in rows), "n": len(rows)}
    return out


def family_axes(axes: list[str]) -> list[str]:
    """A family is every key but the model (and the model.* keys, which set its size) and the seed."""
    return [a for a in axes if a != "seed" and not under(a, ("model",))]


def penalty_laws(table: pd.DataFrame, axes: list[str], shown: list[str], mode: str = "means",
                 holdout: set[float] | None = None, alpha: float = 0.05) -> list[dict]:
    """Fit the log-linear and power laws in every family of quantised runs with paired penalties."""
    holdout = holdout or set()
    fam_axes = family_axes(axes)
    fam_shown = [a for a in fam_axes if a in shown]  # `shown`: the axes that vary in the study
    keep = table["used"] & (table["bits"] != FP_BITS) & table["penalty"].notna() & table["size"].notna()
    # Only the columns the fits read: slicing the whole runs table per family is what would cost.
    pts = table.loc[keep, list(dict.fromkeys([*fam_axes, "size", "penalty", "seed"]))]
    laws = []
    for key, g in pts.groupby(fam_axes, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        values = dict(zip(fam_axes, key))
        entry = {"family": label(values, fam_shown), "axes": {k: values[k] for k in fam_axes}, "points_mode": mode,
                 "sizes": sorted(float(s) for s in g["size"].unique()), "laws": [], "note": ""}
        test = g[g["size"].isin(holdout)]
        train = g[~g["size"].isin(holdout)]
        n_sizes = train["size"].nunique()
        if n_sizes < MIN_SIZES:
            entry["note"] = (f"{n_sizes} size{'s' if n_sizes != 1 else ''} to fit on "
                             f"({', '.join(fmt_value(int(s)) for s in sorted(train['size'].unique()))}): "
                             f"a law with prediction intervals needs {MIN_SIZES}+")
            laws.append(entry)
            continue
        fit_pts, test_pts = _points(train, mode), _points(test, mode)
        lin = ols_line(np.log(fit_pts["size"]), fit_pts["penalty"], alpha)
        entry["laws"].append(_fit_json(lin, "log-linear", fit_pts, test_pts))
        if (fit_pts["penalty"] > 0).all():
            pw = ols_line(np.log(fit_pts["size"]), np.log(fit_pts["penalty"]), alpha)
            entry["laws"].append(_fit_json(pw, "power", fit_pts, test_pts))
        else:
            entry["note"] = "power law not fitted: some penalties are <= 0 (ln P undefined)"
        laws.append(entry)
    return laws


def refit(law: dict) -> LineFit:
    """The LineFit behind a law entry (for plotting its band)."""
    pts = law["fit_points"]
    x = np.log([p["size"] for p in pts])
    y = np.array([p["penalty"] for p in pts], dtype=float)
    return ols_line(x, np.log(y) if law["kind"] == "power" else y, law["alpha"])
