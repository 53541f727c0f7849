"""metrics.csv: one row per optimiser step, written while the run trains (docs/run_record.md).

Row t holds the train loss of batch t, the LR every parameter group used for update t, and every
measurement taken on the weights entering step t; a last row at t = steps holds the end-of-run
measurements. Loss and LRs share a row, so nothing has to be joined when runs come back from W&B.
The same rows go to every Lightning logger.

Written with the csv module rather than Lightning's CSVLogger: the CSVLogger buffers metrics per
`log_every_n_steps` and writes its own header layout and version folders, where the analysis and
resumption need exactly one row per step in one file, cut back to a checkpoint's step on resume.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from qat_lab.atomic import atomic_output
from qat_lab.records import HISTORY_NAME

MEASURED_COLUMNS = ("val_loss", "val_bpb", "curve_loss", "grid_distance", "qat_on")


def rows_before(path: Path, step: int) -> list[dict[str, str]] | None:
    """The rows 0..step-1 of a history, or None unless it holds exactly those steps (once each)."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") not in (None, "") and int(r["step"]) < step]
    except (OSError, ValueError, csv.Error):
        return None
    return rows if [int(r["step"]) for r in rows] == list(range(step)) else None


class History:
    """The run's metrics.csv (rank 0 only) and the loggers' rows."""

    def __init__(self, job_dir: str | Path, flush_every: int = 20):
        self.path = Path(job_dir) / HISTORY_NAME
        self.flush_every = flush_every
        self.columns: list[str] = []
        self._file = None
        self._writer: csv.DictWriter | None = None

    def open(self, lr_groups: list[str], resume_step: int = 0) -> None:
        """Start the file; when resuming at `resume_step`, keep the rows before it (and only
        those: rows a killed run wrote after its last checkpoint are dropped)."""
        self.columns = ["step", "train_loss", *(f"lr/{g}" for g in lr_groups), *MEASURED_COLUMNS]
        kept = rows_before(self.path, resume_step) if resume_step else []
        if kept is None:
            raise RuntimeError(f"{self.path} does not hold steps 0..{resume_step - 1}; cannot resume")
        # The kept rows are rewritten atomically, then the file is appended to: nothing is ever
        # truncated in place.
        with atomic_output(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")

    def write(self, step: int, metrics: dict[str, float], loggers=()) -> None:
        if self._writer is not None:
            self._writer.writerow({"step": step, **{k: metrics.get(k, "") for k in self.columns[1:]}})
            if step % self.flush_every == 0:
                self._file.flush()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for logger in loggers:
            logger.log_metrics(numeric, step=step)

    def make_durable(self) -> None:
        """Flush and fsync: a checkpoint saved after this finds every row before it on disk."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
                self._writer = None
