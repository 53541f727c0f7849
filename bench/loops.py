"""What the benchmark times: a bare PyTorch training loop, the project's Lightning loop, the
machine's fp32 matmul peak, and the periodic evaluation callbacks.

Both loops train the same model (same preset, same seed, so the same initial weights) on the same
batches (the project's LMDataModule, iterated from step 0), with the same optimisers
(build_optimisers) and the same per-step hyperparameters (apply_step_hparams with the run's
schedule). Each run does `warmup` untimed steps followed by `steps` timed ones; a run returns the
wall time of the timed window only, so model/Trainer construction and first-step allocations are
excluded.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import hydra
import lightning as L
import torch

from pathlib import Path

from qat_lab.config import RunSpec, build_spec
from qat_lab.data import LMDataModule
from qat_lab.evaluation import mean_loss, strong_ptq
from qat_lab.models.gpt import GPT, lm_loss
from qat_lab.module import QATLanguageModel
from qat_lab.optim import apply_step_hparams, build_optimisers
from qat_lab.quant import apply_qat, grid_distance
from qat_lab.train import make_monitor, make_trainer

DEFAULT_RUN_STEPS = 150
"""trainer.steps of a default run (conf/trainer/cpu.yaml). A benchmark run stops after far fewer
steps (the datamodule yields only warmup + steps batches); trainer.steps only sets the schedule."""


def compose(preset: str, *, bits: int = 16, optim: str = "muon", run_steps: int = DEFAULT_RUN_STEPS,
            periodic_eval: bool = False) -> RunSpec:
    """The RunSpec of `qatlab model=<preset> bits=<bits> optim=<optim>` with the benchmark's settings.

    - logger=none: W&B is not part of the training loop being measured.
    - trainer.accelerator=cpu: both loops must run on the same device, also on a machine with a GPU.
    - periodic_eval=False switches the grid-distance, quick-validation and loss-curve passes off
      (grid_every=0, val_every=0, curve_every=0, and warmdown=0 so the pre-warmdown grid snapshot at step t0 falls
      after the last step). They are evaluation work at fixed steps, which the bare loop does not
      do; left on, whether one lands inside a timed window would decide the Lightning-vs-bare
      ratio. Their cost is measured on its own (periodic_eval_costs). The callbacks themselves
      stay installed, so their per-step hooks are timed.
    """
    overrides = [f"model={preset}", f"bits={bits}", f"optim={optim}", "logger=none",
                 "trainer.accelerator=cpu", f"trainer.steps={run_steps}"]
    if not periodic_eval:
        overrides += ["trainer.grid_every=0", "trainer.val_every=0", "trainer.curve_every=0", "warmdown=0"]
    with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
        cfg = hydra.compose("config", overrides=overrides)
    return build_spec(cfg)


def load_data(spec: RunSpec) -> LMDataModule:
    """The project's datamodule, set up once (reading and encoding the corpus takes a while)."""
    data = LMDataModule(spec.data, spec.trainer.steps, spec.seed)
    data.setup()
    return data


def _loader(data: LMDataModule, n_steps: int):
    # One DataModule serves every run: only the number of batches it yields changes. Batch i depends
    # only on (seed, i), so every run sees the same batches in the same order.
    data.steps = n_steps
    return data.train_dataloader()


def _collect_garbage() -> None:
    # A finished Lightning run leaves many reference cycles (Trainer, loops, callbacks); without
    # this, the cyclic collector frees them inside whichever run's timed window comes next.
    gc.collect()


@dataclass
class Timing:
    """Wall time of one run's timed window."""

    seconds: float
    steps: int
    final_loss: float
    """Train loss of the last step: the two loops did the same work only if theirs agree."""
    optimizer_seconds: float | None = None
    """Time inside the optimisers' step() and zero_grad() (bare loop only)."""


