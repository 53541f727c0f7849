"""Typed run configuration: Hydra's composed DictConfig -> a validated RunSpec.

Each config group names its dataclass in `_target_`, beside its component: model ->
models.config.GPTConfig, quant -> quant.config.QuantConfig, optim -> optim.config, schedule ->
schedules.ScheduleConfig, data -> data.config.DataConfig. The two that only describe how a run
is driven (trainer, logger) live here. `build_spec` builds every one of them and checks the
top-level sweep axes, so a bad value is one line (`bits=3.5 is not valid: ...`) before any data
is read or any model built. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from qat_lab import validation as v
from qat_lab.data.config import DataConfig
from qat_lab.errors import ConfigError
from qat_lab.models.config import GPTConfig
from qat_lab.quant.config import PTQConfig, QuantConfig, validate_bits
from qat_lab.schedules import ScheduleConfig, validate_warmdown

PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16", "16-mixed", "16", "bf16-true", "16-true", "64-true", "64")
"""Lightning's precision strings that qat_lab runs ('auto' is ours: bf16-mixed on GPU, 32-true on CPU).
tests/test_config.py keeps them a subset of Lightning's own list."""


@dataclass
class TrainerConfig:
    """How long and where to train; what to measure along the way; when a run has diverged."""

    steps: int = 150
    """Optimiser steps (the run length T that the LR schedule spans)."""
    tokens_per_param: float | None = None
    """If set, steps = ceil(tokens_per_param x non-embedding params / tokens per step) (e.g. 20 = Chinchilla)."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """Lightning accelerator: 'auto' (GPU if present), 'cpu', 'gpu'/'cuda', 'mps'."""
    devices: Any = 1
    """Lightning devices: a positive int, 'auto', -1 (all) or a list of device indices; more than one trains data-parallel (DDP)."""
    strategy: Literal["auto", "ddp"] = "auto"
    """Lightning strategy: 'auto', or 'ddp' (one process per device)."""
    precision: str = "auto"
    """'auto' = bf16-mixed on GPU, 32-true on CPU; or one of PRECISIONS."""
    threads: int | None = None
    """torch CPU threads; None leaves PyTorch's default (one per core)."""
    val_every: int = 50
    """Run a quick validation (val_batches batches) every this many steps; 0 disables."""
    val_batches: int = 4
    """Batches in each quick validation (the final evaluation uses data.val_tokens)."""
    grid_every: int = 50
    """Measure the weight-to-grid distance every this many steps (also pre-warmdown and at the end)."""
    curve_every: int = 10
    """The low-noise loss curve (`curve_loss`): the loss on a fixed held-out batch every this many
    steps, at the first warmdown step and after the last one; 0 disables. What the schedule laws
    are fitted on (docs/prediction.md)."""
    curve_batches: int = 1
    """Held-out batches in each curve point (the same ones every time: only the model changes)."""
    max_loss: float | None = None
    """A train loss above this at any step marks the run diverged at once; None = no fixed cap (the
    data-defined rules of docs/reliability.md still apply)."""
    divergence_grace: int | None = None
    """Steps before a train loss above ln(vocab) (worse than uniform) counts as divergence; None =
    10% of the run, at least 20 steps."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = never); a requeued job resumes from it."""
    grad_clip: float | None = None
    """Clip gradients at this value (their global norm, or each element: grad_clip_algorithm); None = no clipping."""
    grad_clip_algorithm: Literal["norm", "value"] = "norm"
    """'norm': scale the gradient to global L2 norm <= grad_clip; 'value': clamp each element to +-grad_clip."""
    accumulate_grad_batches: int = 1
    """Split each batch into this many micro-batches, one backward each (same update, less memory;
    data.batch_size must be a multiple). Not for the natural-gradient optimisers."""
    deterministic: bool = False
    """Lightning's deterministic mode (torch.use_deterministic_algorithms): slower, bitwise repeatable."""
    profiler: Literal["simple", "advanced", "pytorch"] | None = None
    """A Lightning profiler for the fit (its report goes to the job dir); None = off."""
    progress: bool = False
    """Show Lightning's progress bar (on a terminal; the progress lines below go to the log either way)."""
    log_every: int | None = None
    """A progress line (step, loss, tok/s, elapsed, ETA) every this many steps; None = a tenth of
    the run; 0 = none (`qatlab -q` also turns them off)."""
    compile: bool = False
    """torch.compile the model (nn.Module.compile: same parameters and state_dict). Pays on GPUs for
    long runs; on CPU and for short runs the compile time usually costs more than it saves."""

    def __post_init__(self) -> None:
        v.check_choices(self, "trainer")
        v.choice("trainer.precision", self.precision, PRECISIONS)
        self.steps = v.integer("trainer.steps", self.steps, 1)
        if self.tokens_per_param is not None:
            v.positive("trainer.tokens_per_param", self.tokens_per_param)
        self.devices = check_devices(self.devices)
        for key in ("val_every", "grid_every", "val_batches", "checkpoint_every", "curve_every", "curve_batches"):
            setattr(self, key, v.integer(f"trainer.{key}", getattr(self, key), 0))
        if self.max_loss is not None:
            v.positive("trainer.max_loss", self.max_loss)
        if self.log_every is not None:
            self.log_every = v.integer("trainer.log_every", self.log_every, 0)
        if self.divergence_grace is not None:
            self.divergence_grace = v.integer("trainer.divergence_grace", self.divergence_grace, 0)
        if self.grad_clip is not None:
            v.positive("trainer.grad_clip", self.grad_clip)
        self.accumulate_grad_batches = v.integer("trainer.accumulate_grad_batches", self.accumulate_grad_batches, 1)
        v.boolean("trainer.deterministic", self.deterministic)
        if self.threads is not None:
            self.threads = v.integer("trainer.threads", self.threads, 1)
        v.boolean("trainer.progress", self.progress)
        v.boolean("trainer.compile", self.compile)

    @property
    def multi_device(self) -> bool:
        d = self.devices
        return d == "auto" or d == -1 or (isinstance(d, list) and len(d) > 1) or (isinstance(d, int) and d > 1)

    def grace_steps(self) -> int:
        """The divergence grace period in steps (see divergence_grace)."""
        if self.log_every is not None:
            self.log_every = v.integer("trainer.log_every", self.log_every, 0)
        if self.divergence_grace is not None:
            return self.divergence_grace
        return max(20, round(0.1 * self.steps))


