"""When a run has diverged: rules defined from the data, not a fixed number (docs/reliability.md).

During training, after update t (rank 0's loss, the decision shared by every rank):
1. the train loss is NaN or inf;
2. the train loss is above trainer.max_loss (a fixed cap, off by default);
3. after the grace period (trainer.divergence_grace; default 10% of the run, at least 20 steps)
   the train loss has been above ln(vocab), the loss of a uniform prediction, for PATIENCE
   consecutive steps: the model predicts worse than knowing nothing. (A fixed cap such as 100
   nats can never fire here: with a logit softcap c the loss is at most 2c + ln V.)
At the end, on the final evaluation:
4. the final val loss is not finite; or, for a run longer than its grace period, it is above
   ln(vocab), or its bits per byte are above the unigram baseline of the val split (worse than
   byte/token frequencies alone). A run shorter than that (a 12-step smoke test, a slow
   optimiser's first steps: a fresh model starts above ln(vocab)) has not had time to learn.
A diverged run stops (rules 1-3) or is not evaluated further (4); its record says `diverged` with
the step, the rule and the numbers, and the sweep goes on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PATIENCE = 5
"""Consecutive steps above ln(vocab), after the grace period, that rule 3 needs."""


@dataclass
class Divergence:
    step: int
    rule: str
    """'non-finite', 'max_loss', 'worse-than-uniform' or 'final-above-unigram'."""
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


class DivergenceRule:
    """Rules 1-3 on the train loss, one step at a time."""

    def __init__(self, vocab_size: int, grace: int, max_loss: float | None = None, patience: int = PATIENCE):
        self.uniform = math.log(vocab_size)
        self.grace, self.max_loss, self.patience = grace, max_loss, patience
        self._above = 0

    def check(self, step: int, loss: float) -> Divergence | None:
        """The verdict after update `step` whose batch loss was `loss` (None: carry on)."""
        if not math.isfinite(loss):
            return Divergence(step, "non-finite", f"train loss {loss} at step {step}")
        if self.max_loss is not None and loss > self.max_loss:
            return Divergence(step, "max_loss", f"train loss {loss:.4g} above trainer.max_loss={self.max_loss:g} "
                                                f"at step {step}")
        self._above = self._above + 1 if step >= self.grace and loss > self.uniform else 0
        if self._above >= self.patience:
            return Divergence(step, "worse-than-uniform",
                              f"train loss above ln(vocab) = {self.uniform:.3f} (a uniform prediction) for "
                              f"{self.patience} steps after the {self.grace}-step grace period (last: {loss:.4g} at "
                              f"step {step})")
        return None


def final_divergence(step: int, val_loss: float, val_bpb: float | None, unigram_bpb: float | None,
                     vocab_size: int, grace: int) -> Divergence | None:
    """Rule 4 on the final evaluation (the round trip at the run's bits); `step` = steps trained."""
    if not math.isfinite(val_loss):
        return Divergence(step, "final-above-unigram", f"final val loss {val_loss}")
    if step <= grace:
        return None
    if val_loss > math.log(vocab_size):
        return Divergence(step, "final-above-unigram", f"final val loss {val_loss:.4g} above ln(vocab) = "
                                                       f"{math.log(vocab_size):.3f} (a uniform prediction)")
    if val_bpb is not None and unigram_bpb is not None and val_bpb > unigram_bpb:
        return Divergence(step, "final-above-unigram", f"final val_bpb {val_bpb:.3f} above the unigram baseline "
                                                       f"{unigram_bpb:.3f} of the val split after {step} steps")
    return None
