"""The run record in one place: what it holds, how it is written and read, and which runs pair.

    store.py     run.json on disk: atomic write (in place when the disk is full), validated read,
                 completed-run detection, killed jobs marked failed
    content.py   the record a job starts with; job identity (dirs, W&B id); versions, git sha
    identity.py  run identity from the resolved config: bookkeeping keys, content fingerprints,
                 the one pairing rule (FP16 partners, penalties) shared by the summary and the analysis

Nothing in this package imports torch, Lightning or a Hydra callback: the Slurm launcher and
qatlab-analyze import it alone.
"""

from qat_lab.records.content import git_state, job_identity, never_started_record, new_record, now, versions
from qat_lab.records.store import (HISTORY_NAME, RECORD_NAME, REQUIRED_KEYS, SCHEMA_VERSION, STATUSES,
                                   completed_record, find_records, mark_unfinished_failed, read_record, write_record)

__all__ = ["SCHEMA_VERSION", "RECORD_NAME", "HISTORY_NAME", "STATUSES", "REQUIRED_KEYS", "write_record",
           "read_record", "completed_record", "find_records", "mark_unfinished_failed", "new_record",
           "never_started_record", "job_identity", "now", "git_state", "versions"]
