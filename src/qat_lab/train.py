"""One training job: config -> data, model, optimisers, Trainer -> evaluation -> run record.

`run_job` is what Hydra calls once per job (once for a single run, once per point of a `-m`
sweep, possibly in another process or on a Slurm node). It never lets one job's failure stop a
sweep: a diverged run and a crashed run are both recorded (`diverged` / `failed`) and the next job
starts. Ctrl-C records `interrupted` and stops. A job whose record already says `completed` is
skipped, so re-running a sweep into the same sweep dir finishes only what is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import traceback
import warnings
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from qat_lab import runs
from qat_lab.callbacks import (DivergenceGuard, GridDistanceMonitor, MetricsHistory, QuickValidation, StepCheckpoint,
                               load_checkpoint)
from qat_lab.config import RunSpec, build_spec
from qat_lab.data import LMDataModule
from qat_lab.evaluation import final_evaluation
from qat_lab.models.gpt import flops_per_token, matmul_params
from qat_lab.module import QATLanguageModel
from qat_lab.quant import grid_bits_for

log = logging.getLogger("qat_lab")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def job_identity() -> dict[str, Any]:
    """Where this job lives: its dir, its sweep, its name (the override dirname)."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job_dir = Path(hc.runtime.output_dir)
    return identity(job_dir, Path(hc.sweep.dir) if multirun else job_dir, hc.job.override_dirname,
                    hc.job.num if multirun else 0)


def identity(job_dir: Path, sweep_dir: Path, override_dirname: str, job_num: int) -> dict[str, Any]:
    name = override_dirname or "default"
    return {
        "job_dir": str(job_dir), "sweep_dir": str(sweep_dir), "sweep_id": sweep_dir.name,
        "job_name": name, "job_num": job_num,
        # Deterministic from the sweep dir and the job's overrides: a requeued or re-run job
        # logs to the same W&B run id.
        "wandb_id": hashlib.sha1(f"{sweep_dir.resolve()}|{name}".encode()).hexdigest()[:16],
    }


def make_loggers(spec: RunSpec, ident: dict[str, Any], cfg: DictConfig) -> list:
    if spec.logger.backend == "none" or spec.logger.mode == "disabled":
        return []
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    # Sweep axes flat at the top of the W&B config (filters on dotted keys are unreliable);
    # the whole resolved config under `cfg`.
    config = {**spec.axes(), "sweep_id": ident["sweep_id"], "cfg": OmegaConf.to_container(cfg, resolve=True)}
    return [WandbLogger(
        project=spec.logger.project, entity=spec.logger.entity, name=ident["job_name"], group=ident["sweep_id"],
        id=ident["wandb_id"], save_dir=ident["job_dir"], offline=spec.logger.mode == "offline",
        job_type="train", tags=spec.logger.tags, config=config, log_model=False, resume="allow",
        # Quiet console (one line per job is ours to print) and no stdout capture.
        settings=wandb.Settings(silent=True, console="off"),
    )]


def finish_loggers(loggers: list) -> None:
    """Finish each W&B run of this job, so the next job in this process opens a new one."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if run is not None:
            run.finish()


def trainer_precision(spec: RunSpec) -> str:
    if spec.trainer.precision != "auto":
        return spec.trainer.precision
    gpu = spec.trainer.accelerator in ("gpu", "cuda") or (spec.trainer.accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if gpu else "32-true"


def new_record(spec: RunSpec, ident: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    return {
        "schema_version": runs.SCHEMA_VERSION,
        "status": "running",
        "sweep_id": ident["sweep_id"], "job_name": ident["job_name"], "job_num": ident["job_num"],
        "job_dir": ident["job_dir"],
        "axes": spec.axes(),
        "results": {},
        "params": {}, "tokens": {}, "timing": {}, "data": {},
        "env": {**runs.versions(), "git_sha": runs.git_state()["sha"], "git_dirty": runs.git_state()["dirty"]},
        "wandb": {"id": None, "mode": spec.logger.mode, "project": spec.logger.project, "group": ident["sweep_id"],
                  "name": ident["job_name"]},
        "history_file": runs.HISTORY_NAME,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "started_at": _now(), "finished_at": None, "error": None, "diverged_at_step": None,
        "resumed_from_step": None,
        "slurm": {k: os.environ.get(f"SLURM_{k.upper()}") for k in ("job_id", "array_job_id", "array_task_id",
                                                                      "restart_count", "job_nodelist")},
    }


def never_started_record(cfg: DictConfig, ident: dict[str, Any], reason: str) -> dict[str, Any]:
    """The record of a job that was killed before it could write one (e.g. by Slurm)."""
    record = new_record(build_spec(cfg), ident, cfg)
    record.update(status="failed", error=reason, finished_at=_now())
    return record


def quiet_lightning() -> None:
    """Keep a sweep's console readable: one line per job from us, warnings from Lightning."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*torch.set_float32_matmul_precision.*")


