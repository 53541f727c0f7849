"""The LightningModule: a GPT with fake quantisation, routed optimisers and a step-wise LR schedule.

Optimisation is manual (`automatic_optimization = False`) because a Muon run owns two optimisers
(Muon for hidden matrices, AdamW for the rest) that must step together once per batch, and the
natural-gradient optimisers (iEF) need per-sample gradients instead of one backward. Lightning
counts every `LightningOptimizer.step` as a global step, so the module keeps its own step counter
(`self.step`): step t is the t-th optimiser update, the index the LR schedule is written in.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from qat_lab.config import RunSpec
from qat_lab.models.gpt import GPT, count_parameters, lm_loss
from qat_lab.optim import apply_step_hparams, build_optimisers, param_group_names
from qat_lab.quant import apply_qat, set_qat


class QATLanguageModel(L.LightningModule):
    def __init__(self, spec: RunSpec, vocab_size: int):
        super().__init__()
        self.spec = spec
        self.model = GPT(spec.model, vocab_size)
        self.quantised = apply_qat(self.model, spec.quant)
        steps = spec.trainer.steps
        self.qat_start_step = spec.quant.start_step(steps, lambda t: spec.schedule.multiplier(t, steps))
        """First step trained with fake quantisation (None at bits=16; `steps` if it never turns on)."""
        self.qat_on: bool | None = None
        """Whether fake quantisation is on for the current step (None at bits=16): what update t
        trains with, and what the measurements taken before it (monitor.py) see."""
        self.quantise_for_step(0)
        self.automatic_optimization = False
        self.step = 0
        """Optimiser updates done so far (== index of the next update)."""
        self.last_loss = math.nan
        """Loss of the last training batch (what callbacks/monitor.py records and checks)."""
        self.last_lrs: dict[str, float] = {}
        """The LR every parameter group used for the last update."""

    def parameter_counts(self) -> dict[str, int]:
        counts = count_parameters(self.model)
        counts["quantised"] = sum(m.weight.numel() for m in self.model.modules() if hasattr(m, "qcfg"))
        return counts

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)

    def configure_optimizers(self):
        return build_optimisers(self.model, self.spec.optim, self.spec.lr_mult)

    @property
    def raw_optimisers(self) -> list[torch.optim.Optimizer]:
        # The unwrapped torch optimisers: stepping them directly keeps Lightning's global_step out
        # of our step accounting (see the module docstring).
        return list(self.trainer.optimizers)

    def quantise_for_step(self, t: int) -> None:
        """Fake quantisation on or off as update t trains: late QAT turns it on from
        qat_start_step. The monitor calls this before it measures the weights entering update t,
        so that row t's validation and curve losses see the same model as row t's train loss."""
        if self.qat_start_step is None:
            return
        on = t >= self.qat_start_step
        if on != self.qat_on:
            set_qat(self.model, on)
            self.qat_on = on

    def training_step(self, batch, batch_idx: int):
        x, y = batch
        opts = self.raw_optimisers
        multiplier = self.spec.schedule.multiplier(self.step, self.spec.trainer.steps)
        apply_step_hparams(opts, self.step, multiplier)
        self.last_lrs = {g["group"]: g["lr"] for opt in opts for g in opt.param_groups}
        self.quantise_for_step(self.step)

        if getattr(opts[0], "needs_batch", False):
            # iEF / EF / SF (qat_lab.optim.ief): per-sample gradients of this batch, no backward
            # here; the returned loss is the mean token loss, as below.
            loss = opts[0].natural_step(x, y)
        else:
            # Micro-batches of equal size (trainer.accumulate_grad_batches): the mean of their mean
            # losses is the batch's mean loss, so the summed gradients are the batch's gradient.
            k = self.spec.trainer.accumulate_grad_batches
            losses = []
            for xm, ym in zip(x.chunk(k), y.chunk(k)):
                micro = lm_loss(self.model(xm), ym)
                self.manual_backward(micro / k)
                losses.append(micro.detach())
            loss = torch.stack(losses).mean()
            clip = self.spec.trainer.grad_clip
            if clip is not None and self.spec.trainer.grad_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.model.parameters(), clip)
            elif clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            for opt in opts:
                opt.step()
            for opt in opts:
                opt.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())
        self.step += 1
        return loss.detach()

    def lr_group_names(self) -> list[str]:
        return param_group_names(self.raw_optimisers)
