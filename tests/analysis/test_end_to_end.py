"""The real thing: `qatlab` trains a tiny sweep in a subprocess, `qatlab-analyze` reports on it."""

from __future__ import annotations

import csv
import json

import pytest

from tests.integration.conftest import run_cli

pytestmark = pytest.mark.slow


def test_tiny_sweep_then_analyze(tmp_path):
    sweep = tmp_path / "sweep"
    train = run_cli(["-m", "bits=4,16", "warmdown=0.2,0.5", "seed=0,1", "experiment=smoke", "trainer.steps=10",
                     "data.val_tokens=2048", "logger=none", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]

    out = tmp_path / "report"
    result = run_cli([str(sweep), "--out", str(out), "--to-wandb"], cwd=tmp_path, exe="qatlab-analyze", timeout=600,
                     env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 runs (8 used, 0 left out" in result.stdout and "W&B analysis run" in result.stdout

    for name in ("report.md", "runs.csv", "cells.csv", "comparisons.csv", "fits.json", "loss_vs_warmdown.png",
                 "grid_distance.png", "lr_curves.png", "annealing_fit.png"):
        assert (out / name).stat().st_size > 0, name
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs) == 8 and all(r["used"] == "True" for r in runs)
    assert {(r["bits"], r["warmdown"], r["seed"]) for r in runs} == {
        (b, w, s) for b in ("4", "16") for w in ("0.2", "0.5") for s in ("0", "1")}
    cells = list(csv.DictReader(open(out / "cells.csv")))
    assert len(cells) == 4 and all(c["n"] == "2" for c in cells)
    text = (out / "report.md").read_text()
    assert "Run records: **8**" in text and "bits=4" in text and "bits=16" in text
    assert "1 size to fit on" in text  # one model size: the penalty law says why it is absent
    fits = json.loads((out / "fits.json").read_text())
    assert len(fits["annealing_laws"]) == 2 and all(f["optimizer"]["success"] is not None for f in fits["annealing_laws"])
    assert list(out.glob("wandb/offline-run-*"))  # the analysis run, offline
