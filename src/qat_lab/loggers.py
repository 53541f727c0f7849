"""The run's W&B logger (Lightning's WandbLogger): set up, final summary, finish with the record's state.

- Offline by default: no account, no network; `wandb sync <job dir>/wandb/offline-run-*` later.
  `logger=none`, `logger.mode=disabled`, or WANDB_MODE=disabled / WANDB_DISABLED=true in the
  environment: no W&B files at all.
- group = sweep id, name = the job's override dirname, id = deterministic from both (a requeued
  job continues its run); the flat sweep axes sit at the top of the W&B config (dashboard filters
  on dotted keys are unreliable) and the whole resolved config under `cfg`.
- Tags: the experiment preset, the sweep id, `bits=<b>`, `optim=<name>`, and at the end the
  run's status, so a dashboard filters on any of them.
- At the end the run summary gets every final result (records.content.summary_fields) and the
  run is finished with exit code 0 only if the record says completed: a failed, diverged or
  interrupted run shows as failed on the dashboard, as it is in its record.
- One W&B run per job: several jobs in one process would otherwise log into the first run, so the
  logger's own run object is finished in a `finally` (DESIGN.md, W&B facts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat_lab.records.content import summary_fields, wandb_mode


def tags_for(spec, ident: dict[str, Any]) -> list[str]:
    tags = [*spec.logger.tags, f"sweep={ident['sweep_id']}", f"bits={spec.quant.bits}", f"optim={spec.optim.name}"]
    if ident.get("experiment"):
        tags.append(f"experiment={ident['experiment']}")
    return [t[:64] for t in dict.fromkeys(tags)]  # W&B caps a tag at 64 characters


def make_loggers(spec, ident: dict[str, Any], cfg: DictConfig) -> list:
    mode = wandb_mode(spec)
    if mode == "disabled":
        return []
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    config = {**spec.axes(), "sweep_id": ident["sweep_id"], "cfg": OmegaConf.to_container(cfg, resolve=True)}
    logger = WandbLogger(
        project=spec.logger.project, entity=spec.logger.entity, name=ident["job_name"], group=ident["sweep_id"],
        id=ident["wandb_id"], save_dir=ident["job_dir"], offline=mode == "offline",
        job_type="train", tags=tags_for(spec, ident), config=config, log_model=False, resume="allow",
        # Quiet console (one line per job is ours to print) and no stdout capture.
        settings=wandb.Settings(silent=True, console="off"),
    )
    # Lightning always passes anonymous=None, which wandb 0.31 answers with "The anonymous setting
    # has no effect" on every run; the setting is gone from W&B, so leave it out.
    logger._wandb_init.pop("anonymous", None)
    return [logger]


def describe(loggers: list, record: dict[str, Any]) -> None:
    """Put the W&B run's id and folder into the record (rank 0, once the run exists)."""
    if loggers:
        run = loggers[0].experiment
        record["wandb"]["id"] = run.id
        record["wandb"]["dir"] = str(Path(run.dir).parent)


def finish_loggers(loggers: list, record: dict[str, Any]) -> None:
    """Final summary and status tag, then finish each W&B run of this job (exit code 1 unless the
    record says completed), so the next job in this process opens a new one."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if run is None:
            continue
        try:
            run.summary.update(summary_fields(record))
            run.tags = tuple(dict.fromkeys([*run.tags, f"status={record['status']}"]))
        finally:
            run.finish(exit_code=0 if record["status"] == "completed" else 1)
