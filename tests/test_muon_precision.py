"""qat_lab's Muon: torch.optim.Muon's update, with the Newton-Schulz precision as a setting."""

from __future__ import annotations

import pytest
import torch

from qat_lab.optim import MuonConfig, build_optimisers
from qat_lab.optim.muon import Muon, orthogonalise, resolve_ns_dtype


def _matrices(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape, generator=g)) for shape in ((16, 48), (48, 16), (32, 32))]


def _run(opt_cls, steps: int = 4, **kw) -> list[torch.Tensor]:
    params = _matrices(0)
    opt = opt_cls([{"params": params}], lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1,
                  adjust_lr_fn="original", **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("nesterov", [True, False])
def test_bfloat16_step_is_torchs_bit_for_bit(nesterov):
    def run(cls, **kw):
        params = _matrices(0)
        opt = cls([{"params": params}], lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
                  adjust_lr_fn="match_rms_adamw", **kw)
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, opt

    ours, opt = run(Muon, ns_dtype="bfloat16")
    theirs, ref = run(torch.optim.Muon)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    for a, b in zip(ours, theirs):  # and the state (checkpoints move between the two)
        assert torch.equal(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


def test_float32_iteration_is_closer_to_the_bfloat16_one_than_bfloat16_rounding():
    update = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    coeffs = (3.4445, -4.7750, 2.0315)
    bf16 = orthogonalise(update, coeffs, 5, 1e-7, torch.bfloat16).float()
    fp32 = orthogonalise(update, coeffs, 5, 1e-7, torch.float32)
    # Same iteration: singular values pushed into roughly [0.5, 1.5], the same direction.
    assert fp32.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(fp32.flatten(), bf16.flatten(), dim=0)
    assert cos > 0.99
    s = torch.linalg.svdvals(fp32)
    assert 0.4 < s.min() and s.max() < 1.6
    # Float32 is not bfloat16 in disguise.
    assert not torch.equal(fp32, bf16)


def test_auto_is_float32_on_cpu_and_bfloat16_on_accelerators():
    assert resolve_ns_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_ns_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_ns_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="ns_dtype=half"):
        Muon(_matrices(0), ns_dtype="half")


def test_the_float32_step_differs_from_bfloat16_only_by_the_iterations_rounding():
    fp32 = _run(Muon, ns_dtype="float32")
    bf16 = _run(Muon, ns_dtype="bfloat16")
    start = _matrices(0)
    for a, b, p0 in zip(fp32, bf16, start):
        da, db = a - p0.detach(), b - p0.detach()
        assert not torch.equal(da, db)
        assert torch.nn.functional.cosine_similarity(da.flatten(), db.flatten(), dim=0) > 0.99


def test_config_passes_ns_dtype_to_the_optimiser():
    from tests.test_optim import tiny

    muon = build_optimisers(tiny(), MuonConfig(ns_dtype="bfloat16"), 1.0)[0]
    assert isinstance(muon, Muon) and muon.ns_dtype == "bfloat16"
    assert build_optimisers(tiny(), MuonConfig(), 1.0)[0].ns_dtype == "auto"


def test_bad_ns_dtype_is_a_config_error():
    from qat_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^optim\.ns_dtype=fp8 is not one of auto, bfloat16, float32$"):
        MuonConfig(ns_dtype="fp8")
