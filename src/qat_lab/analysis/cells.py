"""Cells, penalties and the optimal warmdown (METHOD sections 6-7).

A cell is every sweep axis except warmdown and seed (bits, model, optimiser, schedule, lr_mult,
steps, data, batch shape): within a cell the warmdowns are compared, across its seeds the
statistics are taken. Penalties pair each run with its bits=16 partner through
qat_lab.summary.fp_partners / penalties, the same rule the end-of-sweep table uses.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qat_lab.records import identity

NOT_CELL_AXES = ("warmdown", "seed")
CELL_ID = "cell"


def cell_axes(axes: list[str]) -> list[str]:
    return [a for a in axes if a not in NOT_CELL_AXES]


def varying_axes(table: pd.DataFrame, axes: list[str], used_only: bool = True) -> list[str]:
    """Axes with more than one value among the used (or all) runs; the others are constants."""
    rows = table[table["used"]] if used_only else table
    return [a for a in axes if rows[a].nunique(dropna=False) > 1] if len(rows) else []


def fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return f"{v:g}"
    return str(v)


def label(values: dict, names: list[str]) -> str:
    """A short readable id from the axes that vary, e.g. 'bits=4 model=cpu-s'."""
    return " ".join(f"{a}={fmt_value(values[a])}" for a in names) or "all"


def add_pairing(table: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Add `penalty` and `fp_partner` (the run_id of the bits=16 partner) to the runs table.

    `records` are the run records in the table's row order. Only used runs take part, so a failed,
    diverged or duplicate FP16 run is never anyone's baseline.
    """
    table = table.copy()
    used = np.flatnonzero(table["used"].to_numpy())  # positions of the used rows
    used_records = [records[k] for k in used]
    penalty = np.full(len(table), np.nan)
    partner: list[str | None] = [None] * len(table)
    run_ids = table["run_id"].tolist()
    idents = [identity.run_identity(r) for r in used_records]
    partners = identity.fp16_partners(idents, [True] * len(used_records))
    pens = identity.penalties(used_records)
    for k, p, j in zip(used, pens, partners):
        if j is not None:
            penalty[k] = p
            partner[k] = run_ids[used[j]]
    table["penalty"] = penalty
    table["fp_partner"] = partner
    return table


def add_cell_ids(table: pd.DataFrame, axes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add the `cell` label to every run; returns the table and the cell axes that vary.

    Varying over all runs, not only the used ones, so that a failed run is counted against its
    own cell even when it holds the only value of some axis.
    """
    cax = cell_axes(axes)
    shown = varying_axes(table, cax, used_only=False)
    table = table.copy()
    table[CELL_ID] = [label(row, shown) for row in table[cax].to_dict("records")] if len(table) else []
    return table, shown


def readable_order(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Sorted by the given axes, numbers as numbers and models by size (not by name: m100 < m15)."""
    order = [c for c in dict.fromkeys("size" if a == "model" else a for a in axes) if c in df]
    if df.empty or not order:
        return df
    return df.sort_values(order, key=lambda col: col.astype(str) if col.dtype == object else col, kind="stable",
                          ignore_index=True)


def cell_table(table: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell x warmdown: seed mean, sd and n of the final losses, penalties, distances.

    `optimal` marks each cell's argmin of the seed-mean val_loss; `delta_vs_best` is the gap to it.
    """
    cax = cell_axes(axes)
    keys = [CELL_ID, *cax, "warmdown"]
    used = table[table["used"]]
    excluded = table[~table["used"]].groupby([CELL_ID, "warmdown"], dropna=False).size().rename("n_excluded")
    if used.empty:
        return pd.DataFrame()
    g = used.groupby(keys, dropna=False, sort=True)
    cells = g.agg(size=("size", "first"), n=("val_loss", "size"),
                  seeds=("seed", lambda s: " ".join(fmt_value(x) for x in sorted(s.tolist()))),
                  val_loss_mean=("val_loss", "mean"), val_loss_sd=("val_loss", "std"),
                  val_bpb_mean=("val_bpb", "mean"), val_bpb_sd=("val_bpb", "std"),
                  penalty_mean=("penalty", "mean"), penalty_sd=("penalty", "std"), penalty_n=("penalty", "count"),
                  quant_gap_mean=("quant_gap", "mean"),
                  grid_distance_pre_warmdown_mean=("grid_distance_pre_warmdown", "mean"),
                  grid_distance_final_mean=("grid_distance_final", "mean")).reset_index()
    # pandas' std is the sample sd (ddof=1): NaN for one seed, as it should be.
    cells = cells.join(excluded, on=[CELL_ID, "warmdown"])
    cells["n_excluded"] = cells["n_excluded"].fillna(0).astype(int)
    if cells.empty:
        return cells
    cells = readable_order(cells, [*cax, "warmdown"])
    best = cells.groupby(CELL_ID)["val_loss_mean"].transform("min")
    cells["delta_vs_best"] = cells["val_loss_mean"] - best
    cells["optimal"] = cells["delta_vs_best"] == 0.0
    # Ties (rare with real losses) would mark two optima; keep the smaller warmdown as the argmin.
    first = cells[cells["optimal"]].groupby(CELL_ID)["warmdown"].transform("min")
    cells.loc[cells["optimal"], "optimal"] = cells.loc[cells["optimal"], "warmdown"] == first
    return cells


def optima(cells: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell: the optimal warmdown, its seed-mean loss and how many warmdowns were tried."""
    if cells.empty:
        return cells
    cax = cell_axes(axes)
    best = cells[cells["optimal"]].set_index(CELL_ID)
    tried = cells.groupby(CELL_ID)["warmdown"].apply(lambda w: " ".join(fmt_value(x) for x in sorted(w)))
    out = best[[*cax, "size", "warmdown", "val_loss_mean", "n"]].rename(columns={"warmdown": "best_warmdown"})
    out["warmdowns_tried"] = tried
    return out.reset_index()
