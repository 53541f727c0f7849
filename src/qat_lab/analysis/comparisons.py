"""Comparisons within cells along the compared key, and the "does the optimum move with bits?"
interaction (METHOD section 7).

Every level of the compared key (a warmdown, a scale rule, an optimiser, ...) is compared, seed
by seed, with the cell's best level (argmin of the seed mean); Holm's correction runs over all
those comparisons together (every cell, every level). The best level is chosen on the same data
it is then tested against, so a non-significant result is the informative one ("no level is
distinguishable from the best").

The interaction asks whether the optimum moves with bits: within each group of cells that differ
only in bits (design.bit_groups: an FP16 cell joins every group it matches through its ANY keys)
it lists each bit-width's optimum, tests the bits x key interaction on the final loss (two-way
OLS with seed blocks, F-test of the interaction terms), and reads from the paired comparisons
whether the FP16 optimum is significantly worse at the other bit-widths. A bit-width whose cell
has a single level (FP16 when the key is a quantiser setting: it does not apply there) has no
optimum and stays out of the test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qat_lab.analysis import stats
from qat_lab.analysis.cells import CELL_ID, label
from qat_lab.analysis.design import bit_groups, levels
from qat_lab.quant import FP_BITS

ALPHA = 0.05


def within_cells(table: pd.DataFrame, cells: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per (cell, level other than the best): paired statistics against the best.

    d_s = L(level, s) - L(best, s) over the seeds both completed; positive means the best won.
    """
    used = table[table["used"]]
    if used.empty or cells.empty:
        return pd.DataFrame()
    best_col = f"best_{key}"
    best = cells[cells["optimal"]].set_index(CELL_ID)[key].to_dict()
    # One wide frame for every cell at once: rows (cell, seed), columns the levels.
    wide = used.pivot(index=[CELL_ID, "seed"], columns=key, values="val_loss")
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
            if a is b or a == b or np.isnan(block[:, ja]).all():
                continue
            d = block[:, ja] - block[:, jb]  # NaN where either level lacks that seed
            rows.append(({CELL_ID: cell, key: a, best_col: b}, d[~np.isnan(d)]))
    tests = stats.paired_many([d for _, d in rows])
    comps = pd.DataFrame([{**head, **p.as_dict()} for (head, _), p in zip(rows, tests)])
    if comps.empty:
        return comps
    for col in ("p_t", "p_z", "p_sign"):
        comps[f"{col}_holm"] = stats.holm(comps[col].to_numpy())
    comps["significant"] = comps["p_t_holm"] < ALPHA
    rank = {c: i for i, c in enumerate(dict.fromkeys(cells[CELL_ID]))}  # the cells' order (models by size)
    order = {v: i for i, v in enumerate(dict.fromkeys(cells[key]))}
    return comps.sort_values([CELL_ID, key], key=lambda col: col.map(rank if col.name == CELL_ID else order),
                             ignore_index=True)


def _dummies(values: pd.Series) -> np.ndarray:
    """Treatment coding: one 0/1 column per level except the first."""
    codes, uniques = pd.factorize(values.map(repr))
    return (codes[:, None] == np.arange(1, len(uniques))[None, :]).astype(float)


def interaction_f_test(g: pd.DataFrame, key: str) -> dict:
    """F-test of the bits x key interaction on val_loss, with seeds as blocks.

    Reduced: loss ~ bits + key + seed; full adds every bits:key product. With one run per
    (bits, level, seed) the residual dof are (B*K - 1)(S - 1) minus the missing points, so one
    seed leaves nothing to test against.
    """
    from statsmodels.regression.linear_model import OLS

    y = g["val_loss"].to_numpy(float)
    bits, lev, seed = (_dummies(g[c]) for c in ("bits", key, "seed"))
    reduced = np.column_stack([np.ones(len(y)), bits, lev, seed])
    inter = (bits[:, :, None] * lev[:, None, :]).reshape(len(y), -1)
    inter = inter[:, inter.any(axis=0)]  # a missing (bits, level) point leaves a column of zeros
    full = np.column_stack([reduced, inter])
    df_resid = len(y) - np.linalg.matrix_rank(full)
    n_seeds = g["seed"].nunique()
    if not inter.shape[1] or df_resid <= 0:
        why = ("one seed: no residual dof for an interaction test" if n_seeds < 2
               else "no residual dof for an interaction test")
        return {"F": math.nan, "p": math.nan, "df_num": None, "df_den": int(max(df_resid, 0)), "n_seeds": n_seeds,
                "note": why}
    f_full, f_red = OLS(y, full).fit(), OLS(y, reduced).fit()
    F, p, df_num = f_full.compare_f_test(f_red)
    return {"F": float(F), "p": float(p), "df_num": int(df_num), "df_den": int(f_full.df_resid), "n_seeds": n_seeds,
            "note": ""}


def interaction(table: pd.DataFrame, cells: pd.DataFrame, comps: pd.DataFrame, key: str, cell_axes: list[str],
                shown: list[str]) -> list[dict]:
    """Per group of cells differing only in bits: optima by bits, F-test, and the FP16 optimum's cost."""
    group_axes = [a for a in cell_axes if a != "bits"]
    group_shown = [a for a in shown if a != "bits"]
    used = table[table["used"]]
    if cells.empty:
        return []
    best = cells[cells["optimal"]].set_index(CELL_ID)
    n_levels = cells.groupby(CELL_ID, sort=False)[key].agg(lambda s: len(levels(s)))
    out = []
    for values, members in bit_groups(cells, group_axes):
        # Only cells with two or more levels have an optimum along the key.
        members = [c for c in members if n_levels[c] > 1]
        bits_of = {c: int(best.loc[c, "bits"]) for c in members}
        if len(set(bits_of.values())) < 2:
            continue
        g = used[used[CELL_ID].isin(members)]
        optimum = {b: best.loc[c, key] for c, b in bits_of.items()}
        n_seeds = {b: int(best.loc[c, "n"]) for c, b in bits_of.items()}
        entry = {"group": label(values, group_shown), "axes": dict(values), "key": key, "cells": members,
                 "optimum_by_bits": dict(sorted(optimum.items(), reverse=True)),
                 "seeds_by_bits": dict(sorted(n_seeds.items(), reverse=True)),
                 "moves": len({repr(v) for v in optimum.values()}) > 1,
                 "f_test": interaction_f_test(g, key), "fp16_optimum_elsewhere": []}
        ref = optimum.get(FP_BITS)
        if ref is not None and len(comps):
            for c, b in bits_of.items():
                if b == FP_BITS or optimum[b] == ref:
                    continue
                hit = comps[(comps[CELL_ID] == c) & (comps[key] == ref)]
                if len(hit):
                    h = hit.iloc[0]
                    entry["fp16_optimum_elsewhere"].append(
                        {"bits": b, "fp16_optimum": ref, "optimum": optimum[b], "mean_diff": h["mean"],
                         "n": int(h["n"]), "wins": int(h["wins"]), "p_t_holm": h["p_t_holm"],
                         "p_sign_holm": h["p_sign_holm"], "significant": bool(h["significant"])})
        out.append(entry)
    return out
