"""W&B round trip: `qatlab-analyze --wandb` rebuilds the same runs.csv as the local records do.

A real sweep is trained with logger=wandb (offline). Its run files (run-<id>.wandb) are read with
tests/wandb_offline.py and served through the in-memory stand-in of the public API that
tests/analysis/test_wandb.py uses (.id, .name, .group, .state, .config, .summary,
.scan_history()): config from the file's run record, summary from its summary records, history
rows from its history records, state from its exit code. What this cannot check is that the real
wandb.Api returns exactly what the run file holds: that needs a W&B server.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from qat_lab.analysis import load, pipeline, report
from tests import wandb_offline
from tests.analysis.test_wandb import FakeApi, FakeRun
from tests.integration.conftest import run_cli

PATH = "ent/proj"
ONLY_LOCAL = {"run_id", "wall_s"}
"""Columns that differ by nature: where a run came from, and the job's wall time (set after its W&B
run has finished; W&B's own runtime stands in)."""
RUN_IDS = ("fp_partner", "grid_partner")
"""Columns holding run ids: compared through the job names they point to."""


def _items(items) -> dict:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def run_from_file(path: Path) -> FakeRun:
    """The public-API view of one offline run file."""
    records = wandb_offline.records(path)
    run = [r.run for r in records if r.WhichOneof("record_type") == "run"][-1]
    config = _items(run.config.update)
    for r in records:  # config updates after the run record (none today, but the format allows them)
        if r.WhichOneof("record_type") == "config":
            config.update(_items(r.config.update))
    rows = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    state = "finished" if wandb_offline.exit_code(path) == 0 else "failed"
    return FakeRun(id=run.run_id, name=run.display_name, group=run.run_group, state=state, config=config, rows=rows,
                   summary=wandb_offline.summary(path))


def runs_csv(a: pipeline.Analysis, out: Path) -> pd.DataFrame:
    report.write_report(a, out, ["qatlab-analyze"])
    frame = pd.read_csv(out / "runs.csv", dtype=str, keep_default_na=False)
    names = dict(zip(frame["run_id"], frame["job_name"]))
    for col in RUN_IDS:
        frame[col] = frame[col].map(lambda v: names.get(v, v))
    return frame.set_index("job_name").sort_index()


def assert_same_runs_csv(local: pd.DataFrame, remote: pd.DataFrame) -> None:
    assert list(local.index) == list(remote.index)
    assert set(local.columns) == set(remote.columns)
    for col in sorted(set(local.columns) - ONLY_LOCAL):
        for job in local.index:
            x, y = local.at[job, col], remote.at[job, col]
            assert x == y, f"{job} {col}: local {x!r}, W&B {y!r}"


@pytest.mark.slow
def test_wandb_and_local_records_give_the_same_runs_csv(tmp_path):
    sweep = tmp_path / "sweep"
    train = run_cli(["-m", "bits=4,16", "experiment=smoke", "trainer.steps=6", "logger=wandb",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900, env={"WANDB_MODE": "offline"})
    assert train.returncode == 0, train.stderr[-3000:]
    files = sorted(sweep.rglob("run-*.wandb"))
    assert len(files) == 2
    api = FakeApi([run_from_file(f) for f in files])
    group = api._runs[0].group
    options = pipeline.Options(anneal=False, max_plots=0)
    local = runs_csv(pipeline.analyse(load.load_local([sweep]), options), tmp_path / "local")
    remote_analysis = pipeline.analyse(load.load_wandb(PATH, group, api=api), options)
    remote = runs_csv(remote_analysis, tmp_path / "remote")
    assert_same_runs_csv(local, remote)
    # What only the summary could bring back: latent and PTQ losses, the quant gap, the corpus.
    int4 = remote.loc["bits=4,experiment=smoke,trainer.steps=6"]
    for col in ("latent_val_loss", "quant_gap", "ptq8_val_loss", "ptq6_val_loss", "ptq4_val_loss",
                "grid_distance_pre_warmdown", "penalty"):
        assert int4[col] != "" and math.isfinite(float(int4[col])), col
    record = remote_analysis.runset.runs[0].record
    assert len(record["data"]["fingerprint"]) == 64 and record["params"]["non_embedding"] > 0
