"""Parameter routing: decide which optimiser group every trainable parameter belongs to.

One rule set, used by every optimiser (METHOD section 5):

- ``matrices``: the 2-D weights of ``nn.Linear`` modules inside ``model.blocks`` (attention q, k, v,
  out-projection; MLP in/out). These are the hidden matrices Muon is designed for, and the same
  set the quantiser wraps. ``FakeQuantLinear`` subclasses ``nn.Linear`` and keeps the very same
  Parameter, so routing gives the same answer before and after ``apply_qat``.
- ``embed``: the input embedding table. With tied embeddings this tensor *is* the head as well.
- ``head``: the output head, only when it is a separate tensor (untied).
- ``scalars``: every tensor with fewer than two dimensions (RMSNorm gains, biases, scalar gates).

Embedding and head never go to Muon: their rows are looked up / read out one token at a time,
so orthogonalising their update makes no sense, and the tied head is literally the embedding.

Each bucket is built from its own rule rather than by sorting one list, so the final coverage
check means something: a parameter claimed by two rules, or by none (say a future 2-D tensor
that is not a Linear), is an error here instead of silently landing in the wrong optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

NamedParams = list[tuple[str, nn.Parameter]]

ROUTES = ("matrices", "embed", "head", "scalars")
"""Bucket names, in the order optimisers build their groups."""


class RoutingError(RuntimeError):
    """A trainable parameter is routed to no group or to more than one: a bug, not a config value."""


@dataclass
class ParamRoutes:
    """Trainable parameters split into disjoint buckets, each a list of (name, parameter)."""

    matrices: NamedParams = field(default_factory=list)
    """2-D weights of nn.Linear modules inside model.blocks (Muon's share)."""
    embed: NamedParams = field(default_factory=list)
    """The embedding table (also the head when tied)."""
    head: NamedParams = field(default_factory=list)
    """The untied output head; empty when tied."""
    scalars: NamedParams = field(default_factory=list)
    """Every tensor with ndim < 2: norm gains, biases, scalar gates."""

    def items(self) -> list[tuple[str, NamedParams]]:
        return [(route, getattr(self, route)) for route in ROUTES]


def route_parameters(model: nn.Module) -> ParamRoutes:
    """Split the trainable parameters of a GPT into the four routes, each exactly once.

    Tied parameters are deduplicated by identity (the tied head is the embedding tensor), frozen
    parameters (requires_grad=False) are left out. Raises RoutingError if any trainable parameter
    is claimed by no rule or by more than one.
    """
    # Canonical names: named_parameters() yields a shared tensor once, under its first name
    # ("wte.weight" for the tied embedding/head).
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    trainable = {id(p): p for _, p in model.named_parameters() if p.requires_grad}

    def named(params: list[nn.Parameter]) -> NamedParams:
        out, seen = [], set()
        for p in params:
            if id(p) in trainable and id(p) not in seen:  # skip frozen, dedupe by identity
                seen.add(id(p))
                out.append((names[id(p)], p))
        return out

    embed_w = model.wte.weight
    head_w = model.lm_head.weight
    routes = ParamRoutes(
        matrices=named([
            m.weight for m in model.blocks.modules()
            if isinstance(m, nn.Linear) and m.weight.ndim == 2
        ]),
        embed=named([embed_w]),
        # When tied, head_w *is* embed_w: it is already in `embed`, so the head route stays empty.
        head=named([] if head_w is embed_w else [head_w]),
        scalars=named([p for p in trainable.values() if p.ndim < 2]),
    )
    _check_coverage(routes, trainable, names)
    return routes


def _check_coverage(routes: ParamRoutes, trainable: dict[int, nn.Parameter], names: dict[int, str]) -> None:
    """Every trainable parameter in exactly one route; raise RoutingError naming the culprits."""
    claimed: dict[int, list[str]] = {}
    for route, params in routes.items():
        for _, p in params:
            claimed.setdefault(id(p), []).append(route)
    twice = [f"{names[i]} ({', '.join(r)})" for i, r in claimed.items() if len(r) > 1]
    if twice:
        raise RoutingError(f"parameters routed to more than one optimiser group: {'; '.join(twice)}")
    missing = [f"{names[i]} {tuple(p.shape)}" for i, p in trainable.items() if i not in claimed]
    if missing:
        raise RoutingError(
            f"parameters with no optimiser route: {', '.join(missing)}; "
            "add a rule in qat_lab.optim.routing"
        )
