"""The run record: `run.json` in every job dir, the contract between training and analysis.

Written atomically (temp file + fsync + rename), so a reader never sees half a record and a
crash can never leave a record that claims completion. The status moves
running -> completed | diverged | failed | interrupted; only `completed` makes a re-run skip the
job. docs/run_record.md documents every field; bump SCHEMA_VERSION when a field changes meaning.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from qat_lab.errors import RunRecordError

SCHEMA_VERSION = 1
RECORD_NAME = "run.json"
HISTORY_NAME = "metrics.csv"
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
REQUIRED_KEYS = ("schema_version", "status", "axes", "results")


def write_record(job_dir: str | Path, record: dict[str, Any]) -> Path:
    """Atomically write `record` as job_dir/run.json."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    target = job_dir / RECORD_NAME
    fd, tmp = tempfile.mkstemp(prefix=".run.", suffix=".json.tmp", dir=job_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, allow_nan=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_record(path: str | Path) -> dict[str, Any]:
    """Read a run record (a job dir or the run.json itself); RunRecordError if it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunRecordError(f"{path}: no run record") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunRecordError(f"{path}: corrupt run record ({e})") from None
    if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
        raise RunRecordError(f"{path}: not a qat_lab run record (needs {', '.join(REQUIRED_KEYS)})")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RunRecordError(f"{path}: schema_version {record['schema_version']} (this qat_lab reads {SCHEMA_VERSION})")
    if record["status"] not in STATUSES:
        raise RunRecordError(f"{path}: unknown status {record['status']!r}")
    return record


def completed_record(job_dir: str | Path) -> dict[str, Any] | None:
    """The job's record if it says completed, else None (missing, corrupt or unfinished)."""
    try:
        record = read_record(job_dir)
    except RunRecordError:
        return None
    return record if record["status"] == "completed" else None


def find_records(root: str | Path) -> list[Path]:
    """Every run.json under root, sorted."""
    return sorted(Path(root).rglob(RECORD_NAME))


def mark_unfinished_failed(sweep_dir: str | Path, job_num: int, reason: str) -> Path | None:
    """Mark job `job_num`'s record failed if it never finished (killed from outside: Slurm's time
    limit, scancel, OOM). Returns the record's path, or None if the job left no unfinished record."""
    for path in find_records(sweep_dir):
        try:
            record = read_record(path)
        except RunRecordError:
            continue
        if record.get("job_num") == job_num and record["status"] in ("running", "interrupted"):
            record.update(status="failed", error=reason)
            write_record(path.parent, record)
            return path
    return None


@functools.cache
def git_state() -> dict[str, Any]:
    """The commit the code came from: the working dir's repo, else the package's own checkout."""
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
            if sha.returncode != 0:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=5)
            return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
        except (OSError, subprocess.TimeoutExpired):
            continue
    return {"sha": "unknown", "dirty": None}


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the interpreter and every package that shapes a result."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("qat_lab", "torch", "lightning", "hydra-core", "omegaconf", "wandb", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
