"""Progress lines while a job trains: step/total, loss, tokens per second, elapsed, ETA.

    [3] bits=4,warmdown=0.1: step 60/150  loss 2.414  31.2k tok/s  elapsed 0:07  ETA 0:10

Every `every` steps (trainer.log_every; default a tenth of the run) and at the last step, through
the `qat_lab` logger, so the line reaches the console and, timestamped, the job's qatlab.log.
`qatlab -q` (QATLAB_QUIET=1) turns them off; the job's result line stays.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("qat_lab")


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, head: str, total_steps: int, tokens_per_step: int, every: int | None = None):
        self.head, self.total, self.tokens_per_step = head, total_steps, tokens_per_step
        quiet = os.environ.get("QATLAB_QUIET", "") not in ("", "0")
        self.every = 0 if quiet else (every if every is not None else max(1, total_steps // 10))
        self._start: float | None = None
        self._first = 0

    def step(self, t: int, loss: float) -> str | None:
        """Call after update t; logs (and returns) a line when one is due."""
        now = time.perf_counter()
        if self._start is None:
            self._start, self._first = now, t  # timed from the first step of this process (a resume too)
            return None
        done = t + 1
        if not self.every or (done % self.every and done != self.total):
            return None
        elapsed = now - self._start
        rate = (t - self._first) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        line = (f"{self.head}: step {done}/{self.total}  loss {loss:.3f}  "
                f"{rate * self.tokens_per_step / 1000:.1f}k tok/s  elapsed {_clock(elapsed)}  ETA {_clock(eta)}")
        log.info(line)
        return line
