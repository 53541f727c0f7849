"""The job's loggers besides metrics.csv: W&B (Lightning's WandbLogger) or TensorBoard (Lightning's
TensorBoardLogger); set up, final summary, finished with the record's final state.

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
- `logger=tensorboard`: event files in <job dir>/tensorboard, the same one row per step as
  metrics.csv (History.write hands each row to every logger); written with tensorboardX when the
  tensorboard package is not installed (Lightning's fallback). A resumed run purges the events
  from its resume step on, so TensorBoard too shows every step once.
- Who finishes: `JobLoggers` is opened by qat_lab.train once the job is built and finished by
  qat_lab.jobs after the final record is known, whatever ended the job (an exception, a signal, a
  storage error). One W&B run per job: several jobs in one process would otherwise log into the
  first run (DESIGN.md, W&B facts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from qat_lab.records.content import summary_fields, wandb_mode

TENSORBOARD_DIR = "tensorboard"
"""logger=tensorboard's folder in the job dir."""


def tags_for(spec, ident: dict[str, Any]) -> list[str]:
    tags = [*spec.logger.tags, f"sweep={ident['sweep_id']}", f"bits={spec.quant.bits}", f"optim={spec.optim.name}"]
    if ident.get("experiment"):
        tags.append(f"experiment={ident['experiment']}")
    return [t[:64] for t in dict.fromkeys(tags)]  # W&B caps a tag at 64 characters


def make_loggers(spec, ident: dict[str, Any], cfg: DictConfig, resume_step: int = 0) -> list:
    """The Lightning loggers of this job (rank 0): [] for none, one W&B or one TensorBoard logger."""
    if spec.logger.backend == "tensorboard":
        return [tensorboard_logger(ident["job_dir"], resume_step)]
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


def tensorboard_logger(job_dir: str | Path, resume_step: int = 0):
    """Event files in <job_dir>/tensorboard. A resumed run passes its resume step as the writer's
    purge_step: TensorBoard drops the earlier events at and after it (the killed run's rows past
    its checkpoint), as metrics.csv does."""
    from lightning.pytorch.loggers import TensorBoardLogger

    class JobTensorBoardLogger(TensorBoardLogger):
        """Lightning finalises its loggers when fit ends, but the job's last row (t = steps, the
        final evaluation) comes after: closing the writer there would make that row open a second
        event file, of the same name within the same second (tensorboardX then truncates the
        first). So Lightning's finalize only flushes; JobLoggers.finish closes."""

        def log_metrics(self, metrics, step=None) -> None:
            super().log_metrics(metrics, step)
            # tensorboardX writes from a thread and flushes every 2 minutes; flushing each row keeps
            # what a SIGKILL can lose to the last step or so (metrics.csv is the record).
            self.experiment.flush()

        def finalize(self, status: str) -> None:
            if self._experiment is not None:
                self._experiment.flush()

        def close(self, status: str) -> None:
            super().finalize(status)

    extra = {"purge_step": resume_step} if resume_step else {}
    return JobTensorBoardLogger(save_dir=str(job_dir), name="", version=TENSORBOARD_DIR, default_hp_metric=False,
                                **extra)


def describe(loggers: list, record: dict[str, Any]) -> None:
    """Put the W&B run's id and folder into the record (rank 0, once the run exists)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            record["wandb"]["id"] = run.id
            record["wandb"]["dir"] = str(Path(run.dir).parent)


def finish_loggers(loggers: list, record: dict[str, Any]) -> list[str]:
    """Finish each logger with the record's state: a W&B run gets the final summary and the status
    tag and finishes with exit code 0 only if the record says completed (so the next job in this
    process opens a new run); TensorBoard's writer is flushed and closed. Every logger is tried;
    returns one line per logger that could not be finished (a full disk, W&B's service gone)."""
    from lightning.pytorch.loggers import WandbLogger

    problems = []
    for logger in loggers:
        try:
            if isinstance(logger, WandbLogger):
                _finish_wandb(logger, record)
            else:
                getattr(logger, "close", logger.finalize)("success" if record["status"] == "completed" else "failed")
        except Exception as e:  # the record is what counts; a logger that cannot finish is one line
            problems.append(f"{type(logger).__name__}: {type(e).__name__}: {str(e).strip()[:200]}")
    return problems


def _finish_wandb(logger, record: dict[str, Any]) -> None:
    run = getattr(logger, "_experiment", None)
    if run is None:
        return
    try:
        run.summary.update(summary_fields(record))
        run.tags = tuple(dict.fromkeys([*run.tags, f"status={record['status']}"]))
    finally:
        run.finish(exit_code=0 if record["status"] == "completed" else 1)


class JobLoggers:
    """One job's loggers: opened by qat_lab.train once the job is built (the W&B run then exists
    for the running record), finished by qat_lab.jobs once the final record is known."""

    def __init__(self) -> None:
        self.loggers: list = []

    def open(self, spec, ident: dict[str, Any], cfg: DictConfig, record: dict[str, Any]) -> list:
        self.loggers = make_loggers(spec, ident, cfg, record.get("resumed_from_step") or 0)
        describe(self.loggers, record)
        return self.loggers

    def finish(self, record: dict[str, Any]) -> list[str]:
        """Finish every logger with the record's (final) state, once; see finish_loggers."""
        loggers, self.loggers = self.loggers, []
        return finish_loggers(loggers, record) if loggers else []
