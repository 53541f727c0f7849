"""The fake quantiser (METHOD section 3): bit-exact against PyTorch's fused op, STE, scale rules."""

import numpy as np
import pytest
import torch
from torch.func import grad, vmap

from qat_lab.errors import ConfigError
from qat_lab.quant.fake_quant import (
    TINY_SCALE, QuantConfig, code_range, fake_quantise, grid_residuals, quantise_dequantise, scales,
    validate_bits,
)

BITS = range(2, 9)


def _matrix(seed: int, bits: int, rows: int = 12, cols: int = 40) -> torch.Tensor:
    """Random rows plus rows with exact .5 ties, negative ties, an all-zero row and a tiny row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 3
    qmax = 2 ** (bits - 1) - 1
    # Scale 0.25 exactly: |w| max is qmax * 0.25, and every other entry is (k + 0.5) * 0.25.
    k = torch.randint(-qmax, qmax, (cols,), generator=g).float()
    ties = (k + 0.5) * 0.25
    ties[0] = qmax * 0.25
    w[0] = ties
    w[1] = -ties
    w[2] = 0.0
    w[3] = w[3] * 1e-12
    return w


def _torch_reference(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    qmin, qmax = code_range(bits, cfg)
    s = scales(w, bits, cfg).reshape(-1).float()
    zp = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, s, zp, 0, qmin, qmax)


@pytest.mark.parametrize("rng", ["narrow", "full"])
@pytest.mark.parametrize("bits", BITS)
def test_bit_exact_against_torch_fused_op(bits, rng):
    cfg = QuantConfig(range=rng)
    for seed in range(3):
        w = _matrix(seed, bits)
        ours = quantise_dequantise(w, bits, cfg)
        ref = _torch_reference(w, bits, cfg)
        assert torch.equal(ours, ref)
        assert torch.equal(fake_quantise(w, bits, cfg), ref)


@pytest.mark.parametrize("bits", BITS)
def test_code_range_and_ties_round_half_to_even(bits):
    qmax = 2 ** (bits - 1) - 1
    assert code_range(bits, QuantConfig()) == (-qmax, qmax)
    assert code_range(bits, QuantConfig(range="full")) == (-qmax - 1, qmax)
    w = _matrix(0, bits)
    codes = quantise_dequantise(w, bits, QuantConfig())[:2] / 0.25  # row scale is exactly 0.25
    expected = np.round(w[:2].numpy() / 0.25)  # numpy rounds half to even
    assert np.array_equal(codes.numpy(), expected)
    assert torch.equal(quantise_dequantise(w, bits, QuantConfig())[2], torch.zeros(w.shape[1]))


def test_values_lie_on_the_grid_and_error_is_at_most_half_a_step():
    cfg = QuantConfig()
    w = torch.randn(16, 32)
    for bits in BITS:
        s = scales(w, bits, cfg)
        q = quantise_dequantise(w, bits, cfg)
        codes = q / s
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.abs().max() <= 2 ** (bits - 1) - 1 + 1e-4
        assert ((q - w).abs() <= s / 2 * (1 + 1e-5)).all()  # absmax never clips


def test_full_range_uses_the_extra_negative_code_only_when_the_scale_clips():
    bits, qmax = 4, 7
    w = torch.cat([torch.linspace(-1, 1, 101), torch.tensor([-5.0, 5.0])]).reshape(1, -1)
    for rule in ("absmax", "percentile"):
        narrow_cfg = QuantConfig(range="narrow", scale_rule=rule, percentile=90.0)
        full_cfg = QuantConfig(range="full", scale_rule=rule, percentile=90.0)
        s = scales(w, bits, narrow_cfg)
        narrow = (quantise_dequantise(w, bits, narrow_cfg) / s).round()
        full = (quantise_dequantise(w, bits, full_cfg) / s).round()
        if rule == "absmax":  # |w| / s <= qmax: the extra code is never reached
            assert torch.equal(narrow, full) and narrow.min() == -qmax
        else:  # the -5 outlier clips to the outermost code of each range
            assert narrow.min() == -qmax and full.min() == -qmax - 1
            assert narrow.max() == full.max() == qmax
            inside = (w / s).round() >= -qmax  # codes that no range clips agree
            assert torch.equal(narrow[inside], full[inside]) and inside.sum() < w.numel()


@pytest.mark.parametrize("cfg", [QuantConfig(), QuantConfig(range="full"), QuantConfig(scale_rule="percentile", percentile=90.0)])
def test_ste_gradient_is_exactly_ones(cfg):
    w = (torch.randn(8, 16) * 2).requires_grad_()
    fake_quantise(w, 3, cfg).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # also where percentile clipping happened


def test_ste_passes_upstream_gradient_unchanged():
    w = torch.randn(8, 16, requires_grad=True)
    upstream = torch.randn(8, 16)
    (fake_quantise(w, 4, QuantConfig()) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)


@pytest.mark.parametrize("bad", [3.5, 1, 9, True, 0, -4, "8", None, 17, float("nan"), float("inf")])
def test_invalid_bits_raise_config_error(bad):
    with pytest.raises(ConfigError) as e:
        validate_bits(bad)
    assert "bits=" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("good", [2, 3, 4, 5, 6, 7, 8, 16, 6.0])
def test_valid_bits(good):
    assert validate_bits(good) == int(good) and isinstance(validate_bits(good), int)


def test_quant_config_validation_names_the_key():
    for kwargs, key in [({"range": "wide"}, "quant.range"), ({"scale_rule": "mse"}, "quant.scale_rule"),
                        ({"granularity": "col"}, "quant.granularity"), ({"scale_floor": "x"}, "quant.scale_floor"),
                        ({"percentile": 0.0}, "quant.percentile"), ({"group_size": 0}, "quant.group_size"),
                        ({"probe_bits": 16}, "quant.probe_bits"), ({"probe_bits": 9}, "quant.probe_bits")]:
        with pytest.raises(ConfigError, match=key):
            QuantConfig(**kwargs)


def test_absmax_row_scales():
    w = torch.randn(6, 20)
    for bits in BITS:
        expected = w.abs().amax(dim=1, keepdim=True) / (2 ** (bits - 1) - 1)
        assert torch.equal(scales(w, bits, QuantConfig()), expected)


def test_percentile_scales_match_numpy_percentile():
    w = torch.randn(5, 200)
    cfg = QuantConfig(scale_rule="percentile", percentile=95.0)
    expected = np.percentile(w.abs().double().numpy(), 95.0, axis=1, keepdims=True) / 7
    assert np.allclose(scales(w, 4, cfg).numpy(), expected, rtol=1e-5)
    # Percentile clips: the largest values land on the outermost code.
    q = quantise_dequantise(w, 4, cfg)
    s = scales(w, 4, cfg)
    assert torch.allclose(q.abs().amax(dim=1, keepdim=True), 7 * s)
    assert (w.abs() > 7.5 * s).any()
    # percentile=100 is absmax.
    full = QuantConfig(scale_rule="percentile", percentile=100.0)
    assert torch.allclose(scales(w, 4, full), scales(w, 4, QuantConfig()))


def test_group_scales_are_per_group_absmax_and_equal_row_quantising_each_group():
    w = torch.randn(4, 24)
    cfg = QuantConfig(granularity="group", group_size=8)
    s = scales(w, 5, cfg)
    assert s.shape == (4, 3, 1)
    for r in range(4):
        for g in range(3):
            assert s[r, g, 0] == w[r, 8 * g:8 * g + 8].abs().max() / 15
    by_rows = quantise_dequantise(w.reshape(12, 8), 5, QuantConfig()).reshape(4, 24)
    assert torch.equal(quantise_dequantise(w, 5, cfg), by_rows)
    with pytest.raises(ConfigError, match="quant.group_size"):
        quantise_dequantise(torch.randn(4, 20), 5, cfg)


def test_tensor_scale_is_global_absmax():
    w = torch.randn(4, 24)
    cfg = QuantConfig(granularity="tensor")
    s = scales(w, 6, cfg)
    assert s.numel() == 1 and s.item() == (w.abs().max() / 31).item()
    assert torch.equal(quantise_dequantise(w, 6, cfg), quantise_dequantise(w.reshape(1, -1), 6, QuantConfig()).reshape(4, 24))


def test_scale_floors():
    w = torch.zeros(2, 8)
    w[1] = torch.linspace(-0.05, 0.05, 8)
    tiny = scales(w, 4, QuantConfig())
    assert tiny[0].item() == pytest.approx(TINY_SCALE) and tiny[1].item() == pytest.approx(0.05 / 7)
    inv = scales(w, 4, QuantConfig(scale_floor="inv_qmax"))
    assert torch.allclose(inv, torch.full_like(inv, 1 / 7))  # both rows are below the 1/qmax floor
    # With the 1/qmax floor, small weights collapse to 0 (codes round(w*7) = 0 for |w| < 1/14).
    assert torch.equal(quantise_dequantise(w, 4, QuantConfig(scale_floor="inv_qmax")), torch.zeros_like(w))
    assert quantise_dequantise(w, 4, QuantConfig())[1].ne(0).sum() > 0
    big = torch.randn(3, 8) * 10  # above the floor, both rules give absmax scales
    assert torch.equal(scales(big, 4, QuantConfig(scale_floor="inv_qmax")), scales(big, 4, QuantConfig()))


def _loss(w, x):
    return (x @ fake_quantise(w, 4, QuantConfig()).T).square().sum()


def test_per_sample_gradients_under_vmap_grad_equal_a_loop():
    w = torch.randn(6, 10)
    xs = torch.randn(5, 3, 10)
    batched = vmap(grad(_loss), in_dims=(None, 0))(w, xs)
    looped = torch.stack([grad(_loss)(w, x) for x in xs])
    assert torch.allclose(batched, looped, atol=1e-6, rtol=1e-6)
    # The STE gradient is the gradient w.r.t. the quantised weight.
    wq = quantise_dequantise(w, 4, QuantConfig()).requires_grad_()
    (xs[0] @ wq.T).square().sum().backward()
    assert torch.allclose(looped[0], wq.grad, atol=1e-6)


def test_vmap_over_weights_quantises_each_matrix_with_its_own_scales():
    ws = torch.randn(4, 6, 10) * torch.tensor([0.1, 1.0, 10.0, 100.0]).view(4, 1, 1)
    batched = vmap(lambda w: fake_quantise(w, 3, QuantConfig()))(ws)
    looped = torch.stack([fake_quantise(w, 3, QuantConfig()) for w in ws])
    assert torch.equal(batched, looped)


def test_grid_residuals_in_range_and_zero_on_grid():
    w = torch.randn(8, 32)
    d = grid_residuals(w, 6, QuantConfig())
    assert d.shape == w.shape and d.min() >= 0 and d.max() <= 0.5
    on_grid = quantise_dequantise(w, 6, QuantConfig())
    assert grid_residuals(on_grid, 6, QuantConfig()).max() < 1e-4
