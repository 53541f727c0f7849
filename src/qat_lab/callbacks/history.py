"""Per-step history: one row per optimiser step to metrics.csv and to every Lightning logger.

Row t holds the train loss of batch t, the LR every parameter group used for update t, and any
measurement taken on the weights entering step t (grid distance, quick validation). A last row at
t = steps holds the end-of-run measurements. Loss and LRs share a row, so nothing has to be
joined back together when runs are pulled from W&B.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L

from qat_lab.runs import HISTORY_NAME

MEASURED_COLUMNS = ("val_loss", "val_bpb", "grid_distance")


class MetricsHistory(L.Callback):
    def __init__(self, job_dir: str | Path, flush_every: int = 20, resume_step: int = 0):
        self.path = Path(job_dir) / HISTORY_NAME
        self.flush_every = flush_every
        self.resume_step = resume_step
        """Resuming at this step: keep the rows before it, drop the ones the lost run wrote after."""
        self._file = None
        self._writer: csv.DictWriter | None = None
        self.columns: list[str] = []

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one history per run, whatever the number of devices
            return
        lr_columns = [f"lr/{name}" for name in pl_module.lr_group_names()]
        self.columns = ["step", "train_loss", *lr_columns, *MEASURED_COLUMNS]
        kept = []
        if self.resume_step and self.path.exists():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) < self.resume_step]
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(kept)

    def write_row(self, trainer: L.Trainer, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **metrics}
        if self._writer is not None:
            self._writer.writerow({k: row.get(k, "") for k in self.columns})
            if step % self.flush_every == 0:
                self._file.flush()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for logger in trainer.loggers:
            logger.log_metrics(numeric, step=step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = pl_module.step - 1  # the update that just happened
        metrics = {"train_loss": pl_module.last_loss, **{f"lr/{k}": v for k, v in pl_module.last_lrs.items()}}
        metrics.update(pl_module.pending_metrics)
        pl_module.pending_metrics.clear()
        self.write_row(trainer, step, metrics)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._writer = None
