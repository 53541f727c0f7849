"""Warmdown comparisons within cells and the schedule x bit-width interaction (METHOD section 7).

Every warmdown of a cell is compared, seed by seed, with the cell's best one (argmin of the seed
mean); Holm's correction runs over all those comparisons together (every cell, every warmdown).
Note that the best warmdown is chosen on the same data it is then tested against, so a
non-significant result is the informative one ("no warmdown is distinguishable from the best").

The interaction asks whether the optimal warmdown moves with bits: within each group of cells
that differ only in bits, it lists each bit-width's optimum, tests the bits x warmdown
interaction on the final loss (two-way OLS with seed blocks, F-test of the interaction terms),
and reads from the paired comparisons whether the FP16 optimum is significantly worse at the
other bit-widths.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qat_lab.analysis import stats
from qat_lab.analysis.cells import CELL_ID, cell_axes, label
from qat_lab.quant import FP_BITS

ALPHA = 0.05


def warmdown_comparisons(table: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, warmdown other than the best): paired statistics against the best.

    d_s = L(warmdown, s) - L(best, s) over the seeds both completed; positive means the best won.
    """
    used = table[table["used"]]
    if used.empty:
        return pd.DataFrame()
    best = cells[cells["optimal"]].set_index(CELL_ID)["warmdown"].to_dict()
    # One wide frame for every cell at once: rows (cell, seed), columns warmdown.
    wide = used.pivot(index=[CELL_ID, "seed"], columns="warmdown", values="val_loss")
    rows = []
    columns = list(wide.columns)
    cell_of_row = wide.index.get_level_values(0)
    values = wide.to_numpy(float)
    starts = np.flatnonzero(np.r_[True, cell_of_row[1:] != cell_of_row[:-1]])
    for lo, hi in zip(starts, [*starts[1:], len(values)]):  # the rows of one cell are contiguous
        cell, block = cell_of_row[lo], values[lo:hi]
        b = best.get(cell)
        jb = columns.index(b)
        for ja, a in enumerate(columns):
            if a == b or np.isnan(block[:, ja]).all():
                continue
            d = block[:, ja] - block[:, jb]  # NaN where either warmdown lacks that seed
            p = stats.paired(d[~np.isnan(d)])
            rows.append({CELL_ID: cell, "warmdown": a, "best_warmdown": b, **p.as_dict()})
    comps = pd.DataFrame(rows)
    if comps.empty:
        return comps
    for col in ("p_t", "p_z", "p_sign"):
        comps[f"{col}_holm"] = stats.holm(comps[col].to_numpy())
    comps["significant"] = comps["p_t_holm"] < ALPHA
    return comps


def _dummies(values: pd.Series) -> np.ndarray:
    """Treatment coding: one 0/1 column per level except the first."""
    codes, levels = pd.factorize(values, sort=True)
    return (codes[:, None] == np.arange(1, len(levels))[None, :]).astype(float)


def interaction_f_test(g: pd.DataFrame) -> dict:
    """F-test of the bits x warmdown interaction on val_loss, with seeds as blocks.

    Reduced: loss ~ bits + warmdown + seed; full adds every bits:warmdown product. With one run
    per (bits, warmdown, seed) the residual dof are (B*W - 1)(S - 1) minus the missing points, so
    one seed leaves nothing to test against.
    """
    from statsmodels.regression.linear_model import OLS

    y = g["val_loss"].to_numpy(float)
    bits, wd, seed = (_dummies(g[c]) for c in ("bits", "warmdown", "seed"))
    reduced = np.column_stack([np.ones(len(y)), bits, wd, seed])
    inter = (bits[:, :, None] * wd[:, None, :]).reshape(len(y), -1)
    inter = inter[:, inter.any(axis=0)]  # a missing (bits, warmdown) point leaves a column of zeros
    full = np.column_stack([reduced, inter])
    df_resid = len(y) - np.linalg.matrix_rank(full)
    if not inter.shape[1] or df_resid <= 0:
        return {"F": math.nan, "p": math.nan, "df_num": None, "df_den": int(max(df_resid, 0)),
                "note": "no residual dof for an interaction test (one seed per bits x warmdown point)"}
    f_full, f_red = OLS(y, full).fit(), OLS(y, reduced).fit()
    F, p, df_num = f_full.compare_f_test(f_red)
    return {"F": float(F), "p": float(p), "df_num": int(df_num), "df_den": int(f_full.df_resid), "note": ""}


def interaction(table: pd.DataFrame, cells: pd.DataFrame, comps: pd.DataFrame, axes: list[str],
                shown: list[str]) -> list[dict]:
    """Per group of cells differing only in bits: optima by bits, F-test, and the FP16 optimum's cost."""
    group_axes = [a for a in cell_axes(axes) if a != "bits"]
    group_shown = [a for a in shown if a != "bits"]
    used = table[table["used"]]
    best = cells[cells["optimal"]] if len(cells) else cells
    out = []
    for key, g in used.groupby(group_axes, dropna=False, sort=True) if group_axes else [((), used)]:
        key = key if isinstance(key, tuple) else (key,)
        values = dict(zip(group_axes, key))
        bits_here = sorted(g["bits"].unique())
        if len(bits_here) < 2 or g["warmdown"].nunique() < 2:
            continue
        opt = best[best[CELL_ID].isin(g[CELL_ID].unique())]
        optimum = {int(b): float(opt.loc[opt["bits"] == b, "warmdown"].iloc[0])
                   for b in bits_here if (opt["bits"] == b).any()}
        entry = {"group": label(values, group_shown), "axes": {k: v for k, v in values.items()},
                 "optimal_warmdown_by_bits": optimum, "moves": len(set(optimum.values())) > 1,
                 "f_test": interaction_f_test(g), "fp16_optimum_elsewhere": []}
        ref = optimum.get(FP_BITS)
        if ref is not None and len(comps):
            for b, w in optimum.items():
                if b == FP_BITS or w == ref:
                    continue
                cell = g.loc[g["bits"] == b, CELL_ID].iloc[0]
                hit = comps[(comps[CELL_ID] == cell) & (comps["warmdown"] == ref)]
                if len(hit):
                    h = hit.iloc[0]
                    entry["fp16_optimum_elsewhere"].append(
                        {"bits": b, "fp16_optimum": ref, "optimum": w, "mean_diff": h["mean"], "n": int(h["n"]),
                         "wins": int(h["wins"]), "p_t_holm": h["p_t_holm"], "p_sign_holm": h["p_sign_holm"],
                         "significant": bool(h["significant"])})
        out.append(entry)
    return out
