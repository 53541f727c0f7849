"""Optimisers (METHOD section 5): parameter routing, Muon (+AdamW), AdamW, and iEF / EF / SF.

    optimisers = build_optimisers(model, MuonConfig(), lr_mult=1.0)
    for step in range(total):
        apply_step_hparams(optimisers, step, schedule_multiplier(step))
        ... backward; for opt in optimisers: opt.step(); opt.zero_grad()

The natural-gradient optimisers (optim.name ief, ef, sf) need the batch itself: they set
`needs_batch = True` and are stepped with `opt.natural_step(x, y)` instead (qat_lab.optim.ief).

    config.py    the `optim` config group's dataclasses (no torch)
    routing.py   which parameter goes to which group
    build.py     the optimisers of a run; per-step LR and momentum
    muon.py      torch.optim.Muon with the Newton-Schulz precision as a setting
    ief.py       the natural-gradient step

Names load on first use (PEP 562): `qat_lab.optim.config` stays free of torch.
"""

from importlib import import_module

_EXPORTS = {
    "MuonConfig": "config", "AdamWConfig": "config", "IEFConfig": "config",
    "build_optimisers": "build", "apply_step_hparams": "build", "param_group_names": "build",
    "NaturalGradient": "ief", "ParamRoutes": "routing", "RoutingError": "routing", "route_parameters": "routing",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"qat_lab.optim.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'qat_lab.optim' has no attribute {name!r}")
