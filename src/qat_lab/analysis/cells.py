"""Cells, penalties and the optimum along the compared key (METHOD sections 6-7).

A cell is every key of the design except the compared one (warmdown by default) and the seed
(analysis.design.cell_axes): within a cell the compared key's levels are compared, across its
seeds the statistics are taken. Penalties pair each run with its bits=16 partner through
qat_lab.records.identity.fp16_partners, the rule the end-of-sweep table uses too.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qat_lab.analysis.design import CELL_ID, levels, varying
from qat_lab.records import identity
from qat_lab.records.identity import ANY
from qat_lab.validation import is_number


def fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return f"{v:g}"
    return identity.shown(v)


def size_text(n: float) -> str:
    """A parameter count, short: 5M, 98.8K."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "?"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}K" if n >= 1e3 else f"{int(n)}"


def label(values: dict, names: list[str]) -> str:
    """A short readable id from the keys that vary, e.g. 'bits=4 model=cpu-s'."""
    return " ".join(f"{a}={fmt_value(values[a])}" for a in names) or "all"


def add_pairing(table: pd.DataFrame, identities: list[dict]) -> pd.DataFrame:
    """Add `penalty`, `fp_partner` (the run_id of the bits=16 partner) and `penalty_note` (why a
    used quantised run has none) to the runs table; `identities` are in the table's row order.

    Only used runs take part, so a failed, diverged or duplicate FP16 run is never anyone's baseline.
    """
    table = table.copy()
    used = table["used"].tolist()
    loss = table["val_loss"].to_numpy(float)
    run_ids = table["run_id"].tolist()
    partners = identity.fp16_partners(identities, used)
    penalty = np.full(len(table), np.nan)
    partner: list[str | None] = [None] * len(table)
    note = [""] * len(table)
    for i, j in enumerate(partners):
        if not used[i]:
            continue
        if j is not None:
            penalty[i], partner[i] = loss[i] - loss[j], run_ids[j]
        else:
            note[i] = identity.why_unpaired(identities[i], identities, used)
    table["penalty"] = penalty
    table["fp_partner"] = partner
    table["penalty_note"] = note
    return table


def cell_labels(table: pd.DataFrame, cells: list[str]) -> tuple[pd.Series, list[str]]:
    """Each run's cell label, and the cell keys that vary (the ones a label shows).

    Varying over all runs, not only the used ones, so that a failed run is counted against its
    own cell even when it holds the only value of some key.
    """
    shown = varying(table, cells, used_only=False)
    labels = [label(row, shown) for row in table[shown].to_dict("records")] if len(table) else []
    return pd.Series(labels, index=table.index, dtype=object), shown


def readable_order(df: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Sorted by the given keys, numbers as numbers and models by size (not by name: m100 < m15)."""
    order = [c for c in dict.fromkeys("size" if a == "model" else a for a in axes) if c in df]
    if df.empty or not order:
        return df
    return df.sort_values(order, key=_sort_column, kind="stable", ignore_index=True)


def _sort_column(col: pd.Series) -> pd.Series:
    if col.dtype != object:
        return col
    # Mixed columns (numbers, strings, None, ANY): numbers first in numeric order, then text, ANY last.
    return col.map(lambda v: (2, 0.0, "") if v is ANY else (0, float(v), "") if is_number(v, finite=False)
                   else (1, 0.0, str(v)))


def ordered_levels(values: pd.Series) -> list:
    """The distinct values of a column in reading order (numbers numerically, then text, ANY last)."""
    unique = pd.Series(pd.unique(values), dtype=object)
    return unique.iloc[_sort_column(unique).argsort(kind="stable")].tolist() if len(unique) else []


def cell_table(table: pd.DataFrame, cells: list[str], key: str) -> pd.DataFrame:
    """One row per cell x level of `key`: seed mean, sd and n of the final losses, penalties, distances.

    `optimal` marks each cell's argmin of the seed-mean val_loss; `delta_vs_best` is the gap to it.
    """
    used = table[table["used"]]
    if used.empty:
        return pd.DataFrame()
    excluded = table[~table["used"]].groupby([CELL_ID, key], dropna=False).size().rename("n_excluded")
    g = used.groupby([CELL_ID, key], dropna=False, sort=False)
    out = g.agg(size=("size", "first"), n=("val_loss", "size"),
                seeds=("seed", lambda s: " ".join(fmt_value(x) for x in sorted(s.tolist()))),
                val_loss_mean=("val_loss", "mean"), val_loss_sd=("val_loss", "std"),
                val_bpb_mean=("val_bpb", "mean"), val_bpb_sd=("val_bpb", "std"),
                penalty_mean=("penalty", "mean"), penalty_sd=("penalty", "std"), penalty_n=("penalty", "count"),
                quant_gap_mean=("quant_gap", "mean"),
                grid_distance_pre_warmdown_mean=("grid_distance_pre_warmdown", "mean"),
                grid_distance_final_mean=("grid_distance_final", "mean"))
    # pandas' std is the sample sd (ddof=1): NaN for one seed, as it should be.
    out = out.join(excluded).reset_index()
    if cells:
        # A cell's label determines its keys; take them from its definite runs (a cosine run
        # copied into a warmdown's cell has warmdown ANY: design.spread_wildcards).
        wild = used[cells].map(lambda v: v is ANY).any(axis=1)
        keys = used.assign(_wild=wild).sort_values("_wild", kind="stable").groupby(CELL_ID, sort=False)[cells].first()
        out = out.join(keys, on=CELL_ID)
    out["n_excluded"] = out["n_excluded"].fillna(0).astype(int)
    out = out[[CELL_ID, *cells, key, *(c for c in out.columns if c not in (CELL_ID, key, *cells))]]
    out = readable_order(out, [*cells, key])
    best = out.groupby(CELL_ID, sort=False)["val_loss_mean"].transform("min")
    out["delta_vs_best"] = out["val_loss_mean"] - best
    out["optimal"] = out["delta_vs_best"] == 0.0
    # Ties (rare with real losses) would mark two optima; keep the first level in sorted order.
    tied = out[out["optimal"]].duplicated(CELL_ID, keep="first")
    out.loc[tied[tied].index, "optimal"] = False
    return out


def optima(cells: pd.DataFrame, axes: list[str], key: str) -> pd.DataFrame:
    """One row per cell: the best level of `key` (column best_<key>), its seed-mean loss, how many
    seeds, and the levels tried."""
    if cells.empty:
        return cells
    best = cells[cells["optimal"]].set_index(CELL_ID)
    tried = cells.groupby(CELL_ID, sort=False)[key].apply(lambda w: " ".join(fmt_value(x) for x in levels(w)))
    out = best[[*axes, "size", key, "val_loss_mean", "n"]].rename(columns={key: f"best_{key}"})
    out[f"{key}_tried"] = tried
    out["n_levels"] = cells.groupby(CELL_ID, sort=False)[key].size()
    return out.reset_index()
