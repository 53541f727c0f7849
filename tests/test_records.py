"""The run record (qat_lab.records): atomic write, strict read, completed-run detection, provenance."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from qat_lab import records as runs
from qat_lab.errors import RunRecordError

REPO = Path(__file__).resolve().parents[1]


def _record(status: str = "completed", **results) -> dict:
    return {
        "schema_version": runs.SCHEMA_VERSION,
        "status": status,
        "axes": {"bits": 4, "warmdown": 0.33, "lr_mult": 1.0, "model": "cpu-xs", "seed": 0},
        "results": {"val_loss": 2.5, "ptq": {"8": {"val_loss": 2.4}}, **results},
        "history": [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}],
    }


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_round_trip(tmp_path: Path):
    rec = _record()
    path = runs.write_record(tmp_path / "job", rec)
    assert path == tmp_path / "job" / runs.RECORD_NAME
    assert runs.read_record(tmp_path / "job") == rec  # a job dir
    assert runs.read_record(path) == rec  # or the file itself


def test_round_trip_keeps_nan_and_stringifies_other_objects(tmp_path: Path):
    rec = _record(grid_distance=float("nan"), root=tmp_path / "corpus")
    runs.write_record(tmp_path, rec)
    back = runs.read_record(tmp_path)
    assert math.isnan(back["results"]["grid_distance"])
    assert back["results"]["root"] == str(tmp_path / "corpus")


def test_write_leaves_no_temp_files_and_replaces(tmp_path: Path):
    runs.write_record(tmp_path, _record("running"))
    runs.write_record(tmp_path, _record("completed"))
    assert _files(tmp_path) == [runs.RECORD_NAME]
    assert runs.read_record(tmp_path)["status"] == "completed"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot serialise")


def test_failed_serialisation_keeps_previous_record(tmp_path: Path):
    before = _record("running")
    runs.write_record(tmp_path, before)
    text_before = (tmp_path / runs.RECORD_NAME).read_text()
    # json.dump has already streamed part of the record when it reaches the bad value.
    with pytest.raises(RuntimeError, match="cannot serialise"):
        runs.write_record(tmp_path, _record("completed", zzz=_Unprintable()))
    assert (tmp_path / runs.RECORD_NAME).read_text() == text_before
    assert runs.read_record(tmp_path) == before
    assert _files(tmp_path) == [runs.RECORD_NAME]


def test_failing_write_keeps_previous_record(tmp_path: Path, monkeypatch):
    """The temp file is complete but the rename fails (a disk error): the old record stays, whole."""
    from qat_lab import atomic

    before = _record("running")
    runs.write_record(tmp_path, before)

    def broken_replace(src, dst):
        raise OSError("I/O error")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="I/O error"):
        runs.write_record(tmp_path, _record("completed"))
    monkeypatch.undo()
    assert runs.read_record(tmp_path) == before
    assert _files(tmp_path) == [runs.RECORD_NAME]


def test_full_disk_rewrites_the_record_in_place(tmp_path: Path, monkeypatch):
    """No space for a temp file: the final record still replaces the running one (its reserve)."""
    import errno

    from qat_lab.records import store

    runs.write_record(tmp_path, _record("running"))
    size = (tmp_path / runs.RECORD_NAME).stat().st_size

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "atomic_write", no_space)
    failed = {**_record("failed"), "error": "OSError: [Errno 28] No space left on device"}
    runs.write_record(tmp_path, failed)
    assert runs.read_record(tmp_path) == failed
    assert (tmp_path / runs.RECORD_NAME).stat().st_size == size  # no block needed beyond the old file's
    # A record too big for the old file's blocks is not written half-way: the error surfaces.
    with pytest.raises(OSError):
        runs.write_record(tmp_path, {**failed, "error": "x" * (size + 1)})
    assert runs.read_record(tmp_path) == failed


def test_records_are_readable_as_the_umask_allows(tmp_path: Path):
    old = os.umask(0o027)
    try:
        path = runs.write_record(tmp_path / "a", _record())
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o022)
        path = runs.write_record(tmp_path / "b", _record())
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_unreadable_record_is_one_line_error(tmp_path: Path, monkeypatch):
    path = runs.write_record(tmp_path, _record())

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    message = _assert_error_names_path(path)
    assert "Permission denied" in message


def _assert_error_names_path(path: Path, target: Path | None = None) -> str:
    with pytest.raises(RunRecordError) as info:
        runs.read_record(path)
    message = str(info.value)
    assert str(target or path) in message
    assert "\n" not in message
    return message


def test_read_missing_record(tmp_path: Path):
    _assert_error_names_path(tmp_path / "nowhere" / runs.RECORD_NAME)
    _assert_error_names_path(tmp_path, tmp_path / runs.RECORD_NAME)  # a dir without run.json


def test_read_truncated_record(tmp_path: Path):
    path = runs.write_record(tmp_path, _record())
    text = path.read_text().rstrip()  # the record, without its reserve of trailing spaces
    path.write_text(text[: len(text) // 2])
    assert "corrupt" in _assert_error_names_path(path)


def test_read_binary_garbage(tmp_path: Path):
    path = tmp_path / runs.RECORD_NAME
    path.write_bytes(b"\xff\xfe\x00garbage")
    _assert_error_names_path(path)


@pytest.mark.parametrize("payload", [[1, 2, 3], "completed", 42, None, {"status": "completed", "axes": {}}])
def test_read_json_that_is_not_a_record(tmp_path: Path, payload):
    path = tmp_path / runs.RECORD_NAME
    path.write_text(json.dumps(payload))
    _assert_error_names_path(path)


@pytest.mark.parametrize("missing", runs.REQUIRED_KEYS)
def test_read_record_missing_a_required_key(tmp_path: Path, missing: str):
    rec = _record()
    del rec[missing]
    path = tmp_path / runs.RECORD_NAME
    path.write_text(json.dumps(rec))
    _assert_error_names_path(path)


def test_read_wrong_schema_version(tmp_path: Path):
    rec = _record()
    rec["schema_version"] = runs.SCHEMA_VERSION + 1
    path = runs.write_record(tmp_path, rec)
    assert str(runs.SCHEMA_VERSION + 1) in _assert_error_names_path(path)


def test_read_unknown_status(tmp_path: Path):
    path = runs.write_record(tmp_path, _record("finished-ish"))
    assert "finished-ish" in _assert_error_names_path(path)


@pytest.mark.parametrize("status", runs.STATUSES)
def test_completed_record_only_for_completed(tmp_path: Path, status: str):
    rec = _record(status)
    runs.write_record(tmp_path, rec)
    got = runs.completed_record(tmp_path)
    if status == "completed":
        assert got == rec
    else:
        assert got is None


def test_completed_record_none_for_missing_or_corrupt(tmp_path: Path):
    assert runs.completed_record(tmp_path / "never-ran") is None
    path = runs.write_record(tmp_path, _record("completed"))
    path.write_text(path.read_text().rstrip()[:-5])
    assert runs.completed_record(tmp_path) is None


def test_find_records_is_recursive_and_sorted(tmp_path: Path):
    expected = [runs.write_record(tmp_path / d, _record()) for d in ("b/deep/job", "a", "bits=4,warmdown=0.1")]
    (tmp_path / "a" / "other.json").write_text("{}")
    (tmp_path / "a" / ".run.x.json.tmp").write_text("{}")
    (tmp_path / "empty").mkdir()
    found = runs.find_records(tmp_path)
    assert found == sorted(expected)
    assert all(p.name == runs.RECORD_NAME for p in found)
    assert runs.find_records(tmp_path / "empty") == []


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
                           *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_git_state_prefers_the_working_dir_repo(tmp_path: Path, monkeypatch):
    if _git(tmp_path, "init", "-q").returncode != 0:
        pytest.skip("git is not usable here")
    (tmp_path / "f.txt").write_text("one\n")
    _git(tmp_path, "add", "f.txt")
    assert _git(tmp_path, "commit", "-q", "--no-verify", "-m", "init").returncode == 0
    sha = _git(tmp_path, "rev-parse", "HEAD").stdout.strip()
    monkeypatch.chdir(tmp_path)
    runs.git_state.cache_clear()
    try:
        state = runs.git_state()
        assert state == {"sha": sha, "dirty": False}
        (tmp_path / "f.txt").write_text("two\n")
        runs.git_state.cache_clear()
        assert runs.git_state() == {"sha": sha, "dirty": True}
    finally:
        runs.git_state.cache_clear()


def test_git_state_in_this_repo(monkeypatch):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30)
    if head.returncode != 0:
        pytest.skip(f"`git rev-parse HEAD` fails in {REPO} (no commit yet?): {head.stderr.strip().splitlines()[0] if head.stderr.strip() else head.returncode}")
    monkeypatch.chdir(REPO)
    runs.git_state.cache_clear()
    try:
        state = runs.git_state()
    finally:
        runs.git_state.cache_clear()
    assert re.fullmatch(r"[0-9a-f]{40}", state["sha"])
    assert state["sha"] == head.stdout.strip()
    assert isinstance(state["dirty"], bool)


def test_versions_has_torch():
    v = runs.versions()
    assert v["torch"] == torch.__version__
    assert re.match(r"\d+\.\d+", v["python"])
    for key in ("lightning", "hydra-core", "numpy"):
        assert key in v


def test_only_the_wandb_logger_makes_a_wandb_run(monkeypatch):
    from qat_lab.records.content import _wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DISABLED", raising=False)
    assert _wandb_mode("wandb", "offline") == "offline"
    assert _wandb_mode("tensorboard", "offline") == "disabled"  # the record must not claim a W&B run
    assert _wandb_mode("none", "offline") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _wandb_mode("wandb", "offline") == "disabled"
