"""Optimiser configurations (the `optim` config group), validated on construction.

Every bad value raises ConfigError with one line naming the override that fixes it, e.g.
"optim.matrix_lr=-1 must be positive". Learning rates here are *base* LRs before the `lr_mult`
sweep axis and the schedule multiplier (see qat_lab.optim.build).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from qat_lab.errors import ConfigError

ADJUST_LR_FNS = ("original", "match_rms_adamw")
"""torch.optim.Muon's update-scale rules: Keller Jordan's sqrt(max(1, A/B)), or Moonshot's 0.2*sqrt(max(A, B))."""
NS_DTYPES = ("auto", "bfloat16", "float32")
"""Muon's Newton-Schulz precision (qat_lab.optim.muon): 'auto' = bfloat16 on accelerators, float32 on CPU."""


# --- small validators: each names the key as the user would override it -------------------------

def _number(key: str, value: Any) -> float:
    # bool is an int in Python; "true" as a learning rate is a typo, not 1.0.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigError(f"optim.{key}={value} must be a finite number")
    return float(value)


def check_positive(key: str, value: Any) -> None:
    if _number(key, value) <= 0:
        raise ConfigError(f"optim.{key}={value} must be positive")


def check_non_negative(key: str, value: Any) -> None:
    if _number(key, value) < 0:
        raise ConfigError(f"optim.{key}={value} must be non-negative")


def check_unit_interval(key: str, value: Any) -> None:
    """In [0, 1): momenta and Adam betas (1 would never forget, >1 diverges)."""
    if not 0.0 <= _number(key, value) < 1.0:
        raise ConfigError(f"optim.{key}={value} must be in [0, 1)")


def check_int(key: str, value: Any, low: int, high: int | None = None) -> None:
    ok = not isinstance(value, bool) and isinstance(value, int) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"optim.{key}={value} must be an integer {bound}")


def check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"optim.{key}={value} must be true or false")


