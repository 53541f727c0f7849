"""A quick validation every `every` steps on a few fixed val batches, with the weights as trained
(fake-quantised for QAT runs). The end-of-run evaluation uses the full val set (evaluation.py)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable

from qat_lab.evaluation import mean_loss


class QuickValidation:
    def __init__(self, every: int, batches: list, to_bpb: Callable[[float], float | None]):
        self.every, self.batches, self.to_bpb = every, batches, to_bpb

    def due(self, step: int) -> bool:
        return bool(self.every and step > 0 and step % self.every == 0)

    def measure(self, model, autocast=nullcontext) -> dict[str, float | None]:
        loss = mean_loss(model, self.batches, autocast)
        return {"val_loss": loss, "val_bpb": self.to_bpb(loss)}