def train(spec: RunSpec, cfg: DictConfig, ident: dict[str, Any], record: dict[str, Any], write: bool = True) -> None:
    """Train and evaluate, filling `record` in place (`write`: rank 0 saves the running record)."""
    job_dir = Path(ident["job_dir"])
    if spec.trainer.threads:
        torch.set_num_threads(spec.trainer.threads)
    L.seed_everything(spec.seed, workers=True, verbose=False)

    data = LMDataModule(spec.data, spec.trainer.steps, spec.seed)
    data.setup()
    record["data"] = data.describe()
    module = QATLanguageModel(spec, data.vocab_size)
    if spec.trainer.compile:
        module.model.compile()  # in place: parameters, tying and routing stay the same objects
    record["params"] = module.parameter_counts()
    record["params"]["quantised_matrices"] = module.quantised

    t0 = spec.schedule.warmdown_start(spec.trainer.steps)
    grid = GridDistanceMonitor(spec.trainer.grid_every, t0, spec.trainer.steps)
    resume = load_checkpoint(job_dir)
    if resume is not None:  # a requeued job: continue where the checkpoint left off
        module.model.load_state_dict(resume["model"])
        module.step = data.start_step = resume["step"]
        grid.pre_warmdown = resume["grid_pre_warmdown"]
        record["resumed_from_step"] = resume["step"]
        print(f"[{ident['job_num']}] {ident['job_name']}: resuming from step {resume['step']}", flush=True)
    history = MetricsHistory(job_dir, resume_step=module.step)
    checkpoint = StepCheckpoint(job_dir, spec.trainer.checkpoint_every, grid, resume)
    quick_batches = data.eval_batches(spec.trainer.val_batches * spec.data.batch_size * spec.data.seq_len)
    callbacks = [
        checkpoint,
        DivergenceGuard(spec.trainer.max_loss),
        grid,
        QuickValidation(spec.trainer.val_every, quick_batches, data.bits_per_byte_for(quick_batches)),
        history,  # last: writes what the others measured
    ]
    loggers = make_loggers(spec, ident, cfg)
    try:
        if loggers and write:
            record["wandb"]["id"] = loggers[0].experiment.id
            record["wandb"]["dir"] = str(Path(loggers[0].experiment.dir).parent)
        if write:
            runs.write_record(job_dir, record)
        trainer = L.Trainer(
            accelerator=spec.trainer.accelerator, devices=spec.trainer.devices, strategy=spec.trainer.strategy,
            precision=trainer_precision(spec),
            max_epochs=1, logger=loggers or False, callbacks=callbacks, enable_checkpointing=False,
            enable_progress_bar=spec.trainer.progress, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, log_every_n_steps=1, default_root_dir=str(job_dir),
            # Each rank draws its own batches (RandomWindows is rank-aware): no sampler splitting
            # the steps between ranks.
            use_distributed_sampler=False,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        train_s = time.perf_counter() - start

        steps_done = module.step
        per_step = spec.data.batch_size * spec.data.seq_len * trainer.world_size
        tokens_this_process = (steps_done - data.start_step) * per_step
        tokens = steps_done * per_step
        n_matmul = matmul_params(module.model)
        record["tokens"] = {"train": tokens, "per_step": per_step, "world_size": trainer.world_size,
                            "val_final": sum(y.numel() for _, y in data.eval_batches())}
        record["timing"] = {"train_s": train_s, "tokens_per_s": tokens_this_process / train_s if train_s > 0 else None,
                            "flops_per_token": flops_per_token(spec.model, n_matmul, spec.data.seq_len),
                            "device": str(module.device), "threads": torch.get_num_threads()}
        results: dict[str, Any] = {"steps_done": steps_done, "train_loss_final": module.last_loss,
                                   "unigram_val_bpb": data.unigram_bpt, "grid_bits": None}
        if grid.pre_warmdown is not None:
            results["grid_distance_pre_warmdown"] = grid.pre_warmdown[0]
            results["grid_distance_pre_warmdown_per_layer"] = grid.pre_warmdown[1]
        if module.diverged_at is not None:
            record["status"] = "diverged"
            record["diverged_at_step"] = module.diverged_at
        else:
            results["grid_distance_final"], results["grid_distance_final_per_layer"] = grid.final
            autocast = getattr(trainer.precision_plugin, "forward_context", nullcontext)
            results.update(final_evaluation(module.model, spec.bits, spec.quant, data.eval_batches(),
                                            data.bits_per_byte, autocast))
            history.write_row(trainer, spec.trainer.steps, {  # (a no-op off rank 0)
                "val_loss": results["val_loss"], "val_bpb": results["val_bpb"],
                "grid_distance": results["grid_distance_final"]})
            record["status"] = "completed" if results["finite"] else "diverged"
        results["grid_bits"] = grid_bits_for(spec.bits, spec.quant)
        record["results"] = results
        if trainer.is_global_zero:
            checkpoint.discard()  # the run is over; the record holds what matters
    finally:
        history.close()
        finish_loggers(loggers)


def is_global_zero() -> bool:
    """False in the extra processes of a multi-device run: they train, rank 0 alone records."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: run one job and leave its run record in the job dir."""
    quiet_lightning()
    if not is_global_zero():
        # A DDP worker process: train in lockstep with rank 0, write nothing.
        spec = build_spec(cfg)
        ident = job_identity()
        train(spec, cfg, ident, new_record(spec, ident, cfg), write=False)
        return {}
    ident = job_identity()
    job_dir = Path(ident["job_dir"])
    done = runs.completed_record(job_dir)
    if done is not None:
        print(f"[{ident['job_num']}] {ident['job_name']}: already completed, skipped", flush=True)
        return done
    spec = build_spec(cfg)
    record = new_record(spec, ident, cfg)
    runs.write_record(job_dir, record)
    wall = time.perf_counter()
    try:
        train(spec, cfg, ident, record)
    except (KeyboardInterrupt, SystemExit) as e:
        # Lightning turns Ctrl-C inside fit into SystemExit after its own clean-up.
        record.update(status="interrupted", error=type(e).__name__, finished_at=_now())
        record["timing"]["wall_s"] = time.perf_counter() - wall
        runs.write_record(job_dir, record)
        raise
    except Exception as e:  # a crashed job is recorded and the sweep goes on
        (job_dir / "error.txt").write_text(traceback.format_exc())
        if type(e).__name__ == "UncompletedJobError":
            # submitit ending a Slurm job it will not requeue (e.g. timed out too many times): the
            # exception must reach submitit, which reports the job as failed to the launcher.
            record.update(status="failed", error=f"Slurm: {e}", finished_at=_now())
            runs.write_record(job_dir, record)
            raise
        record.update(status="failed", error=f"{type(e).__name__}: {e}", finished_at=_now())
        record["timing"]["wall_s"] = time.perf_counter() - wall
        runs.write_record(job_dir, record)
        print(f"[{ident['job_num']}] {ident['job_name']}: FAILED ({record['error']}); see {job_dir / 'error.txt'}", flush=True)
        return record
    record["finished_at"] = _now()
    record["timing"]["wall_s"] = time.perf_counter() - wall
    runs.write_record(job_dir, record)
    print(job_summary_line(record), flush=True)
    return record


def job_summary_line(record: dict[str, Any]) -> str:
    r, t = record["results"], record["timing"]
    head = f"[{record['job_num']}] {record['job_name']}: {record['status']}"
    if record["status"] == "diverged":
        return f"{head} at step {record['diverged_at_step']} ({t['wall_s']:.1f} s)"
    if r.get("val_bpb") is not None:
        quality = f"val_bpb {r['val_bpb']:.3f} (latent {r['latent_val_bpb']:.3f})"
    else:  # a tokenizer without known bytes per token: no bpb, report nats
        quality = f"val_loss {r['val_loss']:.3f} (latent {r['latent_val_loss']:.3f})"
    return f"{head}  {quality}  grid {r['grid_distance_final']:.3f}  {t['wall_s']:.1f} s  {t['tokens_per_s']:.0f} tok/s"
