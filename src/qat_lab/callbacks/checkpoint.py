"""Step checkpoints, so a requeued (preempted or timed-out) job resumes instead of restarting.

Every `every` steps the job dir gets checkpoint.pt (atomically replaced): model and optimiser
states, the step counter, the RNG state and the pre-warmdown grid snapshot, plus the job's
config fingerprint (qat_lab.records.identity). Because batch t is a function of (seed, t) only,
resuming at step t sees exactly the batches the lost run would have. The checkpoint is deleted
when the run ends (completed or diverged): it exists only to resume.

A checkpoint is untrusted input: it is read with torch.load(weights_only=True), which unpickles
only tensors and plain containers, never code. One that cannot be read (cut short by a kill, or
not ours), or that belongs to another configuration, is set aside under a new name with one line
saying so, and the job starts from step 0.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Any

import torch

from qat_lab.atomic import atomic_output

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "qatlab-checkpoint/1"
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
"""Terminal escape sequences (CSI such as bold \\x1b[1m, and the two-byte ones)."""


def set_aside(path: Path, why: str) -> Path:
    """Rename an unusable checkpoint out of the way (kept for inspection, never loaded again)."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(aside)
    return aside


def _problem(state: Any, fingerprint: str, steps: int) -> str | None:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return "is not a qatlab checkpoint"
    if state.get("fingerprint") != fingerprint:
        return "was written by another configuration"
    step = state.get("step")
    if not isinstance(step, int) or not 0 < step < steps:
        return f"holds step {step!r}, outside this run's 1..{steps - 1}"
    return None


def load_checkpoint(job_dir: str | Path, fingerprint: str, steps: int) -> tuple[dict | None, str | None]:
    """(state to resume from or None, a line to print when a checkpoint was set aside)."""
    path = Path(job_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None, None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = _problem(state, fingerprint, steps)
    except Exception as e:  # torch raises many types for a bad file (zip, pickle, EOF, ...)
        text = _ANSI.sub("", str(e)).strip()  # torch marks up its message for terminals
        problem = f"cannot be read ({type(e).__name__}: {text.splitlines()[0][:200] if text else ''})"
    if problem is None:
        return state, None
    aside = set_aside(path, "unusable")
    return None, f"{path} {problem}: set aside as {aside.name}; starting from step 0"


def _optimiser_states(state: dict) -> list:
    # Checkpoints written before the British spelling hold them under "optimizers": they still resume.
    return state["optimisers"] if "optimisers" in state else state["optimizers"]


class _Writer(io.RawIOBase):
    """A file wrapper that remembers the OSError of a failed write."""

    def __init__(self, f):
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise


class Checkpointer:
    """Saves the state a resumed job needs; restores the part that exists only once fit started."""

    def __init__(self, job_dir: str | Path, every: int, fingerprint: str, total_steps: int):
        self.path = Path(job_dir) / CHECKPOINT_NAME
        self.every, self.fingerprint, self.total = every, fingerprint, total_steps

    def due(self, steps_done: int) -> bool:
        return bool(self.every) and steps_done % self.every == 0 and 0 < steps_done < self.total

    def save(self, pl_module, grid_pre_warmdown, grid_at_qat_start=None) -> None:
        def plain(snap):
            return None if snap is None else [float(snap[0]), {k: float(x) for k, x in snap[1].items()}]

        state = {
            "format": FORMAT, "fingerprint": self.fingerprint,
            "step": pl_module.step,
            "model": pl_module.model.state_dict(),
            "optimisers": [opt.state_dict() for opt in pl_module.raw_optimisers],
            "torch_rng": torch.get_rng_state(),
            "grid_pre_warmdown": plain(grid_pre_warmdown),
            "grid_at_qat_start": plain(grid_at_qat_start),
            "qat_on": pl_module.qat_on,  # a function of the step; kept to check the resumed run agrees
        }
        with atomic_output(self.path) as tmp, open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                # torch reports a failed write (a full disk) as its own RuntimeError; surface the
                # storage error it hides, so the job's one line says what happened.
                if writer.error is not None:
                    raise writer.error from None
                raise

    @staticmethod
    def restore_optimisers(pl_module, state: dict) -> None:
        """Optimisers exist only once fit has called configure_optimizers: restore them then."""
        for opt, saved in zip(pl_module.raw_optimisers, _optimiser_states(state)):
            opt.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng"])
        # Fake quantisation resumes in the state the last saved update had; the next training
        # step sets it for its own step (the same rule the lost run followed).
        if state.get("qat_on") is not None:
            from qat_lab.quant import set_qat

            set_qat(pl_module.model, state["qat_on"])
            pl_module.qat_on = state["qat_on"]

    def discard(self) -> None:
        """Remove the run's checkpoint once it is over (only if this run writes checkpoints)."""
        if self.every:
            self.path.unlink(missing_ok=True)
