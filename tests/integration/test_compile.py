"""trainer.compile=true runs the same model through torch.compile (inductor, CPU here): the run
completes with the same parameters and nearly the same losses as the eager run, also when fake
quantisation switches on mid-run (late QAT: the switch is a buffer, not a Python flag that the
compiled graph would have constant-folded)."""

from __future__ import annotations

import csv

import pytest

from qat_lab.quant import QuantConfig
from qat_lab.records import read_record
from qat_lab.schedules import ScheduleConfig
from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow
# 2 bits: switching QAT on changes the loss by far more than compiled-vs-eager rounding does.
ARGS = ["experiment=smoke", "trainer.steps=10", "bits=2", "quant.start=0.5", "data.val_tokens=2048",
        "trainer.val_every=0"]


def rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_compiled_late_qat_run_matches_eager_step_by_step(tmp_path):
    eager = run_cli([*ARGS, f"hydra.run.dir={tmp_path / 'eager'}"], cwd=tmp_path)
    compiled = run_cli([*ARGS, "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}"], cwd=tmp_path,
                       timeout=900)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-3000:]
    a, b = read_record(tmp_path / "eager"), read_record(tmp_path / "compiled")
    assert b["status"] == "completed" and b["config"]["trainer"]["compile"] is True
    assert b["params"] == a["params"] and a["results"]["qat_start_step"] == b["results"]["qat_start_step"] == 5
    ra, rb = rows(tmp_path / "eager")[:10], rows(tmp_path / "compiled")[:10]
    assert [r["qat_on"] for r in ra] == [r["qat_on"] for r in rb] == ["0"] * 5 + ["1"] * 5
    la, lb = [float(r["train_loss"]) for r in ra], [float(r["train_loss"]) for r in rb]
    # Fused kernels reorder floating-point sums: equal to a few parts in a thousand, not bitwise.
    assert lb == pytest.approx(la, rel=5e-3)
    # ...and the switch is real in both: 2-bit fake quantisation moves the loss at step 5 by far
    # more than the compiled-vs-eager tolerance above (~0.015 nats at this loss).
    assert abs(la[5] - la[4]) > 0.03 and abs(lb[5] - lb[4]) > 0.03
    assert b["results"]["val_loss"] == pytest.approx(a["results"]["val_loss"], rel=5e-3)


# The LR trigger: wsd over 10 steps, warmdown 0.5, multipliers 1 x5, 0.8, 0.6, 0.4, 0.2 -> on from step 7.
# Only the round-trip PTQ arm at the run's bits: the final evaluation is the fraction test's business.
LR_ARGS = ["experiment=smoke", "trainer.steps=10", "bits=2", "warmdown=0.5", "data.val_tokens=2048",
           "trainer.val_every=0", "ptq.methods=[rtn]", "ptq.bits=[]"]


def test_compiled_lr_trigger_run_matches_eager_step_by_step(tmp_path):
    mult = lambda t: ScheduleConfig(warmdown=0.5).multiplier(t, 10)  # noqa: E731
    start = QuantConfig(bits=2, start_lr_below=0.7).start_step(10, mult)
    assert start == 7 and mult(start) < 0.7 <= mult(start - 1)
    late = [*LR_ARGS, "quant.start_lr_below=0.7"]
    eager = run_cli([*late, f"hydra.run.dir={tmp_path / 'eager'}"], cwd=tmp_path)
    never = run_cli([*LR_ARGS, "quant.start=1", f"hydra.run.dir={tmp_path / 'never'}"], cwd=tmp_path)
    compiled = run_cli([*late, "trainer.compile=true", f"hydra.run.dir={tmp_path / 'compiled'}"], cwd=tmp_path,
                       timeout=900)
    assert eager.returncode == never.returncode == compiled.returncode == 0, compiled.stderr[-3000:]
    a, b = read_record(tmp_path / "eager"), read_record(tmp_path / "compiled")
    assert b["status"] == "completed" and b["config"]["trainer"]["compile"] is True
    assert a["results"]["qat_start_step"] == b["results"]["qat_start_step"] == start
    ra, rb, rn = (rows(tmp_path / n)[:10] for n in ("eager", "compiled", "never"))
    assert [r["qat_on"] for r in ra] == [r["qat_on"] for r in rb] == ["0"] * start + ["1"] * (10 - start)
    la, lb, ln = ([float(r["train_loss"]) for r in rs] for rs in (ra, rb, rn))
    assert lb == pytest.approx(la, rel=5e-3)  # the tolerance of the fraction test above
    # Before the trigger both runs are the unquantised run; from it on, 2-bit fake quantisation moves
    # the loss by more than twice that tolerance (0.04-0.06 nats here), in the compiled run too: a
    # compiled graph that never switched would fail here, not pass within the tolerance.
    assert la[:start] == pytest.approx(ln[:start], rel=1e-6)
    assert all(abs(x - n) > 2 * 5e-3 * n for x, n in zip(la[start:], ln[start:]))
    assert all(abs(x - n) > 2 * 5e-3 * n for x, n in zip(lb[start:], ln[start:]))
    assert b["results"]["val_loss"] == pytest.approx(a["results"]["val_loss"], rel=5e-3)
