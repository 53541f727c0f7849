"""Weight-to-grid distance ratio: d(QAT) / d(FP16), same cell and seed (METHOD section 6).

Each used quantised run is divided by an FP16 run equal to it on every key but bits (the identity
pairing, records.identity.fp16_partners), at the pre-warmdown snapshot and at the end. The ratio
only means something when both distances were measured with the same ruler:

- on the same grid: an FP16 run is measured at the probe bits (6 by default), so the INT6 ratio
  is the paper's number and e.g. INT4 runs (measured on the INT4 grid) get no ratio;
- with the same quantiser settings (scale rule, granularity, range, ...), read from each run's
  own config: the FP16 run's identity has ANY there, which is right for its loss (nothing is
  quantised) but not for its distance, which was measured with its own settings.

So the grid partner may differ from the penalty's partner: among completed FP16 runs of equal
identity (duplicates included: they are the same training measured with another ruler), the
first measured with the same settings.
"""

from __future__ import annotations

import pandas as pd

from qat_lab.analysis.cells import CELL_ID
from qat_lab.quant import FP_BITS
from qat_lab.records import identity

SNAPSHOTS = ("pre_warmdown", "final")
NO_FP16 = "no FP16 partner"
OTHER_GRID = "FP16 partner measured on another grid"
OTHER_QUANTISER = "no FP16 run measured with the same quantiser settings"


def add_ratios(table: pd.DataFrame, identities: list[dict], records: list[dict]) -> pd.DataFrame:
    """Add grid_partner, grid_ratio_pre_warmdown / grid_ratio_final and grid_note (why a used
    quantised run has no ratio) to the runs table (`identities`, `records` in its row order)."""
    table = table.copy()
    settings = [identity.quantiser_settings(r.get("config") or {}) for r in records]
    grid_bits = table["grid_bits"].tolist()
    measured = [identity.usable(r) for r in records]

    def same_ruler(i: int, j: int) -> bool:
        return settings[i] == settings[j] and grid_bits[i] == grid_bits[j]

    partners = identity.fp16_partners(identities, measured, accept=same_ruler)
    run_ids = table["run_id"].tolist()
    table["grid_partner"] = [run_ids[j] if j is not None and j != i else None for i, j in enumerate(partners)]
    partner = table.set_index("run_id")[[f"grid_distance_{s}" for s in SNAPSHOTS]].reindex(
        table["grid_partner"]).set_axis(table.index)
    for snap in SNAPSHOTS:
        col = f"grid_distance_{snap}"
        ok = table["grid_partner"].notna() & (partner[col] > 0)
        table[f"grid_ratio_{snap}"] = (table[col] / partner[col]).where(ok)
    quantised = table["used"] & (table["bits"] != FP_BITS)
    position = {run_id: i for i, run_id in enumerate(run_ids)}
    notes = []
    for i, (q, fp, gp) in enumerate(zip(quantised, table["fp_partner"], table["grid_partner"])):
        if not q or pd.notna(gp):
            notes.append("")
        elif pd.isna(fp):
            notes.append(NO_FP16)
        else:
            notes.append(OTHER_GRID if grid_bits[i] != grid_bits[position[fp]] else OTHER_QUANTISER)
    table["grid_note"] = notes
    return table


def ratio_table(table: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per cell x level of the compared key: seed mean, sd and n of both ratios (rows only where
    some ratio exists)."""
    ratios = [f"grid_ratio_{s}" for s in SNAPSHOTS]
    have = table.loc[table[ratios].notna().any(axis=1), [CELL_ID, key, "bits", "grid_bits", *ratios]]
    rows = []
    for (cell, level), g in have.groupby([CELL_ID, key], sort=False):
        row = {CELL_ID: cell, "bits": g["bits"].iloc[0], key: level, "grid_bits": g["grid_bits"].iloc[0]}
        for snap in SNAPSHOTS:
            r = g[f"grid_ratio_{snap}"].dropna()
            row.update({f"{snap}_mean": r.mean(), f"{snap}_sd": r.std(ddof=1) if len(r) > 1 else float("nan"),
                        f"{snap}_n": len(r)})
        rows.append(row)
    return pd.DataFrame(rows)


def missing_ratios(table: pd.DataFrame) -> dict[str, list[int]]:
    """Why used quantised runs with an FP16 partner have no ratio: reason -> the bit-widths concerned."""
    q = table[(table["grid_note"] != "") & (table["grid_note"] != NO_FP16)]
    return {note: sorted(int(b) for b in g["bits"].unique()) for note, g in q.groupby("grid_note", sort=True)}
