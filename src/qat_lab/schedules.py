"""Learning-rate schedules (METHOD section 4) as multipliers of each group's base LR.

Step t runs from 0 to T-1. The multiplier applies to the LR used *for the update at step t*.

- wsd: linear warmup over W steps, constant peak, then over the last n = round(f*T) steps decay
  from peak towards final_lr_frac * peak with shape g(r), r = (t - t0) / n, t0 = T - n.
  r reaches 1 only at t = T (after the last update), so every step in the window moves the
  weights: the first warmdown step t0 runs at peak LR and is the "pre-warmdown" snapshot point.
- cosine: after warmup, cosine from peak to final over the remaining steps (same r convention).
- constant: warmup then peak.

The lr_mult axis multiplies every base LR and is applied by the optimiser builders, not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from qat_lab import validation as v

DECAY_SHAPES = {
    "linear": lambda r: 1.0 - r,
    "cosine": lambda r: 0.5 * (1.0 + math.cos(math.pi * r)),
    "sqrt": lambda r: 1.0 - math.sqrt(r),
}


def validate_warmdown(value: object) -> float:
    """The warmdown fraction in [0, 1] (the top-level `warmdown` axis reaches ScheduleConfig by
    interpolation: the error names it the way users set it)."""
    return v.in_range("warmdown", value, 0.0, 1.0, hint="is not valid: use a fraction of the run in [0, 1]")


@dataclass
class ScheduleConfig:
    """LR schedule. The warmdown fraction is the top-level `warmdown` axis (wd33 = 0.33)."""

    kind: Literal["wsd", "cosine", "constant"] = "wsd"
    """'wsd' (warmup-stable-decay), 'cosine' or 'constant'."""
    warmdown: float = 0.33
    """Fraction of all steps spent decaying (wsd only); set from the top-level `warmdown`."""
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"
    """Shape of the wsd decay: 'linear' 1-r, 'cosine' (1+cos(pi r))/2, 'sqrt' 1-sqrt(r)."""
    warmup_steps: int = 0
    """Linear warmup steps from ~0 to peak (counted inside the total)."""
    final_lr_frac: float = 0.0
    """LR at the end of the decay as a fraction of peak."""

    def __post_init__(self) -> None:
        v.check_choices(self, "schedule")
        # The top-level `warmdown` reaches this field by interpolation: name it the way users set it.
        self.warmdown = validate_warmdown(self.warmdown)
        self.warmup_steps = v.integer("schedule.warmup_steps", self.warmup_steps, 0)
        v.in_range("schedule.final_lr_frac", self.final_lr_frac, 0.0, 1.0)

    def warmdown_start(self, total_steps: int) -> int:
        """First step of the decay window t0 (== total_steps when there is no decay)."""
        if self.kind != "wsd":
            return total_steps if self.kind == "constant" else self.warmup_steps
        return total_steps - int(round(self.warmdown * total_steps))

    def multiplier(self, step: int, total_steps: int) -> float:
        """LR multiplier in [0, 1] for the update at `step` of `total_steps`."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        final = self.final_lr_frac
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(total_steps - self.warmup_steps, 1)
            r = min((step - self.warmup_steps) / span, 1.0)
            return final + (1.0 - final) * DECAY_SHAPES["cosine"](r)
        t0 = max(self.warmdown_start(total_steps), self.warmup_steps)
        if step < t0:
            return 1.0
        r = min((step - t0) / max(total_steps - t0, 1), 1.0)
        return final + (1.0 - final) * DECAY_SHAPES[self.decay_shape](r)

    def trace(self, total_steps: int) -> list[float]:
        """Multipliers for every step: the schedule's whole LR trace."""
        return [self.multiplier(t, total_steps) for t in range(total_steps)]
