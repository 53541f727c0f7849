"""The annealing fits and figures spread over worker processes give the report of one process."""

from __future__ import annotations

import json
import os

import pytest

from qat_lab.analysis import load, parallel, pipeline, report, synthetic
from tests.analysis.conftest import small_planted


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_fork_map_keeps_task_order_and_uses_other_processes():
    tasks = [(_square_and_pid, (i,)) for i in range(12)]
    out = parallel.fork_map(tasks, workers=2)
    assert [sq for sq, _ in out] == [i * i for i in range(12)]
    if "fork" in __import__("multiprocessing").get_all_start_methods():
        assert os.getpid() not in {pid for _, pid in out}
    assert {pid for _, pid in parallel.fork_map(tasks, workers=1)} == {os.getpid()}


def _report(sweep, out, workers: int):
    runset = load.load_local([sweep])
    a = pipeline.analyse(runset, pipeline.Options(workers=workers, max_plots=1))
    path = report.write_report(a, out, ["qatlab-analyze", str(sweep)])
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith(("Analysis time:", "`qatlab")))
    return a, text, json.loads((out / "fits.json").read_text())


@pytest.mark.skipif("fork" not in __import__("multiprocessing").get_all_start_methods(), reason="needs fork")
def test_two_workers_give_the_same_report_and_keep_history_problems(tmp_path):
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000, "m20": 20_000_000}, bits=(16, 6),
                            warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1))
    sweep = synthetic.write_sweep(tmp_path, planted)
    # One run's history is corrupt: the worker that reads it must report it to the parent.
    broken = sorted(sweep.rglob("metrics.csv"))[0]
    broken.write_text("step,train_loss\n0,1.0\n1,not-a-number\n")
    a1, text1, fits1 = _report(sweep, tmp_path / "one", workers=1)
    a2, text2, fits2 = _report(sweep, tmp_path / "two", workers=2)
    assert fits2 == fits1 and text2 == text1
    assert len(a1.cell_laws) == len(a2.cell_laws) == 6
    assert any("unreadable history" in p for p in a2.runset.problems)
    assert a2.runset.problems == a1.runset.problems
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == sorted(p.name for p in (tmp_path / "one").glob("*.png"))
