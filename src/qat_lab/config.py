"""Typed run configuration: Hydra's composed DictConfig -> validated dataclasses.

Each config group names a dataclass in its `_target_` (model -> GPTConfig, quant -> QuantConfig,
...). `build_spec` builds every one of them and checks the top-level sweep axes, so a bad value is
reported as one line (`bits=3.5 is not valid: ...`) before any data is read or any model built.
The dataclasses that belong to one subsystem live beside its code; the three that only describe
how a run is driven (data, trainer, logger) live here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from qat_lab.errors import ConfigError, DataError
from qat_lab.models.gpt import GPTConfig, count_parameters_for
from qat_lab.quant.fake_quant import QuantConfig, validate_bits
from qat_lab.schedules import ScheduleConfig


CORPORA = ("shakespeare", "python_stdlib", "text", "hf", "shards")
TOKENIZERS = ("bytes", "bpe", "file", "none")
DEFAULT_BPE_VOCAB = 1024


@dataclass
class DataConfig:
    """Which text to train on and how it is cut into batches (docs/data.md)."""

    corpus: str = "shakespeare"
    """'shakespeare' (embedded, ~5 MB of plays), 'python_stdlib' (~13 MB of .py files), 'text', 'hf' or 'shards'."""
    path: str | None = None
    """For corpus='text'/'hf': a file, or a folder searched with `glob`; for 'shards': the shard folder."""
    glob: str = "**/*.txt"
    """Files taken from a `path` folder (sorted by path, so the order is reproducible)."""
    tokenizer: str = "bytes"
    """'bytes' (vocab 256), 'bpe' (byte-level BPE trained on the train split), 'file' (`tokenizer_file`) or 'none' (shards only; no bpb)."""
    vocab_size: int | None = None
    """Model vocabulary: the BPE size to train (default 1024); else None = the tokenizer's, or larger to pad; required for 'none'."""
    tokenizer_file: str | None = None
    """For tokenizer='file': a `tokenizers` JSON; for corpus='shards' it defaults to <path>/tokenizer.json."""
    tokenizer_train_bytes: int = 100_000_000
    """A BPE is trained on at most this many bytes from the start of the train split."""
    train_glob: str = "*_train_*.bin"
    """For corpus='shards': the train shards under `path` (sorted; modded-nanogpt / parameter-golf names)."""
    val_glob: str = "*_val_*.bin"
    """For corpus='shards': the val shards under `path` (sorted)."""
    hf_format: str | None = None
    """For corpus='hf': the `datasets` builder 'text', 'json' or 'parquet'; None = from the file suffixes."""
    text_field: str = "text"
    """For corpus='hf' with json/parquet rows: the column holding the text."""
    cache_dir: str | None = None
    """Where trained tokenizers and tokenised corpora are cached; None = $QAT_LAB_CACHE or ~/.cache/qat_lab."""
    seq_len: int = 128
    """Tokens per training sequence (the model sees seq_len tokens, predicts the next one each)."""
    batch_size: int = 32
    """Sequences per optimiser step."""
    val_fraction: float = 0.05
    """The last fraction of the token stream is held out for validation (deterministic split; not for shards)."""
    val_tokens: int = 32768
    """Validation tokens used for the final evaluation (fixed, contiguous windows)."""

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ConfigError(f"data.corpus={self.corpus} is not one of {', '.join(CORPORA)}")
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"data.tokenizer={self.tokenizer} is not supported: use one of {', '.join(TOKENIZERS)}")
        if self.corpus in ("text", "hf", "shards"):
            name = "data=" + self.corpus
            if not self.path:
                raise ConfigError(f"{name} needs path=<{'shard folder' if self.corpus == 'shards' else 'file or folder'}>"
                                  + (" (e.g. qatlab data=text path=notes.txt)" if self.corpus == "text" else ""))
            if not Path(self.path).expanduser().exists():
                raise DataError(f"path={self.path} does not exist")
            if self.corpus == "shards" and not Path(self.path).expanduser().is_dir():
                raise DataError(f"path={self.path} is not a folder of token shards")
        for key in ("seq_len", "batch_size", "val_tokens", "tokenizer_train_bytes"):
            if int(getattr(self, key)) != getattr(self, key) or getattr(self, key) <= 0:
                raise ConfigError(f"data.{key}={getattr(self, key)} must be a positive integer")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        v = self.vocab_size
        if v is not None and (isinstance(v, bool) or int(v) != v or v <= 0):
            raise ConfigError(f"data.vocab_size={v} must be a positive integer or null")
        if self.tokenizer == "bpe":
            if self.corpus == "shards":
                raise ConfigError("data.tokenizer=bpe trains on text, but shards are already tokenised: use "
                                  "data.tokenizer=file (their tokenizer.json), bytes, or none with data.vocab_size")
            self.vocab_size = DEFAULT_BPE_VOCAB if v is None else v
            if not 257 <= self.vocab_size <= 65536:
                raise ConfigError(f"data.vocab_size={self.vocab_size} must be in [257, 65536] for a byte-level BPE")
        elif self.tokenizer == "bytes" and v is not None and v < 256:
            raise ConfigError(f"data.vocab_size={v} is smaller than the byte tokenizer's 256")
        elif self.tokenizer == "none":
            if self.corpus != "shards":
                raise ConfigError("data.tokenizer=none is only for data=shards (token ids without a tokenizer)")
            if v is None:
                raise ConfigError("data.tokenizer=none needs data.vocab_size=<N> (the shards' vocabulary)")
        elif self.tokenizer == "file":
            if not self.tokenizer_file and self.corpus != "shards":
                raise ConfigError("data.tokenizer=file needs data.tokenizer_file=<tokenizer.json>")
            if self.tokenizer_file and not Path(self.tokenizer_file).expanduser().is_file():
                raise DataError(f"data.tokenizer_file={self.tokenizer_file} does not exist")
        if self.hf_format is not None and self.hf_format not in ("text", "json", "parquet"):
            raise ConfigError(f"data.hf_format={self.hf_format} is not one of text, json, parquet (or null)")


