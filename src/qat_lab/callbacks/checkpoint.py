"""Step checkpoints, so a requeued (preempted or timed-out) Slurm job resumes instead of restarting.

Every `every` steps the job dir gets checkpoint.pt (atomically replaced): model and optimiser
states, the step counter, the RNG state and the pre-warmdown grid snapshot. Because batch t is a
function of (seed, t) only, resuming at step t sees exactly the batches the lost run would have.
The checkpoint is deleted when the run ends (completed or diverged): it exists only to resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

CHECKPOINT_NAME = "checkpoint.pt"


def load_checkpoint(job_dir: str | Path) -> dict[str, Any] | None:
    path = Path(job_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


class StepCheckpoint(L.Callback):
    def __init__(self, job_dir: str | Path, every: int, grid_monitor, resume: dict[str, Any] | None = None):
        self.path = Path(job_dir) / CHECKPOINT_NAME
        self.every, self.grid, self.resume = every, grid_monitor, resume

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if self.resume is None:
            return
        # Optimisers exist only once fit has called configure_optimizers: restore them here.
        for opt, state in zip(pl_module.raw_optimizers, self.resume["optimizers"]):
            opt.load_state_dict(state)
        torch.set_rng_state(self.resume["torch_rng"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.every and pl_module.step % self.every == 0 and pl_module.diverged_at is None and trainer.is_global_zero:
            self.save(pl_module)

    def save(self, pl_module) -> None:
        state = {
            "step": pl_module.step,
            "model": pl_module.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in pl_module.raw_optimizers],
            "torch_rng": torch.get_rng_state(),
            "grid_pre_warmdown": self.grid.pre_warmdown,
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
