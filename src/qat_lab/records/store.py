"""Run records on disk: `run.json` in every job dir, the contract between training and analysis.

Written through qat_lab.atomic (temp file + fsync + rename), so a reader never sees half a record
and a crash can never leave one that claims completion. The status moves
running -> completed | diverged | failed | interrupted; only `completed` makes a re-run skip the
job. docs/run_record.md documents every field; bump SCHEMA_VERSION when a field changes meaning.

A full disk must not leave a record saying `running` after a handled error: every record is
written with RESERVE bytes of trailing whitespace (JSON ignores it), so when the atomic write
fails for lack of space the final record can still be written in place over the old one's blocks
(see write_record). Records are untrusted input when read: JSON only, validated, one-line errors.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from qat_lab.atomic import atomic_write
from qat_lab.errors import RunRecordError

SCHEMA_VERSION = 1
RECORD_NAME = "run.json"
HISTORY_NAME = "metrics.csv"
STATUSES = ("running", "completed", "diverged", "failed", "interrupted")
REQUIRED_KEYS = ("schema_version", "status", "axes", "results")
RESERVE = 2048
"""Trailing spaces in every record: room to rewrite it in place when the disk is full."""
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, indent=1, allow_nan=True, default=str) + "\n").encode()


def write_record(job_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write `record` as job_dir/run.json: atomically, or, when the disk is full, in place.

    The in-place fallback is used only if the new record fits in the old file (its reserve is
    there for this); it is not atomic, so a crash during it can leave a corrupt record, which
    readers report as unreadable, never as completed.
    """
    job_dir = Path(job_dir)
    target = job_dir / RECORD_NAME
    data = _encode(record)
    try:
        atomic_write(target, data + b" " * RESERVE)
    except OSError as e:
        if e.errno not in NO_SPACE or not target.is_file() or target.stat().st_size < len(data):
            raise
        with open(target, "r+b") as f:  # overwrite the old record's blocks: no new space needed
            old_size = os.fstat(f.fileno()).st_size
            f.write(data + b" " * (old_size - len(data)))
            f.flush()
            os.fsync(f.fileno())
    return target


def read_record(path: str | Path) -> dict[str, Any]:
    """Read a run record (a job dir or the run.json itself); RunRecordError if it is unusable."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD_NAME
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise RunRecordError(f"{path}: no run record") from None
    except OSError as e:  # unreadable (permissions on a shared filesystem, I/O error)
        raise RunRecordError(f"{path}: cannot read the run record ({e.strerror or e})") from None
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
