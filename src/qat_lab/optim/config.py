"""Optimiser configurations (the `optim` config group), validated on construction.

Every bad value raises ConfigError with one line naming the override that fixes it, e.g.
"optim.matrix_lr=-1 must be positive". Learning rates here are *base* LRs before the `lr_mult`
sweep axis and the schedule multiplier (see qat_lab.optim.build).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from qat_lab import validation as v
from qat_lab.errors import ConfigError

NsDtype = Literal["auto", "bfloat16", "float32"]
"""Muon's Newton-Schulz precision (qat_lab.optim.muon): 'auto' = bfloat16 on accelerators, float32 on CPU."""
NS_DTYPES = get_args(NsDtype)


def check_betas(key: str, value: Any) -> tuple[float, float]:
    """Two numbers in [0, 1); YAML gives a list, torch wants a tuple."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"{key}={value} must be a pair [beta1, beta2]")
    for i, b in enumerate(value):
        if not v.is_number(b) or not 0.0 <= b < 1.0:
            raise ConfigError(f"{key}={list(value)} must be a pair of numbers in [0, 1) (beta{i + 1}={b})")
    return (float(value[0]), float(value[1]))




# --- configs --------------------------------------------------------------------------------------

@dataclass
class MuonConfig:
    """Muon on the hidden matrices + AdamW on everything else (the default; METHOD section 5)."""

    name: Literal["muon"] = "muon"
    """Optimiser name, recorded as the `optim` sweep axis."""
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
    ns_dtype: NsDtype = "auto"
    """Newton-Schulz precision: 'auto' (bfloat16 on GPU as torch does, float32 on CPU, where bfloat16 is emulated and ~40x slower), 'bfloat16' or 'float32'."""
    weight_decay: float = 0.0
    """Muon decoupled weight decay on the matrices; set here because torch's Muon default is 0.1."""
    adjust_lr_fn: Literal["original", "match_rms_adamw"] = "original"
    """Update scaling in torch.optim.Muon: 'original' (Keller Jordan's sqrt(max(1, A/B))) or
    'match_rms_adamw' (Moonshot's 0.2 sqrt(max(A, B)))."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas for the non-matrix groups (a YAML list is accepted)."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    adam_weight_decay: float = 0.0
    """AdamW weight decay on embedding and head; 1-D tensors are never decayed."""

    def __post_init__(self) -> None:
        v.check_choices(self, "optim")
        for key in ("matrix_lr", "embed_lr", "head_lr", "scalar_lr", "adam_eps"):
            v.positive(f"optim.{key}", getattr(self, key))
        # Momenta in [0, 1): 1 would never forget, above 1 diverges.
        v.in_range("optim.momentum", self.momentum, 0.0, 1.0, high_open=True)
        v.in_range("optim.momentum_warmup_start", self.momentum_warmup_start, 0.0, 1.0, high_open=True)
        self.momentum_warmup_steps = v.integer("optim.momentum_warmup_steps", self.momentum_warmup_steps, 0)
        v.boolean("optim.nesterov", self.nesterov)
        # torch's Newton-Schulz refuses >= 100 steps; 0 would skip orthogonalisation entirely.
        self.ns_steps = v.integer("optim.ns_steps", self.ns_steps, 1, 99)
        v.non_negative("optim.weight_decay", self.weight_decay)
        v.non_negative("optim.adam_weight_decay", self.adam_weight_decay)
        self.adam_betas = check_betas("optim.adam_betas", self.adam_betas)


@dataclass
class AdamWConfig:
    """Plain AdamW on every parameter (the Phase-5 alternative; METHOD section 5).

    Weight decay applies to the hidden matrices only: decaying the embedding/head pulls rarely
    seen tokens' rows to zero, and decaying norm gains fights the normalisation. The head, tied
    or untied, is treated like the embedding, so tying changes no hyperparameter. The
    separate embed/scalar LRs follow `lr` unless set, so the default is textbook single-LR AdamW;
    they exist so that a sweep can tune them without code changes.
    """

    name: Literal["adamw"] = "adamw"
    """Optimiser name, recorded as the `optim` sweep axis."""
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
        v.check_choices(self, "optim")
        # Resolve the "same as lr" defaults first, so overriding optim.lr alone moves every group
        # and the run record holds the LRs actually used.
        v.positive("optim.lr", self.lr)
        self.embed_lr = self.lr if self.embed_lr is None else self.embed_lr
        self.scalar_lr = self.lr if self.scalar_lr is None else self.scalar_lr
        for key in ("embed_lr", "scalar_lr", "eps"):
            v.positive(f"optim.{key}", getattr(self, key))
        v.non_negative("optim.weight_decay", self.weight_decay)
        self.betas = check_betas("optim.betas", self.betas)


NaturalGradientMode = Literal["ief", "ef", "sf"]
"""The natural-gradient family (qat_lab.optim.ief): improved EF, empirical Fisher, sampled Fisher."""
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

    name: NaturalGradientMode = "ief"
    """'ief', 'ef' or 'sf' (recorded as the `optim` sweep axis)."""
    lr: float | None = None
    """Base LR (before lr_mult and the schedule); None = the mode's default in IEF_DEFAULT_LR."""
    damping_rel: float = 1e-3
    """Damping lambda relative to the Gram scale: lambda = damping_rel * ref(diag(J J^T))."""
    damping_ref: Literal["mean", "max"] = "mean"
    """Gram scale that damping_rel multiplies: 'mean' or 'max' of diag(J J^T) (per-sample ||grad||^2)."""
    per_sample_loss: Literal["sum", "mean"] = "sum"
    """l_n is the 'sum' (METHOD) or the 'mean' of the sequence's token losses; 'mean' divides iEF's step by seq_len."""
    normalise_update: bool | None = None
    """Rescale dtheta to unit L2 norm, so lr is the step length; None = the paper: false for iEF, true for EF/SF."""
    clip_norm: float | None = None
    """Cap on the step length ||lr * dtheta|| (all parameters together); None = no cap (the exact method)."""
    sf_samples: int = 1
    """SF only: labels sampled per token from the model's predictive distribution (Monte Carlo samples)."""
    chunk_size: int | None = None
    """Sequences per torch.func.vmap call (bounds activation memory); None = the largest that fits memory_budget_mb."""
    jacobian: Literal["store", "recompute"] = "store"
    """'store': keep J (N x P) for the Gram and J^T w; 'recompute': hold two chunks, recompute chunk pairs."""
    memory_budget_mb: float = 4096.0
    """A step whose estimated memory (docs/ief.md) exceeds this fails before training with a ConfigError."""

    def __post_init__(self) -> None:
        v.check_choices(self, "optim")
        self.lr = IEF_DEFAULT_LR[self.name] if self.lr is None else self.lr
        v.positive("optim.lr", self.lr)
        v.positive("optim.damping_rel", self.damping_rel)
        if self.normalise_update is None:
            self.normalise_update = self.name != "ief"
        v.boolean("optim.normalise_update", self.normalise_update)
        if self.clip_norm is not None:
            v.positive("optim.clip_norm", self.clip_norm)
        self.sf_samples = v.integer("optim.sf_samples", self.sf_samples, 1)
        if self.chunk_size is not None:
            self.chunk_size = v.integer("optim.chunk_size", self.chunk_size, 1)
        v.positive("optim.memory_budget_mb", self.memory_budget_mb)
