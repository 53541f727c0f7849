"""QAT wrapping and evaluation-time weight swaps (qat_lab.quant.qat)."""

import copy

import pytest
from dataclasses import replace
import torch
import torch.nn as nn

from qat_lab.errors import ConfigError
from qat_lab.models.gpt import GPT, GPTConfig, RMSNorm, lm_loss
from qat_lab.quant.fake_quant import QuantConfig, quantise_dequantise
from qat_lab.quant.qat import (
    FakeQuantEmbedding, FakeQuantLinear, apply_qat, latent_weights, quant_targets, round_trip_weights,
)

VOCAB = 32
BLOCK_MATRICES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc", "mlp.proj")


def _model(seed: int = 0, **overrides) -> GPT:
    """A tiny model with every weight random (the zero-initialised projections would hide bugs)."""
    torch.manual_seed(seed)
    cfg = dict(d_model=32, n_layer=2, n_head=2)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg), vocab_size=VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.2)
    return model


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_apply_qat_wraps_exactly_the_six_block_matrices():
    model = _model()
    names = apply_qat(model, QuantConfig(bits=4))
    expected = {f"blocks.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    assert set(names) == expected and len(names) == 12
    wrapped = {n for n, m in model.named_modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))}
    assert wrapped == expected
    assert type(model.wte) is nn.Embedding and type(model.lm_head) is nn.Linear
    assert all(type(m) is RMSNorm for m in model.modules() if isinstance(m, nn.RMSNorm))  # norms are not wrapped
    assert all(m.qcfg.bits == 4 and bool(m.qat_on) for n, m in model.named_modules() if n in expected)


def test_apply_qat_keeps_parameter_objects_and_tying():
    model = _model()
    before = dict(model.named_parameters())
    apply_qat(model, QuantConfig(bits=6))
    after = dict(model.named_parameters())
    assert before.keys() == after.keys()
    assert all(before[k] is after[k] for k in before)
    assert model.lm_head.weight is model.wte.weight


def test_bits_16_wraps_nothing():
    model = _model()
    ref = model(_tokens())
    assert apply_qat(model, QuantConfig(bits=16)) == []
    assert not any(isinstance(m, (FakeQuantLinear, FakeQuantEmbedding)) for m in model.modules())
    assert torch.equal(model(_tokens()), ref)


def test_quantise_embedding_wraps_the_table_and_the_tied_head():
    model = _model()
    names = apply_qat(model, QuantConfig(bits=4, quantise_embedding=True))
    assert "wte" in names and "lm_head" in names and len(names) == 14
    assert isinstance(model.wte, FakeQuantEmbedding) and isinstance(model.lm_head, FakeQuantLinear)
    assert model.lm_head.weight is model.wte.weight
    # Untied: the head is its own target.
    untied = _model(tie_embeddings=False)
    assert set(quant_targets(untied, QuantConfig(quantise_embedding=True))) >= {"wte", "lm_head"}
    assert "lm_head" not in quant_targets(untied, QuantConfig())


@pytest.mark.parametrize("qcfg", [QuantConfig(), QuantConfig(range="full"),
                                  QuantConfig(granularity="group", group_size=16),
                                  QuantConfig(quantise_embedding=True)])
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_qat_forward_equals_round_trip_forward(bits, qcfg):
    model = _model()
    x = _tokens()
    latent = model(x)
    apply_qat(model, replace(qcfg, bits=bits))
    qat = model(x)
    with round_trip_weights(model, replace(qcfg, bits=bits)):
        rt = model(x)
    assert torch.equal(qat, rt)
    assert not torch.allclose(qat, latent)  # quantisation really changed the function


def test_latent_weights_give_the_unquantised_forward():
    model = _model()
    x = _tokens()
    reference = copy.deepcopy(model)
    apply_qat(model, QuantConfig(bits=3))
    with latent_weights(model):
        assert torch.equal(model(x), reference(x))
    assert not torch.allclose(model(x), reference(x))
    assert all(bool(m.qat_on) for m in model.modules() if isinstance(m, FakeQuantLinear))


def test_qat_gradient_is_the_gradient_at_the_quantised_weights():
    # STE: d loss / d W (latent) equals d loss / d W_q of a plain model holding W_q.
    model = _model()
    x = _tokens()
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for mod in quant_targets(plain, QuantConfig()).values():
            mod.weight.copy_(quantise_dequantise(mod.weight, 4, QuantConfig()))
    apply_qat(model, QuantConfig(bits=4))
    lm_loss(model(x), x).backward()
    lm_loss(plain(x), x).backward()
    for (name, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-7, rtol=1e-5), name


@pytest.mark.parametrize("wrapped", [True, False])
def test_round_trip_restores_weights_exactly(wrapped):
    model = _model()
    if wrapped:
        apply_qat(model, QuantConfig(bits=4))
    before = _weights(model)
    x = _tokens()
    out_before = model(x)
    with round_trip_weights(model, QuantConfig(bits=4)):
        changed = _weights(model)
        assert not torch.is_grad_enabled()
    assert any(not torch.equal(before[k], changed[k]) for k in before)
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model(x), out_before)
    assert model.lm_head.weight is model.wte.weight


def test_round_trip_restores_weights_when_the_body_raises():
    model = _model()
    apply_qat(model, QuantConfig(bits=4))
    before = _weights(model)
    with pytest.raises(RuntimeError, match="boom"):
        with round_trip_weights(model, QuantConfig(bits=4)):
            raise RuntimeError("boom")
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(bool(m.qat_on) for m in model.modules() if isinstance(m, FakeQuantLinear))


def test_round_trip_restores_weights_when_the_swap_fails_half_way():
    # mlp.proj has 96 inputs, which group_size=64 does not divide; the 64-wide matrices before it
    # are swapped first and must be put back.
    model = _model(d_model=64, n_head=2, mlp_ratio=1.5)
    before = _weights(model)
    with pytest.raises(ConfigError, match="group_size"):
        with round_trip_weights(model, QuantConfig(bits=4, granularity="group", group_size=64)):
            pass
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_round_trip_at_bits_16_is_the_latent_model():
    model = _model()
    x = _tokens()
    latent = model(x)
    apply_qat(model, QuantConfig(bits=4))
    with round_trip_weights(model, QuantConfig(bits=16)):
        assert torch.equal(model(x), latent)


def test_round_trip_at_other_bits_than_training():
    # An INT4 QAT model evaluated at 8 bits (PTQ at another grid) uses the 8-bit round trip.
    model = _model()
    x = _tokens()
    fresh = _model()
    apply_qat(model, QuantConfig(bits=4))
    apply_qat(fresh, QuantConfig(bits=8))
    with round_trip_weights(model, QuantConfig(bits=8)):
        assert torch.equal(model(x), fresh(x))
