"""Full and read-only disks, real ones (small tmpfs mounts; CI runs as root): one clear line per
failure, records that say `failed` (never left `running`), the sweep going on, and an unwritable
sweep dir stopping the command before its first job. Umask-respecting file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from qat_lab.records import read_record
from tests.faults.conftest import FAST, records, run_cli

pytestmark = pytest.mark.slow


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                                capture_output=True, text=True, timeout=30)
    except OSError as e:
        pytest.skip(f"cannot run mount here ({e.strerror})")
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {result.stderr.strip()[:200]}")


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    where = tmp_path / "disk"
    _mount_tmpfs(where, "4m")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _fill(disk: Path, leave_bytes: int) -> None:
    """Fill the filesystem up to `leave_bytes` free with one ballast file."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / f"ballast-{uuid.uuid4().hex[:6]}", "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def test_disk_full_during_jobs_is_one_line_each_and_the_sweep_goes_on(tmpfs, tmp_path):
    sweep = tmpfs / "sweep"
    # The preflight needs 1 MiB free; a 1.5 MiB checkpoint of cpu-xs (with its temp copy) does not fit.
    _fill(tmpfs, int(1.3 * 2**20))
    args = ["-m", "seed=0,1", *FAST, "trainer.steps=20", "trainer.checkpoint_every=4", "logger=none",
            f"hydra.sweep.dir={sweep}"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert len(failed) == 2 and all("No space left on device" in line for line in failed), result.stdout
    recs = records(sweep)
    assert len(recs) == 2
    for r in recs.values():  # the final record was written in place over the running one's reserve
        assert r["status"] == "failed" and "No space left on device" in r["error"]


def test_full_disk_stops_the_command_before_the_first_job(tmpfs, tmp_path):
    _fill(tmpfs, 0)
    result = run_cli(["-m", "seed=0,1", *FAST, f"hydra.sweep.dir={tmpfs / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0], result.stderr
    assert not (tmpfs / "sweep").exists()


def test_read_only_output_dir_stops_the_command_before_the_first_job(tmpfs, tmp_path):
    sweep = tmpfs / "sweep"
    first = run_cli(["-m", "seed=0", *FAST, "trainer.steps=4", "logger=none", f"hydra.sweep.dir={sweep}"],
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True, timeout=30)
    again = run_cli(["-m", "seed=0,1", *FAST, "trainer.steps=4", "logger=none", f"hydra.sweep.dir={sweep}"],
                    cwd=tmp_path)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "read-only filesystem" in lines[0], again.stderr
    # The analysis of a read-only sweep works (it writes elsewhere).
    report = run_cli([str(sweep), "--out", str(tmp_path / "report"), "--no-anneal"], cwd=tmp_path,
                     exe="qatlab-analyze")
    assert report.returncode == 0, report.stderr[-2000:]


def test_files_follow_the_umask(tmp_path):
    run_dir = tmp_path / "run"
    cache = tmp_path / "cache"
    corpus = tmp_path / "notes.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 300)
    old = os.umask(0o027)  # inherited by the child process
    try:
        result = run_cli([*FAST, "data=text", f"path={corpus}", "data.tokenizer=bpe", "data.vocab_size=300",
                          f"data.cache_dir={cache}", "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr[-2000:]
    files = [run_dir / "run.json", run_dir / "metrics.csv", *cache.rglob("*.json"), *cache.rglob("*.bin")]
    assert len(files) > 3
    modes = {str(f): stat.S_IMODE(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {0o640}, modes
    assert read_record(run_dir)["status"] == "completed"
