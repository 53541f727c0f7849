"""What happens around update t, in which order: the one place that says it.

    before update t, on the weights entering it, with fake quantisation on or off as update t
    trains (late QAT switches here, so row t's measurements and train loss see one model) (rank 0):
      1. grid distance, every trainer.grid_every steps, at the first warmdown step t0 (the
         pre-warmdown snapshot) and at the step QAT turns on (late QAT: quant.start)
      2. quick validation, every trainer.val_every steps (t > 0), and the loss curve on a fixed
         held-out batch, every trainer.curve_every steps and at t0
    update t: QATLanguageModel.training_step (module.py): LR and momentum for t, forward,
      backward, optimiser step; it leaves the batch loss and the LRs on the module
    after update t:
      3. the row for t -> metrics.csv and the loggers: train loss of batch t, the LR of every
         parameter group, whether update t was fake-quantised (qat_on), and 1-2 (rank 0)
      4. the divergence rules on the loss (callbacks/divergence.py); every rank stops together
      5. a checkpoint when t + 1 is a multiple of trainer.checkpoint_every, after the history is
         made durable, so a resumed run's metrics.csv has every step exactly once (rank 0)
      6. a progress line every trainer.log_every steps (rank 0)
    when fit ends: the final grid distance (the final evaluation and its row are train.collect's)

The pieces (GridProbe, QuickValidation, LossCurve, History, DivergenceRule, Checkpointer,
Progress) are plain objects; this callback only calls them at the right moment
(tests/test_callbacks.py checks each piece and the order through a real tiny run).
"""

from __future__ import annotations

from contextlib import nullcontext

import lightning as L

from qat_lab.callbacks.checkpoint import Checkpointer
from qat_lab.callbacks.divergence import Divergence, DivergenceRule
from qat_lab.callbacks.grid_distance import GridProbe
from qat_lab.callbacks.history import History
from qat_lab.callbacks.progress import Progress
from qat_lab.callbacks.validation import LossCurve, QuickValidation


class TrainingMonitor(L.Callback):
    def __init__(self, grid: GridProbe, quick_val: QuickValidation, history: History, divergence: DivergenceRule,
                 checkpointer: Checkpointer, progress: Progress | None = None, resume: dict | None = None,
                 curve: LossCurve | None = None):
        self.grid, self.quick_val, self.history, self.curve = grid, quick_val, history, curve
        self.divergence, self.checkpointer, self.progress, self.resume = divergence, checkpointer, progress, resume
        self.diverged: Divergence | None = None
        self._measured: dict[str, float | None] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.resume is not None:
            Checkpointer.restore_optimisers(pl_module, self.resume)
        if trainer.is_global_zero:  # one history per run, whatever the number of devices
            self.history.open(pl_module.lr_group_names(), resume_step=pl_module.step)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        t = pl_module.step
        self._measured = {}
        pl_module.quantise_for_step(t)  # late QAT: measure the model update t trains (on or off)
        if not trainer.is_global_zero:
            return
        if self.grid.due(t):
            self._measured["grid_distance"] = self.grid.measure(pl_module.model, t)[0]
        autocast = getattr(trainer.precision_plugin, "forward_context", nullcontext)
        if self.quick_val.due(t):
            self._measured.update(self.quick_val.measure(pl_module.model, autocast))
        if self.curve is not None and self.curve.due(t):
            self._measured.update(self.curve.measure(pl_module.model, autocast))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        t = pl_module.step - 1  # the update that just happened
        loss = pl_module.last_loss
        if trainer.is_global_zero:
            row = {"train_loss": loss, **{f"lr/{k}": lr for k, lr in pl_module.last_lrs.items()}, **self._measured}
            if pl_module.qat_on is not None:
                row["qat_on"] = int(pl_module.qat_on)
            self.history.write(t, row, trainer.loggers)
        verdict = self.divergence.check(t, loss)
        # Ranks see different batches: stop all of them if any diverged (a no-op on one device).
        if trainer.strategy.reduce_boolean_decision(verdict is not None, all=False):
            self.diverged = verdict or Divergence(t, "non-finite", f"another rank diverged at step {t}")
            trainer.should_stop = True
            return
        if trainer.is_global_zero and self.checkpointer.due(pl_module.step):
            self.history.make_durable()
            self.checkpointer.save(pl_module, self.grid.pre_warmdown, self.grid.at_qat_start)
        if trainer.is_global_zero and self.progress is not None:
            self.progress.step(t, loss)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.grid.final = self.grid.measure(pl_module.model)