def bare_loop(spec: RunSpec, data: LMDataModule, warmup: int, steps: int) -> Timing:
    """A hand-written training loop: what QATLanguageModel.training_step does, without Lightning."""
    _collect_garbage()
    torch.manual_seed(spec.seed)  # what L.seed_everything does for torch: the same initial weights
    model = GPT(spec.model, data.vocab_size)
    apply_qat(model, spec.quant)
    model.train()
    optimisers = build_optimisers(model, spec.optim, spec.lr_mult)
    clip = spec.trainer.grad_clip

    start = None
    optimizer_s = 0.0
    for step, (x, y) in enumerate(_loader(data, warmup + steps)):
        if step == warmup:
            start = time.perf_counter()
        apply_step_hparams(optimisers, step, spec.schedule.multiplier(step, spec.trainer.steps))
        loss = lm_loss(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        t_opt = time.perf_counter()
        for opt in optimisers:
            opt.step()
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        if step >= warmup:
            optimizer_s += time.perf_counter() - t_opt
        # A real loop reads the loss every step (logging, divergence check); so does the module.
        last_loss = float(loss.detach())
    return Timing(time.perf_counter() - start, steps, last_loss, optimizer_s)


class _WindowStamp(L.Callback):
    """Records perf_counter at the start of step `first` or at the end of step `last`.

    Two instances bracket the project's callbacks (one first in the list, one last), so every hook
    of the timed steps falls inside the window.
    """

    def __init__(self, first: int | None = None, last: int | None = None):
        self.first, self.last = first, last
        self.at: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx == self.first:
            self.at = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx == self.last:
            self.at = time.perf_counter()


def lightning_loop(spec: RunSpec, data: LMDataModule, warmup: int, steps: int) -> Timing:
    """The project's training setup minus loggers, timed inside fit: train.build's seeding and
    module, train.make_monitor's callback and train.make_trainer's Trainer. Only the run length
    (the datamodule's number of batches) and the window stamps differ.
    """
    total = warmup + steps
    _collect_garbage()
    L.seed_everything(spec.seed, workers=True, verbose=False)
    module = QATLanguageModel(spec, data.vocab_size)
    with tempfile.TemporaryDirectory(prefix="qat_bench_") as job_dir:
        monitor = make_monitor(spec, data, Path(job_dir), fingerprint="bench")
        begin, end = _WindowStamp(first=warmup), _WindowStamp(last=total - 1)
        trainer = make_trainer(spec, Path(job_dir), [begin, monitor, end], loggers=[])
        data.steps = total  # the run length; see _loader
        try:
            trainer.fit(module, datamodule=data)
        finally:
            monitor.history.close()
    if begin.at is None or end.at is None or module.step != total:
        raise RuntimeError(f"Lightning ran {module.step} of {total} steps (diverged or stopped early?)")
    return Timing(end.at - begin.at, steps, module.last_loss)


def matmul_peak(size: int, reps: int) -> float:
    """This machine's fp32 matmul rate in FLOP/s: median over `reps` square matmuls (2n^3 FLOPs each).

    The MFU denominator. Measured rather than taken from a spec sheet: a 2-core VM's real peak
    depends on the host's vector units, clocks and torch's BLAS backend.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    for _ in range(2):  # warm the BLAS thread pool and caches
        torch.matmul(a, b, out=out)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2.0 * size**3 / statistics.median(times)


def periodic_eval_costs(spec: RunSpec, data: LMDataModule, reps: int = 3) -> dict[str, float]:
    """Seconds for one grid-distance measurement, one quick validation and one point of the loss
    curve (median of `reps`).

    `spec` must carry the project's cadence (compose(..., periodic_eval=True)): the quick
    validation reads trainer.val_batches batches, as QuickValidation does, and the curve
    trainer.curve_batches, as LossCurve does.
    """
    torch.manual_seed(spec.seed)
    model = GPT(spec.model, data.vocab_size)
    apply_qat(model, spec.quant)
    batches = data.eval_batches(spec.trainer.val_batches * spec.data.batch_size * spec.data.seq_len)
    curve = data.eval_batches(spec.trainer.curve_batches * spec.data.batch_size * spec.data.seq_len)

    def median_time(fn) -> float:
        fn()  # first call allocates
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    return {"grid_s": median_time(lambda: grid_distance(model, spec.quant)),
            "val_s": median_time(lambda: mean_loss(model, batches)),
            "curve_s": median_time(lambda: mean_loss(model, curve))}


def strong_ptq_cost(spec: RunSpec, data: LMDataModule) -> dict[str, float]:
    """Seconds the end-of-run strong-PTQ arms add to a run (the ptq group's defaults: clip search
    and GPTQ at every PTQ bit-width, each evaluated on the final validation set; one pass, as a run
    does it), beside the round-to-nearest evaluation every run does anyway. Timed on the
    initial weights: the cost does not depend on what the weights are."""
    torch.manual_seed(spec.seed)
    model = GPT(spec.model, data.vocab_size)
    apply_qat(model, spec.quant)
    strong = [m for m in spec.ptq.methods if m != "rtn"]
    bits = sorted({spec.quant.bits, *spec.ptq.bits} - {16}, reverse=True)
    calibration = data.calibration_batches(spec.ptq.calibration_batches) if "gptq" in strong else []
    start = time.perf_counter()
    out = strong_ptq(model, spec.quant, data.eval_batches(), data.bits_per_byte, nullcontext, bits, strong,
                     calibration)
    return {"ptq_s": time.perf_counter() - start, **out["ptq_cost"]}
