"""Strong post-training quantisation (qat_lab.quant.ptq): clip search, GPTQ, Hessians, weight swaps."""

import copy

import pytest
from dataclasses import replace
import torch
import torch.nn as nn

from qat_lab.models.gpt import GPT, GPTConfig
from qat_lab.quant.config import QuantConfig
from qat_lab.quant.fake_quant import quantise_with_scales, code_range, quantise_dequantise, scales
from qat_lab.quant.ptq import (
    CLIP_GRID, PTQ_METHODS, calibrate, clip_scales, collect_hessians, gptq, gptq_reference, ptq_costs,
    ptq_weight, ptq_weights,
)
from qat_lab.quant.qat import apply_qat, latent_weights, quant_targets, round_trip_weights

VOCAB = 64
OUTLIER = 8.0
CLIP_GRANULARITIES = [  # groups of 32: a group of 8 with one outlier is better left unclipped
    QuantConfig(granularity="row"),
    QuantConfig(granularity="group", group_size=32),
    QuantConfig(granularity="tensor"),
]
GRANULARITIES = [
    QuantConfig(granularity="row"),
    QuantConfig(granularity="group", group_size=8),
    QuantConfig(granularity="tensor"),
]


def _cfg(base: QuantConfig, **overrides) -> QuantConfig:
    return QuantConfig(**{**base.__dict__, **overrides})


