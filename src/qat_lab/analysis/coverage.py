"""What is usable, what is not and what is missing: every run is accounted for, none silently dropped.

A run enters the statistics only if it completed with a finite final loss and is not a duplicate
(the same identity as a run already taken, e.g. when two copies of a sweep are merged). Everything
else keeps its row in runs.csv with the reason it was left out, and is counted in the report.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd

from qat_lab.records.identity import ANY

MAX_GRID_POINTS = 100_000
"""Above this, the expected grid of a sweep is not enumerated (it would be a guess anyway)."""


def _exclusion(row: dict) -> str:
    status = row["status"]
    if status == "completed":
        loss = row.get("val_loss")
        return "" if loss is not None and math.isfinite(loss) else "completed without a finite val_loss"
    if status == "diverged":
        step = row.get("diverged_at_step")
        return f"diverged at step {int(step)}" if pd.notna(step) else "diverged (non-finite final evaluation)"
    if status == "failed":
        return f"failed: {row['error']}" if isinstance(row.get("error"), str) else "failed"
    if status == "running":
        return "still running (or stopped without a final record)"
    return status


def mark_usable(table: pd.DataFrame) -> pd.DataFrame:
    """Add `used` (bool) and `excluded` (the reason, '' when used) to the runs table.

    A duplicate is a run whose identity (the `identity` column: records.identity.digest) equals
    that of a run already taken: a second copy of a sweep, or an FP16 run that differs from
    another only in quantiser settings, which cannot change it.
    """
    table = table.copy()
    table["excluded"] = [_exclusion(row) for row in table.to_dict("records")] if len(table) else []
    first_of: dict[str, str] = {}
    excluded = table["excluded"].tolist()
    for i, (run_id, ident) in enumerate(table[["run_id", "identity"]].itertuples(index=False, name=None)):
        if excluded[i]:
            continue
        if ident in first_of:
            excluded[i] = f"duplicate of {first_of[ident]} (same identity)"
        else:
            first_of[ident] = run_id
    table["excluded"] = excluded
    table["used"] = table["excluded"] == ""
    return table


@dataclass
class Coverage:
    counts: dict[str, int]
    """Runs by status."""
    n_used: int
    excluded: pd.DataFrame
    """One row per run left out: run_id, its axes, status and reason."""
    missing: pd.DataFrame
    """Grid points of a sweep (product of the values its records show) with no record at all."""
    expected: dict[str, tuple[int, int]]
    """sweep_id -> (jobs its multirun.yaml describes, records found)."""
    notes: list[str]


def coverage(table: pd.DataFrame, axes: list[str], expected_jobs: dict[str, int]) -> Coverage:
    counts = table["status"].value_counts().to_dict()
    excluded = table.loc[~table["used"], ["run_id", "status", *axes, "excluded"]]
    notes: list[str] = []
    missing_rows = []
    for sweep_id, sweep in table.groupby("sweep_id", dropna=False, sort=True):
        # A sweep still running has records only for jobs that started: the grid its records span
        # (every observed value of every axis that varies within it) shows which points are still
        # to come. Values no job has reached yet are invisible here; multirun.yaml's count covers those.
        # ANY (a quantiser setting of an FP16 run) is no value of its own: it stands for all of them.
        values_of = {a: [v for v in dict.fromkeys(sweep[a].tolist()) if v is not ANY] for a in axes}
        varying = [a for a in axes if len(values_of[a]) > 1]
        values = [values_of[a] for a in varying]
        size = math.prod(len(v) for v in values)
        if size > MAX_GRID_POINTS:
            notes.append(f"sweep {sweep_id}: {size} grid points, not enumerated for missing runs")
            continue
        if expected_jobs.get(sweep_id, size) < size:
            # More combinations than the sweep has jobs: not a full product (e.g. axes that move
            # together), so "missing" combinations would be invented. The job count still tells.
            notes.append(f"sweep {sweep_id}: its records do not form a full grid ({size} combinations, "
                         f"{expected_jobs[sweep_id]} jobs); missing points not enumerated")
            continue
        present = {tuple(map(repr, combo)) for row in sweep[varying].itertuples(index=False, name=None)
                   for combo in itertools.product(*([v] if v is not ANY else values[k] for k, v in enumerate(row)))}
        constant = {a: next(iter(values_of[a]), ANY) for a in axes if a not in varying}
        for combo in itertools.product(*values):
            if tuple(repr(v) for v in combo) not in present:
                missing_rows.append({"sweep_id": sweep_id, **constant, **dict(zip(varying, combo))})
    missing = pd.DataFrame(missing_rows, columns=["sweep_id", *axes])
    found = table["sweep_id"].value_counts().to_dict()
    expected = {sid: (n, int(found.get(sid, 0))) for sid, n in expected_jobs.items()}
    return Coverage(counts=counts, n_used=int(table["used"].sum()), excluded=excluded, missing=missing,
                    expected=expected, notes=notes)
