"""Weight-to-grid distance (METHOD section 6)."""

import math

import torch

from qat_lab.models.gpt import GPT, GPTConfig
from qat_lab.quant.config import FP_BITS, QuantConfig
from qat_lab.quant.fake_quant import quantise_dequantise
from qat_lab.quant.grid_distance import grid_distance
from qat_lab.quant.qat import apply_qat, quant_targets

BLOCK_MATRICES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")


def _model(seed: int = 0, d_model: int = 32) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(d_model=d_model, n_layer=2, n_head=2), vocab_size=16)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_()
    return model


def _snap_to_grid(model: GPT, bits: int, qcfg: QuantConfig) -> None:
    with torch.no_grad():
        for mod in quant_targets(model, qcfg).values():
            mod.weight.copy_(quantise_dequantise(mod.weight, bits, qcfg))


def test_weights_on_the_grid_have_zero_distance():
    for bits in (2, 4, 6, 8):
        for qcfg in (QuantConfig(bits=bits), QuantConfig(bits=bits, granularity="group", group_size=16)):
            model = _model()
            _snap_to_grid(model, bits, qcfg)
            mean, per_layer = grid_distance(model, qcfg)
            assert mean < 1e-4 and max(per_layer.values()) < 1e-4


def test_zero_initialised_matrices_are_on_the_grid():
    model = GPT(GPTConfig(d_model=32, n_layer=2, n_head=2), vocab_size=16)  # projections start at 0
    _, per_layer = grid_distance(model, QuantConfig(bits=6))
    for i in range(2):
        assert per_layer[f"blocks.{i}.attn.proj"] == 0.0 and per_layer[f"blocks.{i}.mlp.proj"] == 0.0
        assert per_layer[f"blocks.{i}.attn.q"] > 0.1


def test_random_weights_give_about_a_quarter():
    # Gaussian weights on a fine 8-bit grid: residuals are close to uniform on [0, 0.5].
    model = _model(d_model=64)
    mean, per_layer = grid_distance(model, QuantConfig(bits=8))
    assert abs(mean - 0.25) < 0.01
    assert all(abs(v - 0.25) < 0.03 for v in per_layer.values())


def test_per_layer_keys_and_element_weighted_mean():
    model = _model()
    qcfg = QuantConfig(bits=6)
    mean, per_layer = grid_distance(model, qcfg)
    assert set(per_layer) == {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    sizes = {name: mod.weight.numel() for name, mod in quant_targets(model, qcfg).items()}
    weighted = sum(per_layer[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert math.isclose(mean, weighted, rel_tol=1e-9)
    embedding = grid_distance(model, QuantConfig(bits=6, quantise_embedding=True))[1]
    assert set(embedding) == set(per_layer) | {"wte"}  # tied head: counted once


def test_qat_wrapping_does_not_change_the_measurement():
    model = _model()
    before = grid_distance(model, QuantConfig(bits=6))
    apply_qat(model, QuantConfig(bits=6))
    assert grid_distance(model, QuantConfig(bits=6)) == before


def test_bits_16_runs_are_measured_at_the_probe_bits():
    qcfg = QuantConfig(bits=FP_BITS, probe_bits=4)
    assert qcfg.grid_bits == 4
    assert QuantConfig(bits=FP_BITS).grid_bits == 6  # default probe
    assert all(QuantConfig(bits=b, probe_bits=4).grid_bits == b for b in range(2, 9))
    # A model sitting on the 4-bit grid is at distance 0 against the probe grid of an FP16 run,
    # but not against the (different) 6-bit grid.
    model = _model()
    _snap_to_grid(model, 4, qcfg)
    assert grid_distance(model, qcfg)[0] < 1e-4
    assert grid_distance(model, QuantConfig(bits=FP_BITS))[0] > 0.05
