"""Signals become Interrupted (a KeyboardInterrupt) once, and the shell's exit codes."""

import os
import signal

import pytest

from qat_lab import interrupts


@pytest.fixture(autouse=True)
def _restore():
    before = {s: signal.getsignal(s) for s in interrupts.HANDLED}
    interrupts.reset()
    yield
    for s, h in before.items():
        signal.signal(s, h)
    interrupts.reset()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_raises_and_is_remembered(sig):
    interrupts.install()
    with pytest.raises(interrupts.Interrupted) as info:
        os.kill(os.getpid(), sig)  # the handler runs at the next bytecode, in this thread
        for _ in range(1000):
            pass
    assert info.value.signum == sig and isinstance(info.value, KeyboardInterrupt)
    assert interrupts.received() == sig
    os.kill(os.getpid(), sig)  # a second signal while the first is handled: ignored
    assert interrupts.received() == sig


def test_exit_codes():
    assert interrupts.exit_code(signal.SIGINT) == 130 and interrupts.exit_code(signal.SIGTERM) == 143


def test_submitit_keeps_its_own_sigterm_handler(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    interrupts.install()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is interrupts._handler
