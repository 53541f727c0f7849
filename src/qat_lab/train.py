"""Training one job: a validated RunSpec -> data, model, Trainer -> evaluation -> the record's numbers.

Three steps, each readable on its own:
- build:   data module, model (QAT wrapped, maybe compiled), the monitor's pieces, and the state
           of a checkpoint to resume from (read safely; an unusable one is set aside);
- fit:     the loggers (W&B or TensorBoard), Lightning Trainer, Trainer.fit; what happens at each
           step is callbacks/monitor.py's docstring;
- collect: tokens, timing, the final evaluation and the divergence verdict into the record.
The record's lifecycle (lock, running -> final status, signals, errors) is qat_lab.jobs', and so is
finishing the loggers with the final status (qat_lab.loggers.JobLoggers).
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig

from qat_lab.callbacks import (Checkpointer, DivergenceRule, GridProbe, History, QuickValidation, TrainingMonitor,
                               final_divergence, load_checkpoint, rows_before)
from qat_lab.callbacks.checkpoint import CHECKPOINT_NAME, set_aside
from qat_lab.callbacks.progress import Progress
from qat_lab.callbacks.validation import LossCurve
from qat_lab.config import RunSpec
from qat_lab.data.datamodule import LMDataModule
from qat_lab.evaluation import final_evaluation
from qat_lab.loggers import JobLoggers
from qat_lab.module import QATLanguageModel
from qat_lab.records import HISTORY_NAME, write_record
from qat_lab.records.identity import config_fingerprint


def quiet_lightning() -> None:
    """Keep a sweep's console readable: our lines, Lightning's warnings, and none of the known
    noise, each filter as narrow as the message it silences."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*torch.set_float32_matmul_precision.*")
    # Lightning 2.6's own pytree helper still builds torch's deprecated LeafSpec (torch 2.13);
    # harmless, and nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                            module=r"lightning\.pytorch\.utilities\._pytree")
    # On a machine with Slurm installed, Lightning warns on every run started outside `srun`; each
    # job here is one process (the submitit launcher starts it under Slurm itself), so it is noise.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


def trainer_precision(spec: RunSpec) -> str:
    if spec.trainer.precision != "auto":
        return spec.trainer.precision
    gpu = spec.trainer.accelerator in ("gpu", "cuda") or (spec.trainer.accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if gpu else "32-true"


@dataclass
class Job:
    """What build() puts together for one training job."""

    spec: RunSpec
    job_dir: Path
    data: LMDataModule
    module: QATLanguageModel
    monitor: TrainingMonitor


def build(spec: RunSpec, ident: dict[str, Any], record: dict[str, Any], say=print) -> Job:
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

    fingerprint = config_fingerprint(record["config"], record["data"])
    resume = None
    if spec.trainer.checkpoint_every:
        resume, note = load_checkpoint(job_dir, fingerprint, spec.trainer.steps)
        if resume is not None and rows_before(job_dir / HISTORY_NAME, resume["step"]) is None:
            aside = set_aside(job_dir / CHECKPOINT_NAME, "no-history")
            resume, note = None, (f"{HISTORY_NAME} does not hold every step before the checkpoint's: checkpoint "
                                  f"set aside as {aside.name}; starting from step 0")
        if note:
            say(f"[{ident['job_num']}] {ident['job_name']}: {note}")
    if resume is not None:  # a requeued or re-run job: continue where the checkpoint left off
        module.model.load_state_dict(resume["model"])
        module.step = data.start_step = resume["step"]
        record["resumed_from_step"] = resume["step"]
        say(f"[{ident['job_num']}] {ident['job_name']}: resuming from step {resume['step']}")

    head = f"[{ident['job_num']}] {ident['job_name']}"
    tokens = spec.trainer.steps * spec.data.batch_size * spec.data.seq_len
    if len(data.train_tokens) and tokens > len(data.train_tokens):
        say(f"{head}: reads {tokens / len(data.train_tokens):.1f} epochs of its {len(data.train_tokens):,} training "
            "tokens (the corpus repeats)")
    monitor = make_monitor(spec, data, job_dir, fingerprint, resume, module.qat_start_step,
                           Progress(head, spec.trainer.steps, spec.data.batch_size * spec.data.seq_len,
                                    spec.trainer.log_every))
    return Job(spec, job_dir, data, module, monitor)


def make_monitor(spec: RunSpec, data: LMDataModule, job_dir: Path, fingerprint: str,
                 resume: dict | None = None, qat_start: int | None = None,
                 progress: Progress | None = None) -> TrainingMonitor:
    """The run's TrainingMonitor and its pieces, configured from the spec."""
    t = spec.trainer
    grid = GridProbe(spec.quant, t.grid_every, spec.schedule.warmdown_start(t.steps), qat_start)
    if resume is not None:
        grid.pre_warmdown = resume["grid_pre_warmdown"]
        grid.at_qat_start = resume.get("grid_at_qat_start")
    quick_batches = data.eval_batches(t.val_batches * spec.data.batch_size * spec.data.seq_len)
    curve_batches = data.eval_batches(t.curve_batches * spec.data.batch_size * spec.data.seq_len)
    return TrainingMonitor(
        grid=grid,
        quick_val=QuickValidation(t.val_every, quick_batches, data.bits_per_byte_for(quick_batches)),
        history=History(job_dir),
        divergence=DivergenceRule(data.vocab_size, t.grace_steps(), t.max_loss),
        checkpointer=Checkpointer(job_dir, t.checkpoint_every, fingerprint, t.steps),
        progress=progress,
        resume=resume,
        curve=LossCurve(t.curve_every, curve_batches, spec.schedule.warmdown_start(t.steps)),
    )


def make_trainer(spec: RunSpec, job_dir: Path, callbacks: list, loggers: list) -> L.Trainer:
    """The Lightning Trainer of a run (manual optimisation: the module steps its own optimisers)."""
    t = spec.trainer
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, precision=trainer_precision(spec),
        max_epochs=1, logger=loggers or False, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=t.progress, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, log_every_n_steps=1, default_root_dir=str(job_dir), deterministic=t.deterministic,
        profiler=t.profiler,
        # Each rank draws its own batches (RandomWindows is rank-aware): no sampler splitting
        # the steps between ranks.
        use_distributed_sampler=False,
    )


