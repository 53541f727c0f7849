"""Weight-to-grid distance ratio: d(QAT) / d(FP16), same cell and seed (METHOD section 6).

Each quantised run is divided by its bits=16 partner (the pairing of cells.add_pairing), at the
pre-warmdown snapshot and at the end. The ratio only means something when both distances were
measured on the same grid: an FP16 run is measured at the probe bits (6 by default), so the
INT6 ratio is the paper's number and e.g. INT4 runs (measured on the INT4 grid) get no ratio.
"""

from __future__ import annotations

import pandas as pd

from qat_lab.analysis.cells import CELL_ID
from qat_lab.quant import FP_BITS

SNAPSHOTS = ("pre_warmdown", "final")


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Add grid_ratio_pre_warmdown / grid_ratio_final to quantised runs with a same-grid partner."""
    table = table.copy()
    cols = ["grid_bits", *(f"grid_distance_{snap}" for snap in SNAPSHOTS)]
    partner = table.set_index("run_id")[cols].reindex(table["fp_partner"]).set_axis(table.index)
    same_grid = table["fp_partner"].notna() & (table["bits"] != FP_BITS) & (table["grid_bits"] == partner["grid_bits"])
    for snap in SNAPSHOTS:
        col = f"grid_distance_{snap}"
        ok = same_grid & (partner[col] > 0)
        table[f"grid_ratio_{snap}"] = (table[col] / partner[col]).where(ok)
    return table


def ratio_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per cell x warmdown: seed mean, sd and n of both ratios (rows only where some ratio exists)."""
    have = table[table[[f"grid_ratio_{s}" for s in SNAPSHOTS]].notna().any(axis=1)]
    rows = []
    for (cell, wd), g in have.groupby([CELL_ID, "warmdown"], sort=True):
        row = {CELL_ID: cell, "bits": g["bits"].iloc[0], "warmdown": wd, "grid_bits": g["grid_bits"].iloc[0]}
        for snap in SNAPSHOTS:
            r = g[f"grid_ratio_{snap}"].dropna()
            row.update({f"{snap}_mean": r.mean(), f"{snap}_sd": r.std(ddof=1) if len(r) > 1 else float("nan"),
                        f"{snap}_n": len(r)})
        rows.append(row)
    return pd.DataFrame(rows)


def unmatched_grids(table: pd.DataFrame) -> list[int]:
    """Bit-widths whose runs have an FP16 partner measured on another grid (so no ratio)."""
    q = table[table["fp_partner"].notna() & (table["bits"] != FP_BITS)]
    no_ratio = q["grid_ratio_final"].isna() & q["grid_ratio_pre_warmdown"].isna()
    return sorted(int(b) for b in q.loc[no_ratio, "bits"].unique())
