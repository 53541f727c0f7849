"""SIGINT and SIGTERM end a job truthfully: its record says `interrupted`, the sweep stops, and the
command exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), so `&&` chains, job
arrays and schedulers see that the work did not finish.

`install()` replaces the default handlers with one that remembers the first signal and raises
`Interrupted` (a KeyboardInterrupt, so Hydra and Lightning unwind as they do for Ctrl-C) in the
main thread. A second signal during the clean-up is ignored: the record of the first is being
written. Inside Trainer.fit Lightning turns a KeyboardInterrupt into SystemExit(1) after its own
clean-up; `received()` still says which signal it was.

Jobs that submitit runs on Slurm keep submitit's handlers (it requeues on its USR2 signal and
ignores Slurm's SIGTERM, after which Slurm's SIGKILL and the launcher's sacct query record the
job as failed): `install()` leaves SIGTERM alone there.
"""

from __future__ import annotations

import os
import signal
import threading

HANDLED = (signal.SIGINT, signal.SIGTERM)
_received: int | None = None


class Interrupted(KeyboardInterrupt):
    """Raised by the signal handler; `signum` is the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:
        return  # already unwinding for the first signal
    _received = signum
    raise Interrupted(signum)


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED:
        if sig == signal.SIGTERM and under_submitit():
            continue
        signal.signal(sig, _handler)


def received() -> int | None:
    """The first signal received since start (or reset), or None."""
    return _received


def reset() -> None:
    """Forget a received signal (tests)."""
    global _received
    _received = None


def exit_code(signum: int) -> int:
    """The shell convention for a process ended by a signal: 128 + its number."""
    return 128 + signum


def name(signum: int) -> str:
    return signal.Signals(signum).name