@dataclass
class TrainerConfig:
    """How long and where to train; what to measure along the way."""

    steps: int = 150
    """Optimiser steps (the run length T that the LR schedule spans)."""
    tokens_per_param: float | None = None
    """If set, steps = ceil(tokens_per_param x non-embedding params / tokens per step) (e.g. 20 = Chinchilla)."""
    accelerator: str = "auto"
    """Lightning accelerator: 'auto' (GPU if present), 'cpu', 'gpu'."""
    devices: Any = 1
    """Lightning devices (an int, or 'auto'); more than one trains data-parallel (DDP)."""
    strategy: str = "auto"
    """Lightning strategy: 'auto', 'ddp' (one process per device), ..."""
    precision: str = "auto"
    """'auto' = bf16-mixed on GPU, 32-true on CPU; or any Lightning precision string."""
    threads: int | None = None
    """torch CPU threads; None leaves PyTorch's default (one per core)."""
    val_every: int = 50
    """Run a quick validation (val_batches batches) every this many steps; 0 disables."""
    val_batches: int = 4
    """Batches in each quick validation (the final evaluation uses data.val_tokens)."""
    grid_every: int = 50
    """Measure the weight-to-grid distance every this many steps (also pre-warmdown and at the end)."""
    max_loss: float = 100.0
    """A train loss above this (or NaN/inf) marks the run diverged and stops it."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every this many steps (0 = never); a requeued job resumes from it."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None = no clipping."""
    progress: bool = False
    """Show Lightning's progress bar."""
    compile: bool = False
    """torch.compile the model (nn.Module.compile: same parameters and state_dict). Pays on GPUs for
    long runs; on CPU and for short runs the compile time usually costs more than it saves."""

    def __post_init__(self) -> None:
        if self.tokens_per_param is not None and not self.tokens_per_param > 0:
            raise ConfigError(f"trainer.tokens_per_param={self.tokens_per_param} must be positive or null")
        if int(self.steps) != self.steps or self.steps <= 0:
            raise ConfigError(f"trainer.steps={self.steps} must be a positive integer")
        for key in ("val_every", "grid_every", "val_batches", "checkpoint_every"):
            if int(getattr(self, key)) != getattr(self, key) or getattr(self, key) < 0:
                raise ConfigError(f"trainer.{key}={getattr(self, key)} must be a non-negative integer")
        if not self.max_loss > 0:
            raise ConfigError(f"trainer.max_loss={self.max_loss} must be positive")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"trainer.grad_clip={self.grad_clip} must be positive or null")
        if self.threads is not None and (int(self.threads) != self.threads or self.threads <= 0):
            raise ConfigError(f"trainer.threads={self.threads} must be a positive integer or null")


