"""One job's life, as Hydra's task function: lock, skip or train, and a record that never lies.

`run_job` is what Hydra calls once per job (once for a single run, once per point of a `-m`
sweep, possibly in another process or on a Slurm node):

1. take the job's lock (qat_lab.joblock) before anything is written; a job another live process
   holds is skipped, with one line saying who holds it;
2. skip a job whose record already says `completed` (re-running a sweep finishes what is missing);
3. write the `running` record, train (qat_lab.train), and write the final one:
   completed | diverged (the run blew up: callbacks/divergence.py) | failed (an exception: its
   traceback in error.txt; a full or read-only disk included) | interrupted (SIGINT/SIGTERM);
4. finish the job's loggers (qat_lab.loggers.JobLoggers) with that final status, whatever ended the
   job: the W&B run's summary, status tag and exit code say what run.json says.
A failed or diverged job never stops a sweep; an interrupted one does (qat_lab.interrupts), and
the command then exits 128 + the signal number. Every outcome is one line on the console and in
the job's log. Training itself (and Lightning) is imported only when a job trains.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from qat_lab import interrupts
from qat_lab.atomic import atomic_write
from qat_lab.config import build_spec
from qat_lab.joblock import JobLock
from qat_lab.loggers import JobLoggers
from qat_lab.records import SCHEMA_VERSION, completed_record, job_identity, new_record, now, write_record

log = logging.getLogger("qat_lab")
FAILED: list[str] = []
"""Jobs of this process that failed (the CLI's exit code reads it, with the sweep's records)."""
INTERRUPTED: list[str] = []
"""Job dirs of this process whose record was written `interrupted` (empty when a signal came before
any job's record existed, or when it could not be written): what the CLI's closing line may claim."""
ERROR_CHARS = 800
"""The record's `error` is the exception's first line, cut to this length (the traceback is in error.txt)."""


def say(line: str) -> None:
    log.info(line)


def hydra_identity() -> dict[str, Any]:
    """This job's dirs, name and number, from Hydra's runtime config (and the experiment preset)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job_dir = Path(hc.runtime.output_dir)
    ident = job_identity(job_dir, Path(hc.sweep.dir) if multirun else job_dir, hc.job.override_dirname,
                         hc.job.num if multirun else 0)
    ident["experiment"] = hc.runtime.choices.get("experiment")
    return ident


def is_global_zero() -> bool:
    """False in the extra processes of a multi-device run: they train, rank 0 alone records."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:ERROR_CHARS]


def _save(job_dir: Path, record: dict[str, Any], head: str) -> bool:
    """Write the record; on a storage error say so in one line (the caller carries on)."""
    try:
        write_record(job_dir, record)
        return True
    except OSError as e:
        say(f"{head}: its record could not be written ({_first_line(e)})")
        return False


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: run one job and leave its run record in the job dir."""
    interrupts.install()
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks
    ident = hydra_identity()
    if not is_global_zero():
        # A DDP worker process: train in lockstep with rank 0, write nothing.
        from qat_lab.train import quiet_lightning, train

        quiet_lightning()
        spec = build_spec(cfg)
        train(spec, cfg, ident, new_record(spec, ident, cfg), say=lambda line: None)
        return {}
    head = f"[{ident['job_num']}] {ident['job_name']}"
    job_dir = Path(ident["job_dir"])
    lock = JobLock(job_dir)
    try:
        holder = lock.acquire()
    except OSError as e:
        FAILED.append(ident["job_name"])
        say(f"{head}: FAILED, cannot take its lock in {job_dir} ({_first_line(e)})")
        return {"status": "failed"}
    if holder is not None:
        say(f"{head}: running in another process ({holder.describe()}), skipped")
        return {"status": "held"}
    try:
        return _run_locked(cfg, ident, job_dir, lock, head)
    finally:
        lock.release()


def _run_locked(cfg: DictConfig, ident: dict[str, Any], job_dir: Path, lock: JobLock, head: str) -> dict[str, Any]:
    done = completed_record(job_dir)
    if done is not None:
        say(f"{head}: already completed, skipped")
        return done
    try:
        spec = build_spec(cfg)
    except Exception as e:  # the preflight checked this config; its files changed since (or a bug)
        return _config_failure(cfg, ident, job_dir, head, e)
    record = new_record(spec, ident, cfg)
    if not _save(job_dir, record, head):
        FAILED.append(ident["job_name"])
        return {**record, "status": "failed"}
    loggers = JobLoggers()
    try:
        return _train_and_record(cfg, spec, ident, job_dir, lock, head, record, loggers)
    finally:
        # The one place the loggers finish: after the final record, with its status, whatever
        # ended the job (W&B's summary, status tag and exit code mirror run.json).
        for problem in loggers.finish(record):
            say(f"{head}: its logger could not be finished ({problem})")


def _train_and_record(cfg: DictConfig, spec, ident: dict[str, Any], job_dir: Path, lock: JobLock, head: str,
                      record: dict[str, Any], loggers: JobLoggers) -> dict[str, Any]:
    """Train, then set and save the record's final status (an interrupted job re-raises after)."""
    wall = time.perf_counter()
    try:
        from qat_lab.train import quiet_lightning, train

        quiet_lightning()
        train(spec, cfg, ident, record, loggers, say=say)
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C inside fit into SystemExit(1) after its own clean-up; the signal
        # itself is remembered by qat_lab.interrupts.
        signum = interrupts.received()
        reason = interrupts.name(signum) if signum else type(e).__name__
        record.update(status="interrupted", error=reason, finished_at=now())
        record["timing"]["wall_s"] = time.perf_counter() - wall
        if _save(job_dir, record, head):
            INTERRUPTED.append(str(job_dir))
        say(f"{head}: interrupted ({reason})")
        if signum is not None:
            raise interrupts.Interrupted(signum) from None
        raise
    except Exception as e:  # a crashed job is recorded and the sweep goes on
        record.update(status="failed", error=_first_line(e), finished_at=now())
        record["timing"]["wall_s"] = time.perf_counter() - wall
        try:
            atomic_write(job_dir / "error.txt", traceback.format_exc())
            where = f"traceback in {job_dir / 'error.txt'}"
        except OSError as write_error:
            where = f"no traceback saved ({_first_line(write_error)})"
        FAILED.append(ident["job_name"])
        if type(e).__name__ == "UncompletedJobError":
            # submitit ending a Slurm job it will not requeue (e.g. timed out too many times): the
            # exception must reach submitit, which reports the job as failed to the launcher.
            record["error"] = f"Slurm: {e}"[:ERROR_CHARS]
            _save(job_dir, record, head)
            raise
        _save(job_dir, record, head)
        say(f"{head}: FAILED ({record['error']}); {where}")
        return record
    if lock.lost:
        record.update(status="failed", error="another process took over this job's lock while it trained")
        FAILED.append(ident["job_name"])
    record["finished_at"] = now()
    record["timing"]["wall_s"] = time.perf_counter() - wall
    _save(job_dir, record, head)
    say(job_summary_line(record))
    return record


def _config_failure(cfg: DictConfig, ident: dict[str, Any], job_dir: Path, head: str, e: Exception) -> dict:
    """A job whose config no longer validates when it starts (the preflight passed it: the config
    files were edited while the sweep ran) is recorded failed, and the sweep goes on."""
    from omegaconf import OmegaConf

    FAILED.append(ident["job_name"])
    record = {"schema_version": SCHEMA_VERSION, "status": "failed", "sweep_id": ident["sweep_id"],
              "job_name": ident["job_name"], "job_num": ident["job_num"], "job_dir": ident["job_dir"], "axes": {},
              "results": {}, "error": _first_line(e), "config": OmegaConf.to_container(cfg, resolve=False),
              "started_at": now(), "finished_at": now()}
    _save(job_dir, record, head)
    say(f"{head}: FAILED before training: {record['error']}")
    return record


def job_summary_line(record: dict[str, Any]) -> str:
    r, t = record["results"], record["timing"]
    head = f"[{record['job_num']}] {record['job_name']}: {record['status']}"
    if record["status"] == "diverged":
        div = record.get("divergence") or {}
        return f"{head} at step {record['diverged_at_step']}: {div.get('reason', '')} ({t['wall_s']:.1f} s)"
    if record["status"] != "completed":
        return f"{head} ({record.get('error')})"
    if r.get("val_bpb") is not None:
        quality = f"val_bpb {r['val_bpb']:.3f} (latent {r['latent_val_bpb']:.3f})"
    else:  # a tokenizer without known bytes per token: no bpb, report nats
        quality = f"val_loss {r['val_loss']:.3f} (latent {r['latent_val_loss']:.3f})"
    return f"{head}  {quality}  grid {r['grid_distance_final']:.3f}  {t['wall_s']:.1f} s  {t['tokens_per_s']:.0f} tok/s"
