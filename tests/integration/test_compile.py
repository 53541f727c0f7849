"""trainer.compile=true runs the same model through torch.compile (inductor, CPU here): the run
completes with the same parameters and nearly the same losses as the eager run."""

from __future__ import annotations

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow
ARGS = ["experiment=smoke", "trainer.steps=10", "bits=6", "data.val_tokens=2048", "trainer.val_every=0"]


def test_compiled_run_matches_eager(tmp_path):
    eager = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'eager'}"], cwd=tmp_path)
    compiled = run_cli([*ARGS, "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}"], cwd=tmp_path, timeout=900)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    a, b = read_record(tmp_path / "eager"), read_record(tmp_path / "compiled")
    assert b["status"] == "completed" and b["config"]["trainer"]["compile"] is True
    assert b["params"] == a["params"]
    # Fused kernels reorder floating-point sums: equal to a few parts in a thousand, not bitwise.
    assert b["results"]["val_loss"] == pytest.approx(a["results"]["val_loss"], rel=5e-3)
