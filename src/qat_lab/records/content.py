"""What goes into a run record when a job starts, and where it came from (code, versions, Slurm).

`new_record` is the `running` record every job writes before it trains; the job fills in
`results`, `timing`, ... as it ends. `never_started_record` is what the Slurm launcher writes for
a job that was killed before it could write one. Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat_lab.records.store import HISTORY_NAME, SCHEMA_VERSION


def now() -> str:
    """The current time, ISO-8601 UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_identity(job_dir: Path, sweep_dir: Path, override_dirname: str, job_num: int) -> dict[str, Any]:
    """Where a job lives: its dir, its sweep, its name (Hydra's override dirname), its W&B id."""
    name = override_dirname or "default"
    return {
        "job_dir": str(job_dir), "sweep_dir": str(sweep_dir), "sweep_id": sweep_dir.name,
        "job_name": name, "job_num": job_num,
        # Deterministic from the sweep dir and the job's overrides: a requeued or re-run job
        # logs to the same W&B run id.
        "wandb_id": hashlib.sha1(f"{sweep_dir.resolve()}|{name}".encode()).hexdigest()[:16],
    }


def wandb_mode(spec) -> str:
    """The W&B mode a run really uses: 'disabled' (no W&B run, no files) for a logger other than W&B
    (logger=none, logger=tensorboard), logger.mode=disabled, or WANDB_MODE=disabled / WANDB_DISABLED=true in the environment."""
    return _wandb_mode(spec.logger.backend, spec.logger.mode)


def _wandb_mode(backend: str | None, mode: str | None) -> str | None:
    env = os.environ.get("WANDB_MODE", "").lower()
    if backend != "wandb" or env == "disabled" or os.environ.get("WANDB_DISABLED", "").lower() in (
            "true", "1", "yes"):
        return "disabled"
    return mode


def new_record(spec, ident: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """The `running` record of a job about to train (`spec`: its validated qat_lab.config.RunSpec)."""
    return _running_record(spec.axes(), ident, OmegaConf.to_container(cfg, resolve=True), wandb_mode(spec),
                           spec.logger.project)


def never_started_record(cfg: DictConfig, ident: dict[str, Any], reason: str) -> dict[str, Any]:
    """The record of a job that was killed before it could write one (e.g. by Slurm).

    It is read off the composed config alone: the launcher that writes it never validates a
    config into a RunSpec (that would pull the whole config layer into the Slurm plugin), and the
    full resolved config is in the record anyway.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = config.get("logger") or {}
    record = _running_record(_configured_axes(config), ident, config,
                             _wandb_mode(logger.get("backend"), logger.get("mode")), logger.get("project"))
    record.update(status="failed", error=reason, finished_at=now())
    return record


def _configured_axes(config: dict[str, Any]) -> dict[str, Any]:
    """The named axes a composed config states as plain values (see RunSpec.axes for all of them).

    The labels a RunSpec derives from several settings (schedule, data, tokenizer, qat_start) are
    left out rather than guessed, and so is `steps` when a token budget sets the length; the
    sweep table shows a missing axis as "-".
    """
    group = {name: config.get(name) or {} for name in ("model", "optim", "trainer", "data")}
    axes = {"bits": config.get("bits"), "warmdown": config.get("warmdown"), "lr_mult": config.get("lr_mult"),
            "model": group["model"].get("name"), "optim": group["optim"].get("name"), "seed": config.get("seed"),
            "seq_len": group["data"].get("seq_len"), "batch_size": group["data"].get("batch_size")}
    if group["trainer"].get("tokens_per_param") is None:
        axes["steps"] = group["trainer"].get("steps")
    return axes


def _running_record(axes: dict[str, Any], ident: dict[str, Any], config: dict[str, Any], mode: str | None,
                    project: str | None) -> dict[str, Any]:
    git = git_state()
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "sweep_id": ident["sweep_id"], "job_name": ident["job_name"], "job_num": ident["job_num"],
        "job_dir": ident["job_dir"],
        "axes": axes,
        "results": {},
        "params": {}, "tokens": {}, "timing": {}, "data": {},
        "env": {**versions(), "git_sha": git["sha"], "git_dirty": git["dirty"]},
        "wandb": {"id": None, "mode": mode, "project": project, "group": ident["sweep_id"], "name": ident["job_name"]},
        "history_file": HISTORY_NAME,
        "config": config,
        "started_at": now(), "finished_at": None, "error": None, "diverged_at_step": None, "divergence": None,
        "resumed_from_step": None,
        "slurm": {k: os.environ.get(f"SLURM_{k.upper()}") for k in ("job_id", "array_job_id", "array_task_id",
                                                                      "restart_count", "job_nodelist")},
    }


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


SUMMARY_SECTIONS = ("results", "params", "data", "divergence", "timing")
"""Parts of a record that go to the W&B run summary, flattened with '/' (per-layer maps left out)."""
SUMMARY_DATA = ("fingerprint", "tokenizer_sha256", "corpus", "tokenizer", "vocab_size", "unigram_val_bpb")


def summary_fields(record: dict[str, Any]) -> dict[str, Any]:
    """The record's final state as flat W&B summary keys ('results/val_loss', 'results/ptq/6/val_loss',
    'status', ...); qat_lab.analysis.load rebuilds the record's sections from them."""
    out: dict[str, Any] = {"status": record.get("status"), "error": record.get("error"),
                           "resumed_from_step": record.get("resumed_from_step")}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if not str(k).endswith("per_layer"):
                    add(f"{prefix}/{k}", v)
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[prefix] = value

    for section in SUMMARY_SECTIONS:
        part = record.get(section) or {}
        if section == "data":
            part = {k: part.get(k) for k in SUMMARY_DATA if k in part}
        add(section, part)
    return out


def sections_from_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The inverse of summary_fields: {'results': {...}, 'params': {...}, ...} from flat keys."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        parts = str(key).split("/")
        if parts[0] not in SUMMARY_SECTIONS or len(parts) < 2:
            continue
        node = out.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out
