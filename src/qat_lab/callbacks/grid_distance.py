"""The weight-to-grid distance while a model trains (METHOD section 6).

Measured on the weights entering step t every `every` steps, at the first warmdown step t0 (the
"pre-warmdown" snapshot: the weights the constant-LR phase produced), at the step fake
quantisation turns on in a late-QAT run (the weights QAT starts from) and after the last step,
always on the run's own grid (QuantConfig.grid_bits: the probe bits for bits=16 runs).
"""

from __future__ import annotations

from qat_lab.quant.config import QuantConfig
from qat_lab.quant.grid_distance import grid_distance

Snapshot = tuple[float, dict[str, float]]
"""(element-weighted mean distance, {matrix: mean distance})."""


class GridProbe:
    def __init__(self, qcfg: QuantConfig, every: int, warmdown_start: int, qat_start: int | None = None):
        self.qcfg, self.every, self.t0 = qcfg, every, warmdown_start
        self.qat_start = qat_start if qat_start else None  # None: from init (0) or bits=16
        self.pre_warmdown: Snapshot | None = None
        self.at_qat_start: Snapshot | None = None
        self.final: Snapshot | None = None

    def due(self, step: int) -> bool:
        return step in (self.t0, self.qat_start) or bool(self.every and step % self.every == 0)

    def measure(self, model, step: int | None = None) -> Snapshot:
        snap = grid_distance(model, self.qcfg)
        if step == self.t0:
            self.pre_warmdown = snap
        if step is not None and step == self.qat_start:
            self.at_qat_start = snap
        return snap
