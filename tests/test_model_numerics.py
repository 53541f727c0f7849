"""The model's cheaper elementwise formulations compute what the plain ones compute.

models/gpt.py writes three things with less work than autograd's default (RMSNorm's backward on
CPU, ReLU^2's backward, the rotary rotation; docs/benchmarks_cpu_profile.md). `reference_forward`
below is the plain formulation, kept here as it was before that change: F.rms_norm, rotary as
half-width products and a cat with per-call dtype casts, relu(x).square(). Both are run on the same
modules (so the quantiser's wrapped linears are shared), at bits 16 (the FP16 baseline) and 6 (QAT).

The new formulation is meant to be the same arithmetic, so the checks are bit for bit: forward
outputs, every parameter's gradient, and the train loss over Muon steps from the same seed on the
same batches. Not to a tolerance: under QAT a gradient off in its last bit now and then moves a
weight across a rounding boundary, and a dozen steps later the loss differs in its fourth digit
(measured on cpu-xs at bits 6 with an RMSNorm backward that was 5e-8 off), so "equal to 1e-6" of a
loss is only reliable when the gradients are exactly equal. The same holds under bf16 autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qat_lab.models.gpt import GPT, GPTConfig, RMSNorm, Rotary, lm_loss
from qat_lab.optim import MuonConfig, apply_step_hparams, build_optimisers
from qat_lab.quant import QuantConfig, apply_qat

VOCAB = 64


# --- the plain formulation (before the change) --------------------------------------------------

def _rms(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    w = norm.weight if norm.weight.dtype == x.dtype else norm.weight.to(x.dtype)
    return F.rms_norm(x, norm.normalized_shape, w, norm.eps)


def _rotate(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    T = x.shape[1]
    t = torch.arange(T, device=x.device, dtype=torch.float32)
    freqs = torch.outer(t, rotary.inv_freq.to(x.device))
    cos, sin = freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


def reference_forward(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    x = _rms(model.embed_norm, model.wte(idx))
    for block in model.blocks:
        a = block.attn
        h = _rms(block.attn_norm, x)
        B, T, _ = h.shape
        q = _rms(a.q_norm, a.q(h).view(B, T, a.n_head, a.hd))
        k = _rms(a.k_norm, a.k(h).view(B, T, a.n_kv, a.hd))
        v = a.v(h).view(B, T, a.n_kv, a.hd)
        q, k = _rotate(q, a.rotary), _rotate(k, a.rotary)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=a.n_kv != a.n_head)
        x = x + a.proj(y.transpose(1, 2).reshape(B, T, a.n_head * a.hd))
        x = x + block.mlp.proj(F.relu(block.mlp.fc(_rms(block.mlp_norm, x))).square())
    logits = model.lm_head(_rms(model.final_norm, x)).float()
    cap = model.cfg.logit_softcap
    return cap * torch.tanh(logits / cap) if cap else logits


# --- helpers --------------------------------------------------------------------------------------

def _model(bits: int, seed: int = 0, **cfg) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{"d_model": 64, "n_layer": 2, "n_head": 2, **cfg}), VOCAB)
    with torch.no_grad():  # non-zero output projections, so every block contributes to the gradient
        for block in model.blocks:
            block.attn.proj.weight.normal_(std=0.05)
            block.mlp.proj.weight.normal_(std=0.05)
        for name, p in model.named_parameters():
            if p.dim() == 1:  # gains away from 1, so the gain gradients are exercised
                p.uniform_(0.5, 1.5)
    apply_qat(model, QuantConfig(bits=bits))
    return model


def _batch(B: int = 4, T: int = 33, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    tok = torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))
    return tok[:, :-1], tok[:, 1:]


def _grads(model: GPT, forward, x, y) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = forward(model, x)
    lm_loss(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# --- tests ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 6])
@pytest.mark.parametrize("cfg", [{}, {"n_head": 4, "n_kv_head": 2}, {"logit_softcap": None}],
                         ids=["mha", "gqa", "nocap"])
def test_forward_and_gradients_match_the_plain_formulation(bits, cfg):
    model = _model(bits, **cfg)
    x, y = _batch()
    new_logits, new = _grads(model, lambda m, i: m(i), x, y)
    ref_logits, ref = _grads(model, reference_forward, x, y)
    # Every forward is the same arithmetic as before: equal logits, bit for bit.
    assert torch.equal(new_logits, ref_logits)
    assert new.keys() == ref.keys()
    for name in ref:
        assert torch.equal(new[name], ref[name]), (name, _rel(new[name], ref[name]))
        assert new[name].abs().sum() > 0, name  # every parameter really is exercised


def test_pieces_separately():
    """Each piece on its own, so a failure names it; RMSNorm over a 3-D and a 4-D (B, T, H, D) input
    (QK-norm), at several scales of input and gradient."""
    torch.manual_seed(0)
    model = _model(16)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp

    x = torch.randn(3, 9, 2, 32, requires_grad=True)
    cos2, sin2 = attn.rotary.tables(9, 2, x.device, x.dtype)
    g = torch.randn(3, 9, 2, 32)
    (new,) = torch.autograd.grad(Rotary.rotate(x, cos2, sin2), x, g)
    (ref,) = torch.autograd.grad(_rotate(x, attn.rotary), x, g)
    assert torch.equal(Rotary.rotate(x, cos2, sin2), _rotate(x, attn.rotary)) and torch.equal(new, ref)

    h = torch.randn(3, 9, 64, requires_grad=True)
    new_out = mlp(h)
    ref_out = mlp.proj(F.relu(mlp.fc(h)).square())
    assert torch.equal(new_out, ref_out)
    gh = torch.randn_like(new_out)
    assert torch.equal(torch.autograd.grad(new_out, h, gh)[0], torch.autograd.grad(ref_out, h, gh)[0])

    for norm, shape in ((model.blocks[0].attn_norm, (3, 9, 64)), (attn.q_norm, (3, 9, 2, 32))):
        for x_scale, g_scale in ((1.0, 1.0), (1e-3, 1e3), (30.0, 1e-4)):
            x = (x_scale * torch.randn(*shape)).requires_grad_()
            g = g_scale * torch.randn(*shape)
            new_out, ref_out = norm(x), _rms(norm, x)
            assert torch.equal(new_out, ref_out)
            new = torch.autograd.grad(new_out, (x, norm.weight), g)
            ref = torch.autograd.grad(ref_out, (x, norm.weight), g)
            assert torch.equal(new[0], ref[0]), _rel(new[0], ref[0])
            assert torch.equal(new[1], ref[1]), _rel(new[1], ref[1])


def test_bf16_autocast_matches_the_plain_formulation():
    """Under bf16 autocast the norms normalise in fp32 (their two gradient terms meet in fp32, as in
    torch's composite) and the rotary tables are cast once: logits and gradients bit for bit."""
    model = _model(16)
    x, y = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new_logits, new = _grads(model, lambda m, i: m(i), x, y)
        ref_logits, ref = _grads(model, reference_forward, x, y)
    assert torch.equal(new_logits, ref_logits)
    for name in ref:
        assert torch.equal(new[name], ref[name]), (name, _rel(new[name], ref[name]))


@pytest.mark.parametrize("bits", [16, 6])
def test_training_reaches_the_same_loss(bits):
    """Muon + AdamW from the same seed on the same batches: the plain and the cheaper formulation
    give the same train loss at every step, exactly (which implies the brief's 1e-6)."""

    def train(forward) -> list[float]:
        model = _model(bits, seed=3)
        optimisers = build_optimisers(model, MuonConfig(), 1.0)
        losses = []
        for step in range(12):
            x, y = _batch(B=8, seed=100 + step)
            apply_step_hparams(optimisers, step, 1.0)
            loss = lm_loss(forward(model, x), y)
            loss.backward()
            for opt in optimisers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        return losses

    new, ref = train(lambda m, i: m(i)), train(reference_forward)
    assert new == ref
    assert ref[-1] < ref[0]  # it did train


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # CPU flash attention has no batching rule
def test_per_sample_gradients_under_vmap():
    """The custom autograd functions carry vmap rules: torch.func per-sample gradients (iEF) equal
    one backward pass per sample."""
    from torch.func import functional_call, grad, vmap

    model = _model(6)
    x, y = _batch(B=3, T=9)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss_of(p, xi, yi):
        return lm_loss(functional_call(model, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss_of), in_dims=(None, 0, 0))(params, x, y)
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        lm_loss(reference_forward(model, x[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():  # vmap batches the ops differently: to rounding
            assert _rel(per_sample[n][i], p.grad) <= 1e-5, (i, n)


def test_the_benchmarks_before_arm_is_this_reference():
    """bench/profile_step.py times "before" by patching its copy of the plain formulation into
    models.gpt: it must be this file's reference, and the patch must come off again."""
    from bench.profile_step import plain_formulation
    from qat_lab.models import gpt

    model = _model(6)
    x, y = _batch()
    originals = [gpt.RMSNorm.forward, gpt.Attention.forward, gpt.MLP.forward]
    with plain_formulation():
        assert gpt.MLP.forward is not originals[2]
        patched_logits, patched = _grads(model, lambda m, i: m(i), x, y)
    assert [gpt.RMSNorm.forward, gpt.Attention.forward, gpt.MLP.forward] == originals
    ref_logits, ref = _grads(model, reference_forward, x, y)
    assert torch.equal(patched_logits, ref_logits)
    assert all(torch.equal(patched[n], ref[n]) for n in ref)
