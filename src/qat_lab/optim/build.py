"""Build the optimisers of a run and set their per-step hyperparameters.

A run has one or more torch optimisers; every param group carries
- "group":   a readable name unique across the run ("muon/matrices", "adamw/embed", ...), which the
             training logs as `lr/<group>` every step;
- "base_lr": configured LR x lr_mult (the LR-magnitude sweep axis, METHOD section 4).
The schedule is a multiplier of base_lr, applied each step by apply_step_hparams, so the schedule
shape is identical across groups and lr_mult never reaches the schedule code.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.optim import Optimizer

from qat_lab.optim.config import AdamWConfig, IEFConfig, MuonConfig
from qat_lab.optim.ief import NaturalGradient
from qat_lab.optim.muon import Muon
from qat_lab.optim.routing import NamedParams, route_parameters

Builder = Callable[[nn.Module, Any, float], list[Optimizer]]


def _group(name: str, params: NamedParams, lr: float, lr_mult: float, **extra: Any) -> dict[str, Any]:
    base_lr = lr * lr_mult
    # Params are (name, tensor) pairs: torch keeps them as group["param_names"], handy in checkpoints.
    return {"params": params, "group": name, "base_lr": base_lr, "lr": base_lr, **extra}


def _non_empty(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A tied model has no head group, a model without blocks no matrices: drop, don't fail.
    return [g for g in groups if g["params"]]


def build_muon(model: nn.Module, cfg: MuonConfig, lr_mult: float) -> list[Optimizer]:
    """Muon (torch.optim.Muon's update, qat_lab.optim.muon) on the hidden matrices, AdamW on
    embedding, head and 1-D tensors."""
    routes = route_parameters(model)
    optimisers: list[Optimizer] = []

    warm = cfg.momentum_warmup_steps > 0
    muon_groups = _non_empty([
        _group(
            "muon/matrices", routes.matrices, cfg.matrix_lr, lr_mult,
            # Warmup state lives in the group so apply_step_hparams needs nothing but the optimiser
            # (and it survives a checkpoint round trip with the optimiser state).
            momentum=cfg.momentum_warmup_start if warm else cfg.momentum,
            momentum_target=cfg.momentum,
            momentum_warmup_start=cfg.momentum_warmup_start,
            momentum_warmup_steps=cfg.momentum_warmup_steps,
        ),
    ])
    if muon_groups:
        optimisers.append(Muon(
            muon_groups,
            lr=cfg.matrix_lr * lr_mult,
            weight_decay=cfg.weight_decay,  # explicit: torch's default 0.1 would silently decay
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            ns_steps=cfg.ns_steps,
            adjust_lr_fn=cfg.adjust_lr_fn,
            ns_dtype=cfg.ns_dtype,
        ))

    adam_groups = _non_empty([
        # The tied head is the embedding tensor, so it is trained at embed_lr in this group.
        _group("adamw/embed", routes.embed, cfg.embed_lr, lr_mult, weight_decay=cfg.adam_weight_decay),
        _group("adamw/head", routes.head, cfg.head_lr, lr_mult, weight_decay=cfg.adam_weight_decay),
        _group("adamw/scalars", routes.scalars, cfg.scalar_lr, lr_mult, weight_decay=0.0),
    ])
    if adam_groups:
        optimisers.append(torch.optim.AdamW(
            adam_groups, lr=cfg.embed_lr * lr_mult, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=False,
        ))
    return optimisers


def build_adamw(model: nn.Module, cfg: AdamWConfig, lr_mult: float) -> list[Optimizer]:
    """One AdamW over every parameter; weight decay on the hidden matrices only."""
    routes = route_parameters(model)
    groups = _non_empty([
        _group("adamw/matrices", routes.matrices, cfg.lr, lr_mult, weight_decay=cfg.weight_decay),
        _group("adamw/embed", routes.embed, cfg.embed_lr, lr_mult, weight_decay=0.0),
        _group("adamw/head", routes.head, cfg.embed_lr, lr_mult, weight_decay=0.0),
        _group("adamw/scalars", routes.scalars, cfg.scalar_lr, lr_mult, weight_decay=0.0),
    ])
    return [torch.optim.AdamW(groups, lr=cfg.lr * lr_mult, betas=cfg.betas, eps=cfg.eps, fused=False)]


def build_ief(model: nn.Module, cfg: IEFConfig, lr_mult: float) -> list[Optimizer]:
    """One NaturalGradient (iEF, EF or SF: cfg.name) over every trainable parameter, embedding
    and head included: the natural-gradient step is one direction in the whole parameter space, so
    it has one group, "<mode>/all" (e.g. "ief/all"), at base_lr = cfg.lr x lr_mult."""
    routes = route_parameters(model)  # the coverage check: every trainable parameter exactly once
    params = [named for _, route in routes.items() for named in route]
    return [NaturalGradient(model, [_group(f"{cfg.name}/all", params, cfg.lr, lr_mult)], cfg)]


BUILDERS: dict[type, Builder] = {MuonConfig: build_muon, AdamWConfig: build_adamw, IEFConfig: build_ief}
"""The one optimiser table: config class (the `_target_` of conf/optim/*.yaml) -> builder."""


def build_optimisers(model: nn.Module, cfg: MuonConfig | AdamWConfig | IEFConfig, lr_mult: float) -> list[Optimizer]:
    """The optimisers of a run, every group named and with base_lr = configured LR x lr_mult
    (lr_mult is validated with the rest of the run's config, in qat_lab.config.build_spec)."""
    optimisers = BUILDERS[type(cfg)](model, cfg, float(lr_mult))
    names = param_group_names(optimisers)
    if len(set(names)) != len(names):
        raise RuntimeError(f"optimiser group names are not unique: {names}")
    return optimisers


def apply_step_hparams(optimisers: Iterable[Optimizer], step: int, lr_multiplier: float) -> None:
    """Set the hyperparameters for the update at `step`: lr = base_lr x schedule multiplier,
    and Muon's momentum warmup (linear from momentum_warmup_start to momentum) where configured."""
    if not lr_multiplier >= 0:
        raise ValueError(f"lr_multiplier={lr_multiplier} must be >= 0")
    for opt in optimisers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_multiplier
            steps = group.get("momentum_warmup_steps", 0)
            if steps > 0:
                frac = min(step / steps, 1.0)
                group["momentum"] = (1 - frac) * group["momentum_warmup_start"] + frac * group["momentum_target"]


def param_group_names(optimisers: Iterable[Optimizer]) -> list[str]:
    """Group names of all optimisers, in order (the `lr/<group>` logging keys)."""
    return [g["group"] for opt in optimisers for g in opt.param_groups]
