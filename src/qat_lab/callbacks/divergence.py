"""Stop a run whose loss is NaN/inf or above trainer.max_loss, and mark it diverged.

The run then ends normally (no exception), so its record says `diverged` and a sweep goes on
with the next job.
"""

from __future__ import annotations

import math

import lightning as L


class DivergenceGuard(L.Callback):
    def __init__(self, max_loss: float):
        self.max_loss = max_loss

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = pl_module.last_loss
        if not math.isfinite(loss) or loss > self.max_loss:
            pl_module.diverged_at = pl_module.step - 1
            trainer.should_stop = True