def _group_errors(w: torch.Tensor, q: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """Squared round-trip error per scale group (the groups scales() uses)."""
    s = scales(w, bits, cfg)
    return (w - q).square().reshape(*s.shape[:-1], -1).sum(-1)


def _outlier_matrix(seed: int, rows: int = 12, cols: int = 128, dtype=torch.float64) -> torch.Tensor:
    """Gaussian rows; the even rows carry one outlier of 8 standard deviations."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=dtype)
    for r in range(0, rows, 2):
        w[r, (3 * r) % cols] = OUTLIER * (1 if r % 4 else -1)
    return w


def _per_weight_scales(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Every weight's scale, for any granularity (s shaped like scales(w))."""
    return s.expand(*s.shape[:-1], w.numel() // s[..., 0].numel()).reshape(w.shape)


def _layer(seed: int, out: int = 10, n_in: int = 24, n: int = 200, dead: tuple[int, ...] = ()):
    """A toy Linear (float64) with correlated calibration inputs: W, X and H = 2 X^T X / n."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g, dtype=torch.float64)
    # Strongly correlated inputs (8 latent directions plus noise), as activations are, with input
    # energies spread over a factor of 4 (so act-order has an order to follow).
    mix = torch.randn(8, n_in, generator=g, dtype=torch.float64)
    noise = torch.randn(n, n_in, generator=g, dtype=torch.float64)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) @ mix + 0.3 * noise
    x = x * torch.linspace(0.5, 2.0, n_in, dtype=torch.float64)
    x[:, list(dead)] = 0.0
    return w, x, 2.0 * x.T @ x / n


# --- the round trip with given scales, and the clip search --------------------------------------


@pytest.mark.parametrize("floor", ["tiny", "inv_qmax"])
@pytest.mark.parametrize("rng", ["narrow", "full"])
@pytest.mark.parametrize("base", GRANULARITIES, ids=lambda c: c.granularity)
def test_round_trip_with_absmax_scales_is_bit_exact(base, rng, floor):
    cfg = _cfg(base, range=rng, scale_floor=floor)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 32, generator=g) * torch.rand(6, 1, generator=g) * 3
    w[1] = 0.0
    w[2] *= 1e-12
    w[3] = (torch.randint(-7, 7, (32,), generator=g) + 0.5) * 0.25  # exact ties at scale 0.25
    w[3, 0] = 7 * 0.25
    for bits in range(2, 9):
        s = scales(w, bits, cfg)
        assert torch.equal(quantise_with_scales(w, s, bits, cfg), quantise_dequantise(w, bits, cfg))


def test_round_trip_with_scales_rejects_scales_of_the_wrong_shape():
    w = torch.randn(4, 16)
    with pytest.raises(ValueError, match="expected"):
        quantise_with_scales(w, torch.ones(4), 4, QuantConfig())
    with pytest.raises(ValueError, match="expected"):
        quantise_with_scales(w, torch.ones(4, 1), 4, QuantConfig(granularity="group", group_size=8))


@pytest.mark.parametrize("rng", ["narrow", "full"])
@pytest.mark.parametrize("base", CLIP_GRANULARITIES, ids=lambda c: c.granularity)
def test_clip_search_never_loses_to_rtn_and_only_clips_when_it_pays(base, rng):
    cfg = _cfg(base, range=rng)
    w = _outlier_matrix(0)
    outlier_groups = _group_errors(w, torch.where(w.abs() == OUTLIER, 0.0, w), 4, cfg) > 0
    assert 0 < int(outlier_groups.sum()) < outlier_groups.numel() or cfg.granularity == "tensor"
    for bits in range(2, 9):
        s = clip_scales(w, bits, cfg)
        absmax = scales(w, bits, _cfg(cfg, scale_rule="absmax"))
        assert s.shape == absmax.shape and (s <= absmax).all()  # c <= 1
        clip_err = _group_errors(w, quantise_with_scales(w, s, bits, cfg), bits, cfg)
        rtn_err = _group_errors(w, quantise_dequantise(w, bits, cfg), bits, cfg)
        assert (clip_err <= rtn_err).all(), bits
        # A group leaves absmax only when that strictly lowers its error (ties go to c = 1).
        moved = (s != absmax).squeeze(-1)
        assert (clip_err[moved] < rtn_err[moved]).all(), bits
        if bits in (3, 4):
            # Groups holding an outlier: absmax spends most of a coarse grid on one weight, and
            # clipping it pays. (With finer grids, or 2 bits' {-s, 0, s}, keeping it can be optimal.)
            assert (clip_err[outlier_groups] < rtn_err[outlier_groups]).all(), bits
            assert clip_err.sum() < 0.95 * rtn_err.sum()


@pytest.mark.parametrize("floor", ["tiny", "inv_qmax"])
@pytest.mark.parametrize("base", CLIP_GRANULARITIES, ids=lambda c: c.granularity)
def test_clip_scales_are_absmax_scales_when_c_equals_1_wins(base, floor):
    bits, qmax = 4, 7
    cfg = _cfg(base, scale_floor=floor, scale_rule="percentile", percentile=50.0)  # scale_rule is not used
    w = _outlier_matrix(1, dtype=torch.float32)
    # Row 1: every value already on the c = 1 grid (scale 0.25): zero error, nothing can beat it.
    w[1] = torch.randint(-qmax, qmax + 1, (w.shape[1],), generator=torch.Generator().manual_seed(3)) * 0.25
    w[1, ::32] = qmax * 0.25  # every group of 32 reaches the absmax
    w[3] = 0.0  # all-zero row: every c ties, the floor is the scale
    absmax = scales(w, bits, _cfg(cfg, scale_rule="absmax"))
    # With c = 1 the only candidate, the search is absmax exactly (floors included).
    assert torch.equal(clip_scales(w, bits, cfg, grid=(1.0,)), absmax)
    if cfg.granularity != "tensor":
        s = clip_scales(w, bits, cfg)
        assert torch.equal(s[1], absmax[1]) and torch.equal(s[3], absmax[3])
        assert not torch.equal(s[0], absmax[0])  # the outlier row does clip
    if floor == "inv_qmax":
        assert (clip_scales(w * 1e-3, bits, cfg) >= 1.0 / qmax).all()


def test_clip_grid_must_contain_1_and_lie_in_0_1():
    w = torch.randn(4, 16)
    assert CLIP_GRID[0] == 1.0 and len(CLIP_GRID) == 100 and min(CLIP_GRID) == 0.01
    for bad in [(0.5, 0.9), (1.0, 0.0), (1.2, 1.0), ()]:
        with pytest.raises(ValueError, match="clip grid"):
            clip_scales(w, 4, QuantConfig(), grid=bad)


def test_clip_search_is_chunked_without_changing_the_answer(monkeypatch):
    import qat_lab.quant.ptq as ptq
    w = _outlier_matrix(5)
    whole = clip_scales(w, 4, QuantConfig())
    monkeypatch.setattr(ptq, "CLIP_CHUNK_ELEMENTS", w.numel() * 7)  # 7 candidates per chunk: 15 chunks
    assert torch.equal(ptq.clip_scales(w, 4, QuantConfig()), whole)


# --- GPTQ --------------------------------------------------------------------------------------


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("base", GRANULARITIES, ids=lambda c: c.granularity)
def test_blocked_gptq_equals_the_dense_reference_exactly(base, act_order):
    # float64 and random data: no w_j / s lands within rounding noise of a half-integer, so the two
    # algorithms' ~1e-16 differences in the running weights can never flip a code.
    cfg = _cfg(base, range="full")
    w, _, h = _layer(0, dead=(5,))
    for bits in (3, 4):
        for s in (None, clip_scales(w, bits, cfg)):
            ref = gptq_reference(w, h, bits, cfg, s, act_order=act_order)
            for block_size in (1, 7, 24, 128):  # 1, a size that does not divide 24, == in, > in
                out = gptq(w, h, bits, cfg, s, block_size=block_size, act_order=act_order)
                assert torch.equal(out, ref), (bits, block_size)
            assert out.dtype == torch.float64 and out.shape == w.shape
            assert (out[:, 5] == 0).all()  # the dead input's weights are zeroed
            rtn = quantise_with_scales(w, scales(w, bits, cfg) if s is None else s, bits, cfg)
            assert not torch.equal(ref, rtn)  # GPTQ did move codes (the comparison is not vacuous)


def test_dead_inputs_keep_the_hessian_invertible_without_damping():
    w, _, h = _layer(6, dead=(0, 11))
    assert (h.diagonal()[[0, 11]] == 0).all()
    out = gptq(w, h, 4, QuantConfig(), damp=0.0, block_size=5)  # would fail in Cholesky without H_jj = 1
    assert torch.equal(out, gptq_reference(w, h, 4, QuantConfig(), damp=0.0))
    assert (out[:, [0, 11]] == 0).all() and out[:, 1:11].abs().sum() > 0


def test_act_order_changes_the_result_and_keeps_the_column_order():
    cfg = QuantConfig()
    w, x, h = _layer(1)
    plain = gptq(w, h, 3, cfg)
    ordered = gptq(w, h, 3, cfg, act_order=True)
    assert not torch.equal(plain, ordered)
    # Permuting the inputs (and the weight's columns) permutes the act-order result the same way.
    perm = torch.randperm(w.shape[1], generator=torch.Generator().manual_seed(0))
    assert torch.equal(gptq(w[:, perm], h[perm][:, perm], 3, cfg, act_order=True), ordered[:, perm])


@pytest.mark.parametrize("scale_source", ["rtn", "clip"])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_lowers_the_layer_output_error_against_rtn_with_the_same_scales(bits, scale_source):
    cfg = QuantConfig()
    w, x, h = _layer(2, out=32, n_in=64, n=512)
    s = scales(w, bits, cfg) if scale_source == "rtn" else clip_scales(w, bits, cfg)

    def output_error(q: torch.Tensor) -> float:
        return float(((w - q) @ x.T).square().sum())

    rtn = output_error(quantise_with_scales(w, s, bits, cfg))
    ours = output_error(gptq(w, h, bits, cfg, s))
    assert ours < 0.5 * rtn  # measured 0.16-0.20 here (0.02-0.03 with act-order)
    assert output_error(gptq(w, h, bits, cfg, s, act_order=True)) < 0.5 * rtn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("base", GRANULARITIES, ids=lambda c: c.granularity)
def test_gptq_with_a_diagonal_hessian_is_round_to_nearest(base, dtype):
    # Diagonal H: every off-diagonal entry of H^-1 is 0, so no error is ever propagated.
    cfg = base
    w, _, _ = _layer(3)
    w = w.to(dtype)
    h = torch.diag(torch.rand(w.shape[1], generator=torch.Generator().manual_seed(0), dtype=dtype) + 0.1)
    for s in (scales(w, 4, cfg), clip_scales(w, 4, cfg)):
        rtn = quantise_with_scales(w, s, 4, cfg)
        for block_size, act_order in [(1, False), (5, True), (128, False)]:
            assert torch.equal(gptq(w, h, 4, cfg, s, block_size=block_size, act_order=act_order), rtn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rng", ["narrow", "full"])
@pytest.mark.parametrize("base", GRANULARITIES, ids=lambda c: c.granularity)
def test_every_ptq_value_lies_on_the_grid(base, rng, dtype):
    cfg = _cfg(base, range=rng)
    w, _, h = _layer(4, out=16, n_in=32)
    w, h = w.to(dtype), h.to(dtype)
    for bits in (2, 4, 8):
        qmin, qmax = code_range(bits, cfg)
        s = clip_scales(w, bits, cfg)
        outputs = [(quantise_with_scales(w, s, bits, cfg), s),
                   (gptq(w, h, bits, cfg, s, block_size=8), s),
                   (gptq(w, h, bits, cfg, act_order=True), scales(w, bits, cfg))]
        for q, sc in outputs:
            assert q.dtype == dtype and q.shape == w.shape
            codes = q / _per_weight_scales(w, sc)
            assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-4)
            assert codes.round().min() >= qmin and codes.round().max() <= qmax


def test_gptq_rejects_bad_shapes_and_arguments():
    w, _, h = _layer(5)
    with pytest.raises(ValueError, match="Hessian"):
        gptq(w, h[:-1, :-1], 4, QuantConfig())
    with pytest.raises(ValueError, match="2-D"):
        gptq(w[0], h, 4, QuantConfig())
    with pytest.raises(ValueError, match="block_size"):
        gptq(w, h, 4, QuantConfig(), block_size=0)
    with pytest.raises(ValueError, match="expected"):
        gptq(w, h, 4, QuantConfig(), torch.ones(w.shape[0]))
    with pytest.raises(ValueError, match="positive definite"):
        gptq(w, -h, 4, QuantConfig())


# --- Hessians of a model -----------------------------------------------------------------------


def _model(seed: int = 0, n_layer: int = 1) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(d_model=32, n_layer=n_layer, n_head=2), vocab_size=VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.2)  # the zero-initialised projections would hide bugs
    return model


def _batches(n: int = 3, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (2, 12), generator=g), torch.randint(0, VOCAB, (2, 12), generator=g))
            for _ in range(n)]


def _captured_inputs(model: GPT, module: nn.Module, batches) -> torch.Tensor:
    seen = []

    def keep(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    handle = module.register_forward_hook(keep)  # a plain forward hook, independent of collect_hessians
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    handle.remove()
    return torch.cat(seen).double()


def test_hessians_are_2_xtx_over_n_of_each_layers_inputs_and_hooks_are_removed():
    model, batches = _model(), _batches()
    targets = quant_targets(model, QuantConfig())
    model.train()
    hessians = collect_hessians(model, targets, batches, dtype=torch.float64)
    assert set(hessians) == set(targets) and model.training
    assert all(not m._forward_pre_hooks for m in model.modules())
    model.eval()
    for name in ("blocks.0.attn.q", "blocks.0.mlp.proj"):
        x = _captured_inputs(model, targets[name], batches)
        assert x.shape[0] == 3 * 2 * 12
        expected = 2.0 * x.T @ x / x.shape[0]
        assert hessians[name].shape == expected.shape == (targets[name].in_features,) * 2
        assert torch.allclose(hessians[name], expected, rtol=1e-10, atol=1e-12)
    # q, k and v read one input, so their Hessians coincide (the shared X^T X is reused).
    assert torch.equal(hessians["blocks.0.attn.q"], hessians["blocks.0.attn.v"])
    assert not torch.allclose(hessians["blocks.0.attn.q"], hessians["blocks.0.attn.proj"])


def test_hessian_hooks_see_fake_quant_linears_and_calibrate_uses_latent_weights():
    plain, batches = _model(), _batches()
    expected = collect_hessians(plain, quant_targets(plain, QuantConfig()), batches)
    wrapped = copy.deepcopy(plain)
    apply_qat(wrapped, QuantConfig(bits=4))  # fake quantisation on: calibrate must switch it off
    calib = calibrate(wrapped, QuantConfig(), batches)
    assert calib.batches == 3 and calib.tokens == 3 * 2 * 12 and calib.seconds > 0
    assert set(calib.hessians) == set(expected)
    for name, h in expected.items():
        assert torch.equal(calib.hessians[name], h), name
    assert all(bool(m.qat_on) for m in wrapped.modules() if hasattr(m, "qat_on"))  # fake quant back on
    with latent_weights(wrapped):
        same = collect_hessians(wrapped, quant_targets(wrapped, QuantConfig()), batches)
    assert all(torch.equal(same[n], expected[n]) for n in expected)


def test_hessian_hooks_are_removed_after_an_exception():
    model = _model()
    bad = [(torch.full((1, 4), VOCAB + 5), torch.zeros(1, 4, dtype=torch.long))]  # token out of range
    with pytest.raises(IndexError):
        collect_hessians(model, quant_targets(model, QuantConfig()), bad)
    assert all(not m._forward_pre_hooks for m in model.modules())
    with pytest.raises(ValueError, match="no calibration input"):
        collect_hessians(model, quant_targets(model, QuantConfig()), [])


# --- whole-model swaps -------------------------------------------------------------------------


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", PTQ_METHODS)
def test_ptq_weights_swaps_the_quantised_set_and_restores_it_exactly(method):
    model, qcfg = _model(n_layer=2), QuantConfig()
    hessians = calibrate(model, qcfg, _batches()).hessians
    before = _state(model)
    targets = quant_targets(model, qcfg)
    with ptq_weights(model, qcfg, 4, method, hessians) as info:
        assert info.matrices == len(targets) == 12 and info.seconds > 0 and info.method == method
        for name, mod in targets.items():
            expected = ptq_weight(before[f"{name}.weight"], 4, qcfg, method, hessians[name])
            assert torch.equal(mod.weight, expected), name
            assert not torch.equal(mod.weight, before[f"{name}.weight"])
        assert torch.equal(model.wte.weight, before["wte.weight"])  # not in the quantised set
    after = _state(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_ptq_weights_restores_after_an_exception_and_rtn_is_the_round_trip():
    model, qcfg = _model(), QuantConfig()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with ptq_weights(model, qcfg, 4, "clip"):
            raise RuntimeError("boom")
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    with round_trip_weights(model, replace(qcfg, bits=4)):
        rtn = _state(model)
    with ptq_weights(model, qcfg, 4, "rtn"):
        assert all(torch.equal(model.state_dict()[k], rtn[k]) for k in rtn)
    with ptq_weights(model, qcfg, 16, "gptq", {}):  # bits=16 is the latent model
        assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_ptq_weights_refuses_gptq_without_hessians_before_touching_anything():
    model, qcfg = _model(), QuantConfig()
    before = _state(model)
    with pytest.raises(ValueError, match="Hessian"):
        with ptq_weights(model, qcfg, 4, "gptq"):
            pass
    with pytest.raises(ValueError, match="not one of"):
        with ptq_weights(model, qcfg, 4, "awq"):
            pass
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)


def test_ptq_costs_reports_times_and_calibration_size_and_leaves_the_weights():
    model, qcfg = _model(), QuantConfig()
    before = _state(model)
    costs = ptq_costs(model, qcfg, 4, _batches(2))
    assert costs["calib_batches"] == 2 and costs["calib_tokens"] == 2 * 2 * 12 and costs["hessian_s"] > 0
    assert all(costs[f"{m}_s"] > 0 for m in PTQ_METHODS)
    assert ptq_costs(model, qcfg, 4, _batches(2), methods=("rtn", "clip"))["calib_tokens"] == 0
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
