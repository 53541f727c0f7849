"""Held-out losses during training, on fixed val batches, with the weights as trained
(fake-quantised for QAT runs):

- the quick validation (`val_loss`, `val_bpb`) every trainer.val_every steps on val_batches;
- the low-noise loss curve (`curve_loss`) every trainer.curve_every steps, at the first warmdown
  step and after the last step, on curve_batches batches: the same tokens every time, so the
  curve moves only with the model, not with the batch (what the schedule laws are fitted on;
  the per-step train loss of one random batch is ~10x noisier: docs/prediction.md).

The end-of-run evaluation uses the full val set (evaluation.py)."""

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


class LossCurve:
    """The `curve_loss` column (see the module docstring)."""

    def __init__(self, every: int, batches: list, warmdown_start: int):
        self.every, self.batches, self.t0 = every, batches, warmdown_start

    def due(self, step: int) -> bool:
        return bool(self.every) and (step % self.every == 0 or step == self.t0)

    def measure(self, model, autocast=nullcontext) -> dict[str, float]:
        return {"curve_loss": mean_loss(model, self.batches, autocast)}