def fit(job: Job, loggers: list) -> tuple[L.Trainer, float]:
    trainer = make_trainer(job.spec, job.job_dir, [job.monitor], loggers)
    start = time.perf_counter()
    trainer.fit(job.module, datamodule=job.data)
    return trainer, time.perf_counter() - start


def collect(job: Job, trainer: L.Trainer, train_s: float, record: dict[str, Any]) -> None:
    """The record's tokens, timing and results; its status (completed or diverged) last."""
    spec, data, module, monitor = job.spec, job.data, job.module, job.monitor
    steps_done = module.step
    per_step = spec.data.batch_size * spec.data.seq_len * trainer.world_size
    tokens_this_process = (steps_done - data.start_step) * per_step
    record["tokens"] = {"train": steps_done * per_step, "per_step": per_step, "world_size": trainer.world_size,
                        "val_final": sum(y.numel() for _, y in data.eval_batches())}
    record["timing"] = {"train_s": train_s, "tokens_per_s": tokens_this_process / train_s if train_s > 0 else None,
                        "flops_per_token": spec.model.flops_per_token(data.vocab_size, spec.data.seq_len),
                        "device": str(module.device), "threads": torch.get_num_threads()}
    results: dict[str, Any] = {"steps_done": steps_done, "train_loss_final": module.last_loss,
                               "unigram_val_bpb": data.unigram_bpt, "grid_bits": spec.quant.grid_bits}
    grid = monitor.grid
    if grid.pre_warmdown is not None:
        results["grid_distance_pre_warmdown"] = grid.pre_warmdown[0]
        results["grid_distance_pre_warmdown_per_layer"] = grid.pre_warmdown[1]
    results["qat_start_step"] = module.qat_start_step
    if grid.at_qat_start is not None:
        results["grid_distance_at_qat_start"] = grid.at_qat_start[0]
    record["results"] = results
    verdict = monitor.diverged
    if verdict is None and steps_done < spec.trainer.steps:
        raise RuntimeError(f"training stopped at step {steps_done} of {spec.trainer.steps} without a reason")
    if verdict is None:
        results["grid_distance_final"], results["grid_distance_final_per_layer"] = grid.final
        autocast = getattr(trainer.precision_plugin, "forward_context", nullcontext)
        calibration = data.calibration_batches(spec.ptq.calibration_batches) if "gptq" in spec.ptq.methods else []
        final_row = {"grid_distance": results["grid_distance_final"]}
        if monitor.curve is not None and monitor.curve.every:  # the curve's last point, after the last update
            final_row.update(monitor.curve.measure(module.model, autocast))
        results.update(final_evaluation(module.model, spec.quant, data.eval_batches(), data.bits_per_byte, autocast,
                                        spec.ptq, calibration))
        final_row.update(val_loss=results["val_loss"], val_bpb=results["val_bpb"])
        monitor.history.write(spec.trainer.steps, final_row, trainer.loggers)
        verdict = final_divergence(steps_done, results["val_loss"], results["val_bpb"], data.unigram_bpt,
                                   data.vocab_size, spec.trainer.grace_steps())
    if verdict is not None:
        record["status"] = "diverged"
        record["diverged_at_step"] = verdict.step
        record["divergence"] = verdict.as_dict()
    else:
        record["status"] = "completed"


def train(spec: RunSpec, cfg: DictConfig, ident: dict[str, Any], record: dict[str, Any],
          loggers: JobLoggers | None = None, say=print) -> None:
    """Build, fit and collect, filling `record` in place. With `loggers` (rank 0), the job's loggers
    are opened into it once the job is built and the running record is saved then (it names the W&B
    run); the caller finishes them once the record's final status is known (qat_lab.jobs), whatever
    ends the job. Without (the other ranks of a multi-device run), nothing is logged or written."""
    job = build(spec, ident, record, say)
    opened: list = []
    try:
        if loggers is not None:
            opened = loggers.open(spec, ident, cfg, record)
            write_record(job.job_dir, record)
        trainer, train_s = fit(job, opened)
        collect(job, trainer, train_s, record)
        if trainer.is_global_zero:
            job.monitor.checkpointer.discard()  # the run is over; the record holds what matters
    finally:
        job.monitor.history.close()