def check_devices(devices: Any) -> Any:
    """trainer.devices: a positive int, 'auto', -1 (every device) or a non-empty list of indices."""
    if devices in ("auto", -1):
        return devices
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        items = list(devices)
        if items and all(v.is_number(i) and float(i).is_integer() and i >= 0 for i in items):
            return [int(i) for i in items]
    elif v.is_number(devices) and float(devices).is_integer() and devices >= 1:
        return int(devices)
    raise ConfigError(f"trainer.devices={devices} must be a positive integer, auto, -1 (all) or a list of device "
                      "indices")


@dataclass
class LoggerConfig:
    """Where metrics go besides the run record and metrics.csv (always written)."""

    backend: Literal["wandb", "tensorboard", "none"] = "wandb"
    """'wandb' (Lightning's WandbLogger), 'tensorboard' (Lightning's TensorBoardLogger) or 'none'."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode: 'offline' (default: no account, no network; `wandb sync` later), 'online' or 'disabled'.
    WANDB_MODE=disabled in the environment wins over this."""
    project: str = "qat_lab"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); None = your default."""
    tags: list[str] = field(default_factory=list)
    """Extra W&B tags."""

    def __post_init__(self) -> None:
        v.check_choices(self, "logger")
        self.tags = [str(t) for t in self.tags]


@dataclass
class RunSpec:
    """Everything one training job needs, validated."""

    model: GPTConfig
    quant: QuantConfig
    ptq: PTQConfig
    optim: Any
    schedule: ScheduleConfig
    data: DataConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    warmdown: float
    lr_mult: float
    seed: int

    @property
    def schedule_name(self) -> str:
        """The schedule axis: 'wsd-linear', 'wsd-cosine', 'wsd-sqrt', 'cosine' or 'constant'."""
        s = self.schedule
        return f"wsd-{s.decay_shape}" if s.kind == "wsd" else s.kind

    @property
    def data_name(self) -> str:
        """The data axis, a readable label: the corpus, with the file/folder name for user data
        ('text:notes.txt'). Runs are identified by the corpus fingerprint (records.identity), never
        by this label."""
        from pathlib import Path

        c = self.data.corpus
        return c if c in ("shakespeare", "python_stdlib") else f"{c}:{Path(self.data.path).name}"

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer axis: 'bytes', or e.g. 'bpe1024' (runs with different vocabularies never pair)."""
        t = self.data.tokenizer
        return t if t == "bytes" or self.data.vocab_size is None else f"{t}{self.data.vocab_size}"

    def axes(self) -> dict[str, Any]:
        """The flat, named sweep axes written to the run record and the top of the W&B config."""
        return {
            "bits": self.quant.bits, "warmdown": self.warmdown, "lr_mult": self.lr_mult,
            "model": self.model.name, "optim": self.optim.name, "schedule": self.schedule_name,
            "seed": self.seed, "steps": self.trainer.steps, "data": self.data_name, "tokenizer": self.tokenizer_name,
            "seq_len": self.data.seq_len, "batch_size": self.data.batch_size, "qat_start": self.quant.start_label,
        }


