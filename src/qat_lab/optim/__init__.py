"""Optimisers (METHOD section 5): parameter routing, Muon (+AdamW), AdamW, and iEF / EF / SF.

    optimizers = build_optimizers(model, MuonConfig(), lr_mult=1.0)
    for step in range(total):
        apply_step_hparams(optimizers, step, schedule_multiplier(step))
        ... backward; for opt in optimizers: opt.step(); opt.zero_grad()

The natural-gradient optimisers (optim.name ief, ef, sf) need the batch itself: they set
`needs_batch = True` and are stepped with `opt.natural_step(x, y)` instead (qat_lab.optim.ief).
"""

from qat_lab.optim.build import (
    OPTIMIZERS,
    apply_step_hparams,
    build_adamw,
    build_ief,
    build_muon,
    build_optimizers,
    param_group_names,
)
from qat_lab.optim.config import CONFIGS, AdamWConfig, IEFConfig, MuonConfig, optim_config
from qat_lab.optim.ief import NaturalGradient
from qat_lab.optim.routing import ParamRoutes, RoutingError, route_parameters

__all__ = [
    "MuonConfig", "AdamWConfig", "IEFConfig", "CONFIGS", "optim_config",
    "OPTIMIZERS", "build_optimizers", "build_muon", "build_adamw", "build_ief", "NaturalGradient",
    "apply_step_hparams", "param_group_names",
    "ParamRoutes", "RoutingError", "route_parameters",
]
