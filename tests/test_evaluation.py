"""End-of-run evaluation (qat_lab.evaluation.final_evaluation) on a tiny random GPT."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from qat_lab.evaluation import PTQ_BITS, final_evaluation, mean_loss
from qat_lab.models.gpt import GPT, GPTConfig
from qat_lab.quant import QuantConfig, apply_qat, latent_weights, quant_targets, quantise_dequantise

VOCAB = 256
LN2 = math.log(2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread avoids OpenMP spin-waiting when the CPU is shared (100x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def to_bpb(loss: float) -> float:
    return loss / LN2


def _model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(d_model=32, n_layer=1, n_head=2), VOCAB)
    with torch.no_grad():  # random everywhere: the zero-initialised projections would hide quantisation
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.2)
    return model


def _batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        t = torch.randint(0, VOCAB, (2, 17), generator=g)
        out.append((t[:, :-1], t[:, 1:]))
    return out


def _snapshot(model: GPT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: GPT, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def _ptq_reference(model: GPT, bits: int, qcfg: QuantConfig, batches) -> float:
    """Loss of an independent copy whose quantised set holds its round-trip weights."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for mod in quant_targets(ref, qcfg).values():
            mod.weight.copy_(quantise_dequantise(mod.weight, bits, qcfg))
    with latent_weights(ref):
        return mean_loss(ref, batches)


def test_fp_run():
    model, batches, qcfg = _model(), _batches(), QuantConfig()
    before = _snapshot(model)
    out = final_evaluation(model, qcfg, batches, to_bpb)
    assert out["val_loss"] == out["latent_val_loss"]
    assert out["quant_gap"] == 0.0
    assert out["val_loss"] == pytest.approx(mean_loss(model, batches), rel=1e-6)
    assert set(out["ptq"]) == {"8", "6", "4"}
    assert out["val_bpb"] == pytest.approx(out["val_loss"] / LN2)
    assert out["latent_val_bpb"] == pytest.approx(out["latent_val_loss"] / LN2)
    for b in PTQ_BITS:
        ptq = out["ptq"][str(b)]
        assert ptq["val_loss"] == pytest.approx(_ptq_reference(model, b, qcfg, batches), rel=1e-6)
        assert ptq["val_bpb"] == pytest.approx(ptq["val_loss"] / LN2)
    assert out["ptq"]["4"]["val_loss"] != out["val_loss"]  # PTQ really changed the weights
    assert out["finite"] is True
    _assert_unchanged(model, before)


@pytest.mark.parametrize("bits", [4, 6])
def test_qat_run_val_is_the_fake_quantised_forward(bits: int):
    model, batches, qcfg = _model(), _batches(), QuantConfig(bits=bits)
    assert apply_qat(model, qcfg)
    with torch.no_grad():  # a "trained" model: weights that are not the init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.train()
    before = _snapshot(model)
    fake_quant_loss = mean_loss(model, batches)
    with latent_weights(model):
        latent_loss = mean_loss(model, batches)

    out = final_evaluation(model, qcfg, batches, to_bpb)
    assert out["val_loss"] == pytest.approx(out["ptq"][str(bits)]["val_loss"], rel=1e-6)
    assert out["val_loss"] == pytest.approx(fake_quant_loss, rel=1e-6)
    assert out["latent_val_loss"] == pytest.approx(latent_loss, rel=1e-6)
    assert out["latent_val_loss"] != out["val_loss"]
    assert out["quant_gap"] == pytest.approx(out["val_loss"] - out["latent_val_loss"])
    assert set(out["ptq"]) == {"8", "6", "4"}
    assert out["val_bpb"] == pytest.approx(out["val_loss"] / LN2)
    assert out["latent_val_bpb"] == pytest.approx(out["latent_val_loss"] / LN2)
    for b in PTQ_BITS:
        assert out["ptq"][str(b)]["val_bpb"] == pytest.approx(out["ptq"][str(b)]["val_loss"] / LN2)

    _assert_unchanged(model, before)
    assert model.training  # mode restored
    assert mean_loss(model, batches) == fake_quant_loss  # fake quantisation still switched on


def test_qat_at_bits_outside_the_ptq_set():
    model, batches, qcfg = _model(), _batches(), QuantConfig(bits=5)
    apply_qat(model, qcfg)
    out = final_evaluation(model, qcfg, batches, to_bpb)
    assert set(out["ptq"]) == {"8", "6", "5", "4"}  # PTQ at the run's own bits too
    assert out["ptq"]["5"]["val_loss"] == out["val_loss"]
    assert out["val_loss"] == pytest.approx(mean_loss(model, batches), rel=1e-6)
    assert out["val_loss"] == pytest.approx(_ptq_reference(model, 5, qcfg, batches), rel=1e-6)


def test_to_bpb_is_the_callers_conversion():
    model, batches = _model(), _batches()
    out = final_evaluation(model, QuantConfig(), batches, lambda loss: 10.0 * loss)
    assert out["val_bpb"] == pytest.approx(10.0 * out["val_loss"])
    assert out["ptq"]["6"]["val_bpb"] == pytest.approx(10.0 * out["ptq"]["6"]["val_loss"])


def test_strong_ptq_arms_are_the_ptq_modules_weights_evaluated():
    """ptq_clip / ptq_gptq at every bit-width are the val losses of quant/ptq.py's weights (whose
    layer-level guarantees against round to nearest are tests/test_ptq.py's), weights restored."""
    from qat_lab.quant.config import PTQConfig
    from qat_lab.quant.ptq import calibrate, ptq_weights

    model, batches = _model(), _batches()
    before = _snapshot(model)
    out = final_evaluation(model, QuantConfig(), batches, to_bpb, ptq=PTQConfig(bits=[4, 3]),
                           calibration=batches[:1])
    _assert_unchanged(model, before)
    assert set(out["ptq_clip"]) == set(out["ptq_gptq"]) == {"4", "3"}
    hessians = calibrate(model, QuantConfig(bits=4), batches[:1]).hessians
    for b in (4, 3):
        with ptq_weights(model, QuantConfig(bits=b), b, "gptq", hessians):
            assert out["ptq_gptq"][str(b)]["val_loss"] == pytest.approx(mean_loss(model, batches), rel=1e-9)
        with ptq_weights(model, QuantConfig(bits=b), b, "clip"):
            assert out["ptq_clip"][str(b)]["val_loss"] == pytest.approx(mean_loss(model, batches), rel=1e-9)
        assert out["ptq_gptq"][str(b)]["val_loss"] != out["ptq"][str(b)]["val_loss"]
    cost = out["ptq_cost"]
    assert cost["calibration_batches"] == 1 and cost["calibration_tokens"] == batches[0][0].numel()
    assert cost["hessian_s"] > 0 and cost["gptq_s"] > 0 and cost["clip_s"] > 0
