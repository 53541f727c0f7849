"""What the analysis makes of sweeps on disk as people leave them: renamed or copied sweep dirs,
records a colleague cannot read, records cut short."""

from __future__ import annotations

import shutil

import pytest

from qat_lab.analysis import load, pipeline
from tests.faults.conftest import FAST, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweeps")
    result = run_cli(["-m", "bits=4,16", *FAST, "trainer.steps=6", "logger=none", f"hydra.sweep.dir={root / 'orig'}"],
                     cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "orig"


def test_a_renamed_sweep_dir_is_analysed_as_it_is(sweep, tmp_path):
    moved = tmp_path / "renamed-sweep"
    shutil.copytree(sweep, moved)
    runset = load.load_local([moved])
    a = pipeline.analyse(runset, pipeline.Options(anneal=False))
    assert a.coverage.expected == {"renamed-sweep": (2, 2)}  # was "0 have a record (2 not started yet)"
    assert set(a.table["sweep_id"]) == {"renamed-sweep"}
    report = run_cli([str(moved), "--out", str(tmp_path / "report"), "--no-anneal"], cwd=tmp_path, exe="qatlab-analyze")
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "describes 2 jobs; 2 have a record" in text and "not started yet" not in text


def test_an_unreadable_record_is_named_and_the_analysis_goes_on(sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    records = sorted(copy.rglob("run.json"))
    records[0].write_text(records[0].read_text().rstrip()[:-40])  # cut short
    report = run_cli([str(copy), "--out", str(tmp_path / "report"), "--no-anneal"], cwd=tmp_path, exe="qatlab-analyze")
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert str(records[0]) in text and "corrupt run record" in text
    assert "1 unreadable" in report.stdout