VOCAB_FOR_BUDGET = 256
"""Non-embedding counts do not depend on the vocabulary; any vocab gives the same budget."""

GROUPS = ("model", "quant", "ptq", "optim", "schedule", "data", "trainer", "logger")
TOP_LEVEL = ("bits", "warmdown", "lr_mult", "seed", "path", *GROUPS)
"""Every top-level key of conf/config.yaml: anything else (`+warmdwn=0.1`) is a typo."""


def _check_top_level(cfg: DictConfig) -> None:
    unknown = sorted(k for k in cfg.keys() if k not in TOP_LEVEL and k != "hydra")
    if unknown:
        key = str(unknown[0])
        near = difflib.get_close_matches(key, TOP_LEVEL, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key} is not a qatlab setting{hint}; top-level keys: {', '.join(TOP_LEVEL)}")


def _mirror(cfg: DictConfig, top: str, inner: str, value: Any) -> None:
    """A group reads a top-level axis through interpolation; overriding the group's copy directly
    would record one value and train with another, so it must agree."""
    top_value = cfg.get(top)
    if v.is_number(top_value) and v.is_number(value) and float(top_value) != float(value):
        raise ConfigError(f"{inner}={value} differs from {top}={top_value}: set the top-level {top} instead")


AXIS_CHECKS = {
    "bits": validate_bits,
    "warmdown": validate_warmdown,
    "lr_mult": lambda value: v.positive("lr_mult", value),
    "seed": lambda value: v.integer("seed", value, 0),
}
"""The validator of each top-level sweep axis: build_spec and the groups use these, and the CLI
checks a command line's axis values with them before composing anything (a typo answers fast)."""


def build_spec(cfg: DictConfig) -> RunSpec:
    """Validate a composed config and return the typed RunSpec (raises ConfigError/DataError)."""
    _check_top_level(cfg)
    lr_mult = AXIS_CHECKS["lr_mult"](cfg.get("lr_mult"))
    seed = AXIS_CHECKS["seed"](cfg.get("seed"))
    built = {}
    for name in GROUPS:
        values = OmegaConf.to_container(cfg[name], resolve=True)
        built[name] = v.build_dataclass(values, name)
    _mirror(cfg, "bits", "quant.bits", built["quant"].bits)
    _mirror(cfg, "warmdown", "schedule.warmdown", built["schedule"].warmdown)
    spec = RunSpec(**built, warmdown=float(built["schedule"].warmdown), lr_mult=lr_mult, seed=seed)
    accumulate = spec.trainer.accumulate_grad_batches
    if accumulate > 1 and spec.data.batch_size % accumulate:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate} does not divide data.batch_size="
                          f"{spec.data.batch_size}")
    if accumulate > 1 and spec.optim.name in ("ief", "ef", "sf"):
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate}: optim={spec.optim.name} takes one natural-"
                          "gradient step from the whole batch's per-sample gradients (bound its memory with "
                          "optim.chunk_size or optim.jacobian=recompute instead)")
    spec.quant.check_widths({f"{n} ({o}x{i})": i for n, (o, i) in spec.model.block_matrices().items()}
                            | ({"embedding": spec.model.d_model} if spec.quant.quantise_embedding else {}))
    if spec.trainer.tokens_per_param is not None:
        # A token budget proportional to model size: the run length follows the model preset.
        n = spec.model.parameter_counts(VOCAB_FOR_BUDGET)["non_embedding"]
        per_step = spec.data.batch_size * spec.data.seq_len
        spec.trainer.steps = max(1, math.ceil(spec.trainer.tokens_per_param * n / per_step))
    return spec
