"""Bad input: one clear line on stderr, a non-zero exit, and nothing created or lost."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, expected", [
    (["bits=3.5"], "bits=3.5"),
    (["warmdown=1.5"], "warmdown=1.5"),
    (["model=nope"], "model=nope"),
    (["data=text", "path=/no/such/file.txt"], "/no/such/file.txt"),
    (["-m", "bits=4,6,3.5"], "bits=3.5"),
    (["optim.matrix_lr=-1"], "optim.matrix_lr=-1"),
])
def test_bad_input_is_one_line_and_nonzero(cli, tmp_path, args, expected):
    result = cli(*args, "hydra.sweep.dir=sweep", "hydra.run.dir=run")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("qatlab: error: ") and expected in lines[0]
    # Rejected before any work: no job dir, no sweep dir.
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "run").exists()


def test_bad_value_in_a_sweep_loses_nothing(cli, tmp_path):
    """A typo in a re-run of an existing sweep must not touch the records already there."""
    sweep = tmp_path / "sweep"
    (sweep / "bits=4").mkdir(parents=True)
    record = sweep / "bits=4" / "run.json"
    record.write_text("{}")
    result = cli("-m", "bits=4,9", f"hydra.sweep.dir={sweep}")
    assert result.returncode == 2
    assert record.read_text() == "{}"
    assert sorted(p.name for p in sweep.iterdir()) == ["bits=4"]


def test_dry_run_lists_the_grid_and_launches_nothing(cli, tmp_path):
    result = cli("--dry-run", "-m", "experiment=phase2", "hydra.sweep.dir=sweep")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "720 jobs"
    assert "H100-hours" in result.stdout
    assert not (tmp_path / "sweep").exists()


def test_a_single_job_that_fails_while_running_exits_nonzero_with_its_record(cli, tmp_path):
    """Failures only the job itself can see (here: a corpus shorter than one sequence) are recorded,
    and a single run reports them through its exit code like a sweep does."""
    from qat_lab.runs import read_record

    corpus = tmp_path / "tiny.txt"
    corpus.write_text("far too short to train on\n")
    result = cli("data=text", f"data.path={corpus}", "experiment=smoke", "hydra.run.dir=run")
    assert result.returncode == 1, result.stderr[-3000:]
    r = read_record(tmp_path / "run")
    assert r["status"] == "failed"
    assert r["error"].startswith("DataError: corpus text:tiny.txt has only")
