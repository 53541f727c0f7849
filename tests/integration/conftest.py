"""Helpers for running the real `qatlab` console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TINY = ["experiment=smoke", "trainer.steps=8", "trainer.val_every=4", "trainer.grid_every=4", "data.val_tokens=2048"]
"""Overrides that make a job take about a second on CPU."""


def run_cli(args: list[str], cwd: Path, timeout: float = 300, exe: str = "qatlab", env: dict | None = None):
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run([str(BIN / exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


@pytest.fixture
def cli(tmp_path):
    def _run(*args: str, **kw):
        return run_cli(list(args), cwd=tmp_path, **kw)
    return _run
