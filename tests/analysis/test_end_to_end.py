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


def _table_rows(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_a_swept_config_key_is_paired_in_the_summary_and_the_analysis(tmp_path):
    # The first case: four runs that looked identical, one FP16 run with penalty +0.29, and
    # half of them dropped by the analysis as "duplicate of ... (same axes)".
    sweep = tmp_path / "sweep"
    train = run_cli(["-m", "bits=4,16", "optim.matrix_lr=0.005,0.04", "experiment=smoke", "trainer.steps=8",
                     "logger=none", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:]
    rows = _table_rows((sweep / "summary.md").read_text())
    assert len(rows) == 4 and "optim.matrix_lr" in rows[0]
    assert {r["optim.matrix_lr"] for r in rows} == {"0.005", "0.04"}
    assert [r["penalty"] for r in rows if r["bits"] == "16"] == ["0.0000", "0.0000"]
    assert all(r["penalty"] not in ("-", "0.0000") for r in rows if r["bits"] == "4")

    out = tmp_path / "report"
    result = run_cli([str(sweep), "--out", str(out), "--no-anneal"], cwd=tmp_path, exe="qatlab-analyze", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 runs (4 used, 0 left out" in result.stdout
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert all(r["used"] == "True" and r["excluded"] == "" for r in runs)
    pen = {(r["bits"], r["optim.matrix_lr"]): float(r["penalty"]) for r in runs}
    loss = {(r["bits"], r["optim.matrix_lr"]): float(r["val_loss"]) for r in runs}
    for lr in ("0.005", "0.04"):
        assert pen[("16", lr)] == 0.0
        assert pen[("4", lr)] == pytest.approx(loss[("4", lr)] - loss[("16", lr)], abs=1e-12)
    assert "duplicate of" not in (out / "report.md").read_text()
