"""--to-wandb: log the report's tables, plots and fits to W&B as an analysis run.

The run has job_type=analysis and the sweep id as its group, so it sits beside the training runs
it analyses on the dashboard. Offline by default (like training): `wandb sync <dir>` uploads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from qat_lab.analysis.pipeline import Analysis
from qat_lab.records.identity import ANY


def _loggable(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with the identity wildcard as '*' (W&B tables hold JSON values only)."""
    wild = [c for c in df.columns if df[c].dtype == object and df[c].map(lambda v: v is ANY).any()]
    return df.assign(**{c: df[c].map(lambda v: str(v) if v is ANY else v) for c in wild}) if wild else df


def export(a: Analysis, out: Path, project: str = "qat_lab", mode: str = "offline", entity: str | None = None,
           wandb_module: Any = None) -> str:
    """Log cells/runs/comparisons as tables, every PNG as an image, report + fits as an artifact; returns the run id."""
    if wandb_module is None:
        import wandb as wandb_module
    wandb = wandb_module
    groups = sorted({str(g) for g in a.table["sweep_id"].dropna()})
    group = groups[0] if len(groups) == 1 else "+".join(groups)[:120]
    run = wandb.init(project=project, entity=entity, job_type="analysis", group=group, name=f"analysis-{group}"[:128],
                     mode=mode, dir=str(out), config={"inputs": a.runset.inputs, "law_points": a.options.law_points,
                                                      "holdout": a.options.holdout, "n_runs": len(a.table),
                                                      "n_used": a.coverage.n_used})
    try:
        tables = {"cells": a.cells, "runs": a.table, "comparisons": a.comparisons}
        # Mixed types are real here (an axis missing in older records is None beside numbers).
        run.log({name: wandb.Table(dataframe=_loggable(df), allow_mixed_types=True) for name, df in tables.items()
                 if len(df)})
        run.log({f"plots/{p.stem}": wandb.Image(str(p)) for p in sorted(out.glob("*.png"))})
        run.summary["n_runs"] = len(a.table)
        run.summary["n_used"] = a.coverage.n_used
        artifact = wandb.Artifact(f"analysis-{group}"[:128].replace("+", "_").replace(":", "_"), type="analysis")
        for name in ("report.md", "fits.json", "cells.csv", "runs.csv", "comparisons.csv"):
            if (out / name).exists():
                artifact.add_file(str(out / name))
        run.log_artifact(artifact)
        return run.id
    finally:
        run.finish()
