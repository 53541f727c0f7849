"""logger=tensorboard: Lightning's TensorBoardLogger (tensorboardX when tensorboard is not
installed) writes event files into the job dir with metrics.csv's one row per step, and no W&B
files; a resumed run's events show every step once (the writer's purge step)."""

from __future__ import annotations

import csv
import math
import time

import pytest

from qat_lab.loggers import TENSORBOARD_DIR, tensorboard_logger
from qat_lab.records import read_record
from tests import tensorboard_events
from tests.integration.conftest import TINY, run_cli


def _number(text: str) -> float:
    return {"True": 1.0, "False": 0.0}[text] if text in ("True", "False") else float(text)


@pytest.mark.slow
def test_logger_tensorboard_writes_every_step(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli([*TINY, "logger=tensorboard", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = run_dir / TENSORBOARD_DIR
    assert len(tensorboard_events.event_files(folder)) == 1  # the final row goes into the same file
    scalars = tensorboard_events.scalars(folder)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(9))  # TINY: 8 steps, and the final row (t = 8)
    assert [s for s, _ in scalars["train_loss"]] == list(range(8))
    # Every value of metrics.csv, and nothing else, at its step (TensorBoard keeps float32).
    for column in rows[0]:
        if column == "step":
            continue
        expected = [(int(r["step"]), _number(r[column])) for r in rows if r[column] != ""]
        expected = [(s, v) for s, v in expected if math.isfinite(v)]
        got = scalars.pop(column, [])
        assert [s for s, _ in got] == [s for s, _ in expected], column
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), column
    assert not scalars, f"not in metrics.csv: {sorted(scalars)}"
    assert not list(tmp_path.rglob("wandb"))
    r = read_record(run_dir)
    assert r["status"] == "completed" and r["wandb"]["mode"] == "disabled" and r["wandb"]["id"] is None


def test_a_resumed_tensorboard_run_shows_every_step_once(tmp_path):
    folder = tmp_path / TENSORBOARD_DIR
    killed = tensorboard_logger(tmp_path)  # a run killed after step 6, its last checkpoint at step 4
    for step in range(7):
        killed.log_metrics({"train_loss": float(step)}, step=step)
    killed.experiment.close()
    time.sleep(1.1)  # the re-run is a later process: its event file has a later name
    resumed = tensorboard_logger(tmp_path, resume_step=4)
    for step in range(4, 10):
        resumed.log_metrics({"train_loss": 100.0 + step}, step=step)
    resumed.close("success")
    assert len(tensorboard_events.event_files(folder)) == 2
    points = tensorboard_events.scalars(folder)["train_loss"]
    assert points == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), *[(s, 100.0 + s) for s in range(4, 10)]]