@dataclass
class LoggerConfig:
    """Where metrics go besides the run record and metrics.csv (always written)."""

    backend: str = "wandb"
    """'wandb' (Lightning's WandbLogger) or 'none'."""
    mode: str = "offline"
    """W&B mode: 'offline' (default: no account, no network; `wandb sync` later) or 'online'."""
    project: str = "qat_lab"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); None = your default."""
    tags: list[str] = field(default_factory=list)
    """Extra W&B tags."""

    def __post_init__(self) -> None:
        if self.backend not in ("wandb", "none"):
            raise ConfigError(f"logger.backend={self.backend} is not one of wandb, none")
        if self.mode not in ("offline", "online", "disabled"):
            raise ConfigError(f"logger.mode={self.mode} is not one of offline, online, disabled")
        self.tags = list(self.tags)


@dataclass
class RunSpec:
    """Everything one training job needs, validated."""

    model: GPTConfig
    quant: QuantConfig
    optim: Any
    schedule: ScheduleConfig
    data: DataConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    bits: int
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
        """The data axis: the corpus, with the file/folder name for user data ('text:notes.txt')."""
        c = self.data.corpus
        return c if c in ("shakespeare", "python_stdlib") else f"{c}:{Path(self.data.path).name}"

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer axis: 'bytes', or e.g. 'bpe1024' (runs with different vocabularies never pair)."""
        t = self.data.tokenizer
        return t if t == "bytes" or self.data.vocab_size is None else f"{t}{self.data.vocab_size}"

    def axes(self) -> dict[str, Any]:
        """The flat sweep axes written to the run record and the top of the W&B config."""
        return {
            "bits": self.bits, "warmdown": self.warmdown, "lr_mult": self.lr_mult,
            "model": self.model.name, "optim": self.optim.name, "schedule": self.schedule_name,
            "seed": self.seed, "steps": self.trainer.steps, "data": self.data_name, "tokenizer": self.tokenizer_name,
            "seq_len": self.data.seq_len, "batch_size": self.data.batch_size,
        }


VOCAB_FOR_BUDGET = 256
"""Non-embedding counts do not depend on the vocabulary; any vocab gives the same budget."""

GROUPS = ("model", "quant", "optim", "schedule", "data", "trainer", "logger")


def _build_group(name: str, node: DictConfig) -> Any:
    """Build the dataclass that a config group names in `_target_`; one-line errors."""
    values = OmegaConf.to_container(node, resolve=True)
    target = values.pop("_target_", None)
    if target is None:
        raise ConfigError(f"config group '{name}' has no _target_")
    cls = get_class(target)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]} is not an option of {cls.__name__} (known: {', '.join(sorted(known))})")
    try:
        return cls(**values)
    except (ConfigError, DataError):
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None


def _number(cfg: DictConfig, key: str) -> Any:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value} is not a number")
    return value


def build_spec(cfg: DictConfig) -> RunSpec:
    """Validate a composed config and return the typed RunSpec (raises ConfigError/DataError)."""
    bits = validate_bits(cfg.get("bits"))
    warmdown = cfg.get("warmdown")
    if isinstance(warmdown, bool) or not isinstance(warmdown, (int, float)) or not 0.0 <= warmdown <= 1.0:
        raise ConfigError(f"warmdown={warmdown} is not valid: use a fraction of the run in [0, 1]")
    lr_mult = _number(cfg, "lr_mult")
    if lr_mult <= 0:
        raise ConfigError(f"lr_mult={lr_mult} must be positive")
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed} must be a non-negative integer")
    built = {name: _build_group(name, cfg[name]) for name in GROUPS}
    spec = RunSpec(**built, bits=bits, warmdown=float(warmdown), lr_mult=float(lr_mult), seed=seed)
    if spec.trainer.tokens_per_param is not None:
        # A token budget proportional to model size: the run length follows the model preset.
        n = count_parameters_for(spec.model, VOCAB_FOR_BUDGET)["non_embedding"]
        per_step = spec.data.batch_size * spec.data.seq_len
        spec.trainer.steps = max(1, math.ceil(spec.trainer.tokens_per_param * n / per_step))
    return spec
