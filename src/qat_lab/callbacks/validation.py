"""A quick validation every `every` steps on a few fixed val batches, with the weights as trained
(fake-quantised for QAT runs). The end-of-run evaluation uses the full val set (evaluation.py)."""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L

from qat_lab.evaluation import mean_loss


class QuickValidation(L.Callback):
    def __init__(self, every: int, batches: list, to_bpb):
        self.every, self.batches, self.to_bpb = every, batches, to_bpb

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        t = pl_module.step
        if self.every and t > 0 and t % self.every == 0:
            autocast = getattr(trainer.precision_plugin, "forward_context", nullcontext)
            loss = mean_loss(pl_module.model, self.batches, autocast)
            pl_module.pending_metrics["val_loss"] = loss
            pl_module.pending_metrics["val_bpb"] = self.to_bpb(loss)
