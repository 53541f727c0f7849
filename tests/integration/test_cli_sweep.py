"""The real CLI end to end: a sweep, its records, W&B offline runs, re-runs, divergence, Ctrl-C."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests.integration.conftest import BIN, TINY, run_cli

pytestmark = pytest.mark.slow


def records(sweep: Path, *axes: str) -> dict[tuple, dict]:
    """Records keyed by the values of `axes` (job dir names also hold the constant overrides)."""
    recs = [read_record(p) for p in sorted(sweep.rglob("run.json"))]
    return {tuple(r["axes"][a] for a in axes) if len(axes) > 1 else r["axes"][axes[0]]: r for r in recs}


def test_sweep_writes_records_history_wandb_and_table(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "bits=4,16", "warmdown=0.25,0.5", *TINY, "logger=wandb", f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    recs = records(sweep, "bits", "warmdown")
    assert sorted(recs) == [(4, 0.25), (4, 0.5), (16, 0.25), (16, 0.5)]
    for r in recs.values():
        name = r["job_name"]
        assert Path(r["job_dir"]) == sweep / name
        assert r["status"] == "completed"
        assert r["axes"]["bits"] in (4, 16) and r["axes"]["warmdown"] in (0.25, 0.5)
        assert r["axes"]["model"] == "cpu-xs" and r["axes"]["optim"] == "muon" and r["axes"]["steps"] == 8
        res = r["results"]
        for key in ("val_loss", "val_bpb", "latent_val_loss", "grid_distance_pre_warmdown", "grid_distance_final"):
            assert res[key] == res[key] and res[key] > 0, key  # finite, positive
        assert set(res["ptq"]) == {"8", "6", "4"}
        assert len(r["env"]["git_sha"]) in (40, 7) or r["env"]["git_sha"] == "unknown"
        assert len(r["data"]["fingerprint"]) == 64
        assert r["sweep_id"] == "sweep"

        # Per-step history: steps 0..7 plus the end-of-run row, LR of every param group each step.
        rows = list(csv.DictReader(open(sweep / name / "metrics.csv")))
        assert [int(x["step"]) for x in rows] == list(range(9))
        lr_cols = [c for c in rows[0] if c.startswith("lr/")]
        assert {"lr/muon/matrices", "lr/adamw/embed", "lr/adamw/scalars"} <= set(lr_cols)
        assert all(rows[s][c] != "" for s in range(8) for c in lr_cols)
        # The LR actually follows the schedule: peak before the warmdown window, lower at the end.
        peak = float(rows[0]["lr/muon/matrices"])
        assert float(rows[7]["lr/muon/matrices"]) < peak
        assert rows[8]["val_loss"] != "" and rows[8]["grid_distance"] != ""

        # One offline W&B run per job, with the id the record names.
        runs = list((sweep / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and r["wandb"]["id"] in runs[0].name
        assert list(runs[0].glob("run-*.wandb"))

    # QAT at 4 bits has a round-trip gap at the end; the FP run has none.
    assert recs[16, 0.25]["results"]["quant_gap"] == 0.0
    assert recs[4, 0.25]["results"]["quant_gap"] != 0.0
    summary = (sweep / "summary.md").read_text()
    assert summary.count("| completed |") == 4 and "penalty" in summary and "unigram" in summary
    assert "| 4 | 0.250 | completed |" in result.stdout

    # Re-running the same sweep into the same dir skips every completed job and changes nothing.
    before = {p: p.read_bytes() for p in sweep.rglob("run.json")}
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already completed, skipped") == 4
    assert {p: p.read_bytes() for p in sweep.rglob("run.json")} == before


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    # max_loss=0.5 is below any byte-level LM's first loss: that job must be stopped as diverged.
    result = run_cli(["-m", "trainer.max_loss=0.5,100", *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    by_dir = {r["config"]["trainer"]["max_loss"]: r for r in map(read_record, sweep.rglob("run.json"))}
    assert by_dir[0.5]["status"] == "diverged" and by_dir[0.5]["diverged_at_step"] == 0
    assert by_dir[100]["status"] == "completed"
    assert "1 diverged" in result.stdout and "1 completed" in result.stdout


def test_ctrl_c_leaves_no_completed_record(tmp_path):
    run_dir = tmp_path / "run"
    # Ctrl-C as in a terminal: a test runner started in the background inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler; restore the default for the child.
    proc = subprocess.Popen([str(BIN / "qatlab"), *TINY, "trainer.steps=100000", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    record = run_dir / "run.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.csv").exists():
        time.sleep(0.5)
    assert (run_dir / "metrics.csv").exists(), "training never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    r = json.loads(record.read_text())
    assert r["status"] == "interrupted"
    # And a re-run of that job does not skip it.
    from qat_lab.records import completed_record
    assert completed_record(run_dir) is None