def check_betas(key: str, value: Any) -> tuple[float, float]:
    """Two floats in [0, 1); YAML gives a list, torch wants a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"optim.{key}={value} must be a pair [beta1, beta2]")
    for i, b in enumerate(value):
        if isinstance(b, bool) or not isinstance(b, Real) or not 0.0 <= b < 1.0:
            raise ConfigError(f"optim.{key}={list(value)} must be a pair of numbers in [0, 1) (beta{i + 1}={b})")
    return (float(value[0]), float(value[1]))


def check_name(cfg: Any, expected: str) -> None:
    if cfg.name != expected:
        raise ConfigError(f"optim.name={cfg.name} does not match the {type(cfg).__name__} config (expected {expected})")


# --- configs --------------------------------------------------------------------------------------

@dataclass
class MuonConfig:
    """Muon on the hidden matrices + AdamW on everything else (the default; METHOD section 5)."""

    name: str = "muon"
    """Optimiser name, recorded as the `optimiser` sweep axis."""
    matrix_lr: float = 0.02
    """Muon LR for the 2-D hidden matrices inside blocks (reference range 0.02-0.05)."""
    embed_lr: float = 0.05
    """AdamW LR for the embedding, and for the head when it is tied to the embedding."""
    head_lr: float = 0.008
    """AdamW LR for an untied head (readout matrices want a much smaller LR than lookups)."""
    scalar_lr: float = 0.04
    """AdamW LR for norm gains, biases and other tensors with ndim < 2."""
    momentum: float = 0.95
    """Muon momentum (after warmup)."""
    momentum_warmup_start: float = 0.85
    """Muon momentum at step 0 when warming up; rises linearly to `momentum`."""
    momentum_warmup_steps: int = 0
    """Steps of linear momentum warmup; 0 disables it (momentum is `momentum` from step 0)."""
    nesterov: bool = True
    """Nesterov-style momentum in Muon."""
    ns_steps: int = 5
    """Newton-Schulz iterations used to orthogonalise the update."""
    ns_dtype: str = "auto"
    """Newton-Schulz precision: 'auto' (bfloat16 on GPU as torch does, float32 on CPU, where bfloat16 is emulated and ~40x slower), 'bfloat16' or 'float32'."""
    weight_decay: float = 0.0
    """Muon decoupled weight decay on the matrices; set here because torch's Muon default is 0.1."""
    adjust_lr_fn: str = "original"
    """Update scaling in torch.optim.Muon: 'original' (sqrt(max(1, A/B))) or 'match_rms_adamw'."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas for the non-matrix groups (a YAML list is accepted)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    adam_weight_decay: float = 0.0
    """AdamW weight decay on embedding and head; 1-D tensors are never decayed."""

    def __post_init__(self) -> None:
        check_name(self, "muon")
        for key in ("matrix_lr", "embed_lr", "head_lr", "scalar_lr", "adam_eps"):
            check_positive(key, getattr(self, key))
        check_unit_interval("momentum", self.momentum)
        check_unit_interval("momentum_warmup_start", self.momentum_warmup_start)
        check_int("momentum_warmup_steps", self.momentum_warmup_steps, 0)
        check_bool("nesterov", self.nesterov)
        # torch's Newton-Schulz refuses >= 100 steps; 0 would skip orthogonalisation entirely.
        check_int("ns_steps", self.ns_steps, 1, 99)
        check_non_negative("weight_decay", self.weight_decay)
        check_non_negative("adam_weight_decay", self.adam_weight_decay)
        if self.adjust_lr_fn not in ADJUST_LR_FNS:
            raise ConfigError(f"optim.adjust_lr_fn={self.adjust_lr_fn} is not one of {', '.join(ADJUST_LR_FNS)}")
        if self.ns_dtype not in NS_DTYPES:
            raise ConfigError(f"optim.ns_dtype={self.ns_dtype} is not one of {', '.join(NS_DTYPES)}")
        self.adam_betas = check_betas("adam_betas", self.adam_betas)


@dataclass
class AdamWConfig:
    """Plain AdamW on every parameter (the Phase-5 alternative; METHOD section 5).

    Weight decay applies to the hidden matrices only: decaying the embedding/head pulls rarely
    seen tokens' rows to zero, and decaying norm gains fights the normalisation. The head, tied
    or untied, is treated like the embedding, so tying changes no hyperparameter. The
    separate embed/scalar LRs follow `lr` unless set, so the default is textbook single-LR AdamW;
    they exist so that a sweep can tune them without code changes.
    """

    name: str = "adamw"
    """Optimiser name, recorded as the `optimiser` sweep axis."""
    lr: float = 3e-3
    """LR for the 2-D hidden matrices inside blocks."""
    embed_lr: float | None = None
    """LR for the embedding and the head (tied or untied); None (default) means `lr`."""
    scalar_lr: float | None = None
    """LR for norm gains, biases and other tensors with ndim < 2; None (default) means `lr`."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam betas (a YAML list is accepted); beta2 0.95 as in the Muon lineage's AdamW groups."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay on the hidden matrices only; always 0 on embedding, head and 1-D tensors."""

    def __post_init__(self) -> None:
        check_name(self, "adamw")
        # Resolve the "same as lr" defaults first, so overriding optim.lr alone moves every group
        # and the run record holds the LRs actually used.
        check_positive("lr", self.lr)
        self.embed_lr = self.lr if self.embed_lr is None else self.embed_lr
        self.scalar_lr = self.lr if self.scalar_lr is None else self.scalar_lr
        for key in ("lr", "embed_lr", "scalar_lr", "eps"):
            check_positive(key, getattr(self, key))
        check_non_negative("weight_decay", self.weight_decay)
        self.betas = check_betas("betas", self.betas)


NATURAL_GRADIENT_MODES = ("ief", "ef", "sf")
"""The natural-gradient family (qat_lab.optim.ief): improved EF, empirical Fisher, sampled Fisher."""
DAMPING_REFS = ("mean", "max")
JACOBIAN_MODES = ("store", "recompute")
PER_SAMPLE_LOSSES = ("sum", "mean")
IEF_DEFAULT_LR = {"ief": 0.3, "ef": 1.0, "sf": 0.3}
"""Default base LR per mode (docs/ief.md, "Defaults"): iEF's exact step, EF/SF's normalised step length."""


@dataclass
class IEFConfig:
    """iEF / EF / SF natural-gradient descent on every trainable parameter (METHOD section 5;
    Wu, Yu, Zhang, Woodland, NeurIPS 2024). See qat_lab.optim.ief and docs/ief.md.

    With J the N x P per-sample gradient matrix of the batch (a sample is a sequence) and
    G = J J^T, one step is theta <- theta - lr * dtheta with
        iEF: dtheta = J^T (G + lambda I)^-1 s,   s_n = sum_t ||softmax(z_t) - onehot(y_t)||^2
        EF:  dtheta = J^T (G + lambda I)^-1 1
        SF:  dtheta = (F_s + lambda I)^-1 g,     F_s from labels sampled from the model, g = J^T 1
    lambda = damping_rel * (mean or max of diag G). The exact method has no momentum and no
    weight decay, so this config has neither. `lr` is a base LR like any other: lr_mult and the
    schedule scale it, so warmdown sweeps work unchanged. trainer.grad_clip does not apply (there
    is no gradient to clip); `clip_norm` caps the step instead.
    """

    name: str = "ief"
    """'ief', 'ef' or 'sf' (recorded as the `optim` sweep axis)."""
    lr: float | None = None
    """Base LR (before lr_mult and the schedule); None = the mode's default in IEF_DEFAULT_LR."""
    damping_rel: float = 1e-3
    """Damping lambda relative to the Gram scale: lambda = damping_rel * ref(diag(J J^T))."""
    damping_ref: str = "mean"
    """Gram scale that damping_rel multiplies: 'mean' or 'max' of diag(J J^T) (per-sample ||grad||^2)."""
    per_sample_loss: str = "sum"
    """l_n is the 'sum' (METHOD) or the 'mean' of the sequence's token losses; 'mean' divides iEF's step by seq_len."""
    normalize_update: bool | None = None
    """Rescale dtheta to unit L2 norm, so lr is the step length; None = the paper: false for iEF, true for EF/SF."""
    clip_norm: float | None = None
    """Cap on the step length ||lr * dtheta|| (all parameters together); None = no cap (the exact method)."""
    sf_samples: int = 1
    """SF only: labels sampled per token from the model's predictive distribution (Monte Carlo samples)."""
    chunk_size: int | None = None
    """Sequences per torch.func.vmap call (bounds activation memory); None = the largest that fits memory_budget_mb."""
    jacobian: str = "store"
    """'store': keep J (N x P) for the Gram and J^T w; 'recompute': hold two chunks, recompute chunk pairs."""
    memory_budget_mb: float = 4096.0
    """A step whose estimated memory (docs/ief.md) exceeds this fails before training with a ConfigError."""

    def __post_init__(self) -> None:
        if self.name not in NATURAL_GRADIENT_MODES:
            raise ConfigError(f"optim.name={self.name} does not match the IEFConfig config "
                              f"(expected one of {', '.join(NATURAL_GRADIENT_MODES)})")
        self.lr = IEF_DEFAULT_LR[self.name] if self.lr is None else self.lr
        check_positive("lr", self.lr)
        check_positive("damping_rel", self.damping_rel)
        for key, allowed in (("damping_ref", DAMPING_REFS), ("jacobian", JACOBIAN_MODES),
                             ("per_sample_loss", PER_SAMPLE_LOSSES)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"optim.{key}={getattr(self, key)} is not one of {', '.join(allowed)}")
        if self.normalize_update is None:
            self.normalize_update = self.name != "ief"
        check_bool("normalize_update", self.normalize_update)
        if self.clip_norm is not None:
            check_positive("clip_norm", self.clip_norm)
        check_int("sf_samples", self.sf_samples, 1)
        if self.chunk_size is not None:
            check_int("chunk_size", self.chunk_size, 1)
        check_positive("memory_budget_mb", self.memory_budget_mb)


# --- registry of config classes, keyed by `optim.name` --------------------------------------------
CONFIGS: dict[str, type] = {"muon": MuonConfig, "adamw": AdamWConfig,
                            **{mode: IEFConfig for mode in NATURAL_GRADIENT_MODES}}
"""optim.name -> config dataclass."""


def optim_config(values: dict[str, Any]) -> MuonConfig | AdamWConfig | IEFConfig:
    """Build the config named by values["name"] (default "muon") from a plain dict (e.g. Hydra's).

    Unknown names and keys become one-line ConfigErrors instead of a TypeError from the dataclass.
    """
    values = dict(values)
    name = values.setdefault("name", "muon")
    if name not in CONFIGS:
        raise ConfigError(f"optim.name={name} is not one of {', '.join(sorted(CONFIGS))}")
    cls = CONFIGS[name]
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"optim.{unknown[0]} is not a key of the {name} optimiser (keys: {', '.join(sorted(known))})")
    return cls(**values)
