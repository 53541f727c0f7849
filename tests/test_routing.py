"""Parameter routing: Muon gets only the hidden matrices; every parameter lands in exactly one group."""

import pytest
import torch
import torch.nn as nn

from qat_lab.models.gpt import GPT, GPTConfig
from qat_lab.optim import AdamWConfig, MuonConfig, RoutingError, build_optimisers, route_parameters
from qat_lab.quant import QuantConfig, apply_qat

VOCAB = 256
HIDDEN = {"attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj"}


def tiny(tie: bool = True) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(d_model=32, n_layer=2, n_head=2, tie_embeddings=tie), VOCAB)


def make(tie: bool, qat: str) -> GPT:
    model = tiny(tie)
    if qat == "qat":
        apply_qat(model, QuantConfig(bits=4))
    elif qat == "qat_embed":  # embedding and head quantised too: they must still go to AdamW
        apply_qat(model, QuantConfig(bits=4, quantise_embedding=True))
    return model


VARIANTS = [(tie, qat) for tie in (True, False) for qat in ("fp", "qat", "qat_embed")]


def trainable(model: nn.Module) -> dict[int, nn.Parameter]:
    return {id(p): p for p in model.parameters() if p.requires_grad}


def expected_matrices(model: GPT) -> set[str]:
    return {f"blocks.{i}.{lin}.weight" for i in range(len(model.blocks)) for lin in HIDDEN}


@pytest.mark.parametrize("tie,qat", VARIANTS)
def test_routes_are_exact_and_disjoint(tie, qat):
    model = make(tie, qat)
    if qat != "fp":  # routing must see through the in-place re-classing
        assert type(model.blocks[0].attn.q).__name__ == "FakeQuantLinear"
    routes = route_parameters(model)

    assert {n for n, _ in routes.matrices} == expected_matrices(model)
    assert all(p.ndim == 2 for _, p in routes.matrices)
    assert [p for _, p in routes.embed] == [model.wte.weight]
    if tie:
        assert model.lm_head.weight is model.wte.weight
        assert routes.head == []
    else:
        assert [p for _, p in routes.head] == [model.lm_head.weight]
    assert routes.scalars and all(p.ndim < 2 for _, p in routes.scalars)

    # every trainable parameter exactly once across all routes
    ids = [id(p) for _, params in routes.items() for _, p in params]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(trainable(model))


@pytest.mark.parametrize("tie,qat", VARIANTS)
@pytest.mark.parametrize("cfg", [MuonConfig(), AdamWConfig()], ids=["muon", "adamw"])
def test_optimizer_groups_cover_every_parameter_once(tie, qat, cfg):
    model = make(tie, qat)
    optimisers = build_optimisers(model, cfg, 1.0)
    ids = [id(p) for opt in optimisers for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == set(trainable(model)), "a parameter is in no group"
    assert all(g["params"] for opt in optimisers for g in opt.param_groups), "empty group kept"


@pytest.mark.parametrize("tie,qat", VARIANTS)
def test_muon_gets_no_embedding_head_or_1d(tie, qat):
    model = make(tie, qat)
    optimisers = build_optimisers(model, MuonConfig(), 1.0)
    muon = [opt for opt in optimisers if isinstance(opt, torch.optim.Muon)]
    assert len(muon) == 1
    muon_params = [p for g in muon[0].param_groups for p in g["params"]]
    muon_ids = {id(p) for p in muon_params}
    assert id(model.wte.weight) not in muon_ids
    assert id(model.lm_head.weight) not in muon_ids
    assert all(p.ndim == 2 for p in muon_params)
    assert {n for g in muon[0].param_groups for n in g["param_names"]} == expected_matrices(model)

    names = {g["group"]: g for opt in optimisers for g in opt.param_groups}
    assert names["adamw/embed"]["params"] == [model.wte.weight]
    if tie:
        assert "adamw/head" not in names  # the tied head is the embedding tensor
    else:
        assert names["adamw/head"]["params"] == [model.lm_head.weight]
    assert all(p.ndim < 2 for p in names["adamw/scalars"]["params"])


def test_unroutable_parameter_is_an_error():
    model = tiny()
    model.extra = nn.Parameter(torch.zeros(3, 3))  # 2-D but not a Linear weight inside blocks
    with pytest.raises(RoutingError, match=r"no optimiser route: extra \(3, 3\)"):
        route_parameters(model)


def test_parameter_claimed_twice_is_an_error():
    model = tiny()
    # A 2-D Linear inside blocks whose weight is also the embedding: matrices and embed both claim it.
    model.blocks[0].alias = nn.Linear(32, VOCAB, bias=False)
    model.blocks[0].alias.weight = model.wte.weight
    with pytest.raises(RoutingError, match=r"more than one optimiser group: wte\.weight \(matrices, embed\)"):
        route_parameters(model)


def test_frozen_parameters_are_left_out():
    model = tiny()
    model.final_norm.weight.requires_grad_(False)
    routes = route_parameters(model)
    ids = {id(p) for _, params in routes.items() for _, p in params}
    assert id(model.final_norm.weight) not in ids
    assert ids == set(trainable(model))
