"""Weight-to-grid distance during training (METHOD section 6).

Measured on the weights entering step t, every `every` steps, at the first warmdown step t0
(the "pre-warmdown" snapshot: the weights the constant-LR phase produced) and after the last
step. bits=16 runs are measured against the probe grid.
"""

from __future__ import annotations

import lightning as L

from qat_lab.quant import grid_bits_for, grid_distance


class GridDistanceMonitor(L.Callback):
    def __init__(self, every: int, warmdown_start: int, total_steps: int):
        self.every, self.t0, self.total = every, warmdown_start, total_steps
        self.pre_warmdown: tuple[float, dict[str, float]] | None = None
        self.final: tuple[float, dict[str, float]] | None = None

    def measure(self, pl_module) -> tuple[float, dict[str, float]]:
        spec = pl_module.spec
        return grid_distance(pl_module.model, grid_bits_for(spec.bits, spec.quant), spec.quant)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        t = pl_module.step
        due = self.every and t % self.every == 0
        if t == self.t0 or due:
            mean, per_layer = self.measure(pl_module)
            pl_module.pending_metrics["grid_distance"] = mean
            if t == self.t0:
                self.pre_warmdown = (mean, per_layer)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self.final = self.measure(pl_module)
