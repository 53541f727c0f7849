"""Helpers for the fault suite: the real `qatlab` in subprocesses, killed, signalled, starved of
disk, raced against itself; and readers for what it leaves on disk."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import BIN, run_cli

FAST = ["experiment=smoke", "trainer.val_every=0", "data.val_tokens=2048"]
"""A cpu-xs job of ~1-3 s of training at 20 steps; tests set trainer.steps for longer ones."""


def start_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`qatlab ARGS` in the background, with SIGINT at its default (a runner started in the
    background hands its children SIGINT ignored, and Python then installs no Ctrl-C handler)."""
    return subprocess.Popen([str(BIN / "qatlab"), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "WANDB_SILENT": "true", **(env or {})},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, timeout: float = 180, what: str = "the condition") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def history_steps(job_dir: Path) -> list[int]:
    with open(job_dir / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def history_rows(job_dir: Path) -> int:
    try:
        return len(history_steps(job_dir))
    except (OSError, ValueError, KeyError):
        return 0


def records(sweep: Path) -> dict[str, dict]:
    """job dir name -> record."""
    return {p.parent.name: read_record(p) for p in sorted(sweep.rglob("run.json"))}


__all__ = ["BIN", "FAST", "run_cli", "start_cli", "wait_for", "history_steps", "history_rows", "records", "pytest"]
