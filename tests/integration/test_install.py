"""A plain (non-editable) `pip install .` ships the configs and runs as a console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import TINY

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_non_editable_install_runs(tmp_path):
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert (target / "qat_lab" / "conf" / "config.yaml").exists()
    assert (target / "qat_lab" / "conf" / "model" / "cpu-xs.yaml").exists()

    # Run from a directory outside the repo with the installed copy first on the path.
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_SILENT": "true"}
    code = "import sys, qat_lab; assert str(qat_lab.__file__).startswith(sys.argv[1]), qat_lab.__file__; " \
           "from qat_lab.cli import main; sys.argv = ['qatlab', *sys.argv[2:]]; main()"
    run = subprocess.run([sys.executable, "-c", code, str(target), *TINY, "hydra.run.dir=run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert read_record(tmp_path / "run")["status"] == "completed"
