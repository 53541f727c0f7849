"""iEF / EF / SF (qat_lab.optim.ief): the update equals a dense reference built from an explicit
per-sample Jacobian, J dtheta hits its target up to damping, per-sample gradients match a loop of
ordinary backward passes (also through the fake quantiser), the LR schedule and lr_mult scale the
step, the memory budget is checked before any work, and every mode trains."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import qat_lab.optim.ief as ief
from qat_lab.errors import ConfigError
from qat_lab.models.gpt import GPT, GPTConfig, lm_loss
from qat_lab.optim import (
    IEFConfig,
    NaturalGradient,
    apply_step_hparams,
    build_optimisers,
    param_group_names,
)
from qat_lab.optim.config import IEF_DEFAULT_LR
from qat_lab.quant import QuantConfig, apply_qat

VOCAB = 32
N, T = 5, 6


class GPT64(GPT):
    """GPT whose logits keep the weights' dtype. GPT.forward casts its logits to float32 (the
    right thing in training), which would put one float32 rounding into an otherwise float64
    chain; this copy of its forward leaves the cast out (test_gpt64_is_gpt checks it)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.final_norm(x))
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


def tiny(bits: int = 16, dtype: torch.dtype = torch.float64, tie: bool = True) -> GPT:
    torch.manual_seed(0)
    cls = GPT64 if dtype == torch.float64 else GPT
    model = cls(GPTConfig(d_model=8, n_layer=1, n_head=2, mlp_ratio=2.0, tie_embeddings=tie), VOCAB)
    with torch.no_grad():  # non-zero output projections, so every parameter has a gradient
        for p in model.parameters():
            if p.ndim == 2 and not p.any():
                p.normal_(std=0.2)
    model.to(dtype)
    apply_qat(model, QuantConfig(bits=bits))
    return model


def test_gpt64_is_gpt():
    x, _ = batch()
    a, b = tiny(dtype=torch.float32), tiny()
    assert b(x).dtype == torch.float64
    b.float()
    assert torch.allclose(a(x), GPT64.forward(b, x), rtol=1e-6, atol=1e-6)


def batch(n: int = N, t: int = T, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, VOCAB, (n, t + 1), generator=g)
    return w[:, :-1], w[:, 1:]


def named(model: GPT) -> dict[str, torch.nn.Parameter]:
    return dict(model.named_parameters())  # tied tensors once


def natural(model: GPT, lr_mult: float = 1.0, **kw) -> NaturalGradient:
    (opt,) = build_optimisers(model, IEFConfig(**kw), lr_mult)
    assert isinstance(opt, NaturalGradient) and opt.needs_batch
    return opt


def reference_jacobian(model: GPT, x, y, reduction: str = "sum", names: list[str] | None = None):
    """(J, l): rows of ordinary backward passes, one sequence at a time; columns in the order of
    `names` (default: named_parameters order)."""
    params = [named(model)[n] for n in (names or named(model))]
    rows, losses = [], []
    for n in range(x.shape[0]):
        tok = lm_loss(model(x[n:n + 1]), y[n:n + 1], reduction="none")
        loss = tok.sum() if reduction == "sum" else tok.mean()
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
        losses.append(loss.detach())
    return torch.stack(rows), torch.stack(losses)


def reference_s(model: GPT, x, y, scale: float = 1.0) -> torch.Tensor:
    """s_n = ||d l_n / d z_n||^2 by autograd at the logits (no closed form), in float64."""
    logits = model(x).detach().double().requires_grad_(True)
    out = []
    for n in range(x.shape[0]):
        loss = lm_loss(logits[n:n + 1], y[n:n + 1], reduction="none").sum() * scale
        (gz,) = torch.autograd.grad(loss, logits)
        out.append(gz.square().sum())
    return torch.stack(out)


def flat(model: GPT) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in named(model).values()])


def dense_update(J, target, damping_rel, ref="mean") -> torch.Tensor:
    G = J @ J.T
    lam = damping_rel * (G.diagonal().mean() if ref == "mean" else G.diagonal().max())
    return J.T @ torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype), target)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --- per-sample gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [16, 4])
@pytest.mark.parametrize("chunk", [2, 32])
def test_per_sample_gradients_match_a_loop_of_backward_passes(bits, chunk):
    model = tiny(bits)
    x, y = batch()
    opt = natural(model, chunk_size=chunk)
    J, loss, s = opt.per_sample_gradients(x, y)
    ref_J, ref_loss = reference_jacobian(model, x, y, names=opt.param_names)
    assert rel_err(J, ref_J) < 1e-12
    assert torch.allclose(loss, ref_loss, rtol=1e-12)
    assert torch.allclose(s, reference_s(model, x, y), rtol=1e-10)
    assert (J.abs().sum(0) > 0).float().mean() > 0.9  # the test means something: almost no dead columns


def test_per_sample_gradients_go_through_the_quantiser():
    # At 4 bits the fake-quantised forward differs from the latent one, so the gradients must too.
    x, y = batch()
    J4, _, _ = natural(tiny(4)).per_sample_gradients(x, y)
    J16, _, _ = natural(tiny(16)).per_sample_gradients(x, y)
    assert rel_err(J4, J16) > 1e-3


# --- the update against a dense reference ---------------------------------------------------------

@pytest.mark.parametrize("mode", ["ief", "ef"])
@pytest.mark.parametrize("jacobian,chunk", [("store", 32), ("store", 2), ("recompute", 2), ("recompute", 32)])
@pytest.mark.parametrize("bits", [16, 4])
def test_ief_and_ef_update_equal_the_dense_reference(mode, jacobian, chunk, bits):
    model = tiny(bits)
    x, y = batch()
    J, _ = reference_jacobian(model, x, y)
    target = reference_s(model, x, y) if mode == "ief" else torch.ones(N, dtype=torch.float64)
    expected = -0.37 * dense_update(J, target, 1e-3)
    before = flat(model)
    opt = natural(model, name=mode, lr=0.37, damping_rel=1e-3, jacobian=jacobian, chunk_size=chunk,
                  normalise_update=False)
    opt.natural_step(x, y)
    assert rel_err(flat(model) - before, expected) < 1e-8


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("jacobian", ["store", "recompute"])
def test_sf_update_equals_the_dense_reference(monkeypatch, samples, jacobian):
    model = tiny(4)
    x, y = batch()
    drawn = torch.randint(0, VOCAB, (N * T, samples), generator=torch.Generator().manual_seed(7))
    handed_out = []  # the optimiser samples chunk by chunk: hand out consecutive rows

    def fixed_draws(probs, m):
        start = sum(handed_out)
        handed_out.append(probs.shape[0])
        return drawn[start:start + probs.shape[0]]

    monkeypatch.setattr(ief, "sample_labels", fixed_draws)
    ys = drawn.view(N, T, samples).permute(2, 0, 1).reshape(samples * N, T)  # row m * N + n
    J_s, _ = reference_jacobian(model, x.repeat(samples, 1), ys)
    g = reference_jacobian(model, x, y)[0].sum(0)
    # Primal form, P x P: (F_s + lambda I)^-1 g with F_s = J_s^T J_s / M.
    lam = 1e-2 * (J_s @ J_s.T).diagonal().mean()
    F = J_s.T @ J_s / samples + lam * torch.eye(J_s.shape[1], dtype=torch.float64)
    expected = -0.5 * torch.linalg.solve(F, g)
    before = flat(model)
    opt = natural(model, name="sf", lr=0.5, damping_rel=1e-2, sf_samples=samples, jacobian=jacobian,
                  chunk_size=4, normalise_update=False)
    opt.natural_step(x, y)
    assert rel_err(flat(model) - before, expected) < 1e-8


def test_damping_max_and_mean_loss_convention():
    model = tiny()
    x, y = batch()
    J, _ = reference_jacobian(model, x, y, reduction="mean")
    expected = -0.2 * dense_update(J, reference_s(model, x, y, scale=1 / T), 1e-2, ref="max")
    before = flat(model)
    natural(model, lr=0.2, damping_rel=1e-2, damping_ref="max", per_sample_loss="mean").natural_step(x, y)
    assert rel_err(flat(model) - before, expected) < 1e-8


# --- J dtheta = s (iEF), = 1 (EF), up to damping --------------------------------------------------

@pytest.mark.parametrize("mode", ["ief", "ef"])
def test_j_dtheta_hits_the_target_up_to_damping(mode):
    model = tiny(4)
    x, y = batch()
    J, _ = reference_jacobian(model, x, y)
    target = reference_s(model, x, y) if mode == "ief" else torch.ones(N, dtype=torch.float64)
    lr = 0.1
    for damping_rel, tol in [(1e-10, 1e-7), (1e-3, 1e-2)]:
        m = tiny(4)
        before = flat(m)
        opt = natural(m, name=mode, lr=lr, damping_rel=damping_rel, normalise_update=False)
        opt.natural_step(x, y)
        dtheta = (before - flat(m)) / lr
        # Without damping J dtheta = target exactly; damping shrinks it by lambda * w.
        assert rel_err(J @ dtheta, target) < tol
        assert opt.last_stats["target_residual"] == pytest.approx(rel_err(J @ dtheta, target), rel=1e-6, abs=1e-12)
    # and with any damping, J dtheta + lambda w = target holds exactly
    G = J @ J.T
    lam = 1e-3 * G.diagonal().mean()
    w = torch.linalg.solve(G + lam * torch.eye(N, dtype=G.dtype), target)
    assert rel_err(J @ (J.T @ w) + lam * w, target) < 1e-12


# --- the step: LR schedule, lr_mult, normalisation, clipping --------------------------------------

def one_update(cfg_kw: dict, lr_mult: float = 1.0, multiplier: float = 1.0) -> torch.Tensor:
    model = tiny()
    x, y = batch()
    opt = natural(model, lr_mult=lr_mult, **cfg_kw)
    apply_step_hparams([opt], 0, multiplier)
    before = flat(model)
    opt.natural_step(x, y)
    return flat(model) - before


@pytest.mark.parametrize("mode", ["ief", "ef", "sf"])
def test_schedule_and_lr_mult_scale_the_step_exactly(mode):
    torch.manual_seed(3)
    base = one_update({"name": mode, "lr": 0.1})
    torch.manual_seed(3)
    scaled = one_update({"name": mode, "lr": 0.1}, lr_mult=2.0, multiplier=0.25)
    assert rel_err(scaled, 0.5 * base) < 1e-10


def test_normalised_step_has_length_lr_and_clip_caps_it():
    step = one_update({"name": "ief", "lr": 0.05, "normalise_update": True})
    assert float(step.norm()) == pytest.approx(0.05, rel=1e-10)
    raw = one_update({"name": "ief", "lr": 10.0})
    clipped = one_update({"name": "ief", "lr": 10.0, "clip_norm": 1e-3})
    assert float(clipped.norm()) == pytest.approx(1e-3, rel=1e-10)
    assert rel_err(clipped / clipped.norm(), raw / raw.norm()) < 1e-10


def test_groups_and_registry():
    for mode in ("ief", "ef", "sf"):
        opts = build_optimisers(tiny(tie=False), IEFConfig(name=mode, lr=0.2), 3.0)
        assert param_group_names(opts) == [f"{mode}/all"]
        g = opts[0].param_groups[0]
        assert g["base_lr"] == pytest.approx(0.6) and g["lr"] == pytest.approx(0.6)
        # every trainable parameter, embedding and untied head included, exactly once
        assert sorted(g["param_names"]) == sorted(n for n, _ in tiny(tie=False).named_parameters())


def test_plain_step_is_refused():
    with pytest.raises(RuntimeError, match="natural_step"):
        natural(tiny()).step()


# --- config ---------------------------------------------------------------------------------------

def test_config_defaults_follow_the_paper():
    assert IEFConfig().normalise_update is False
    assert IEFConfig(name="ef").normalise_update is True and IEFConfig(name="sf").normalise_update is True
    assert IEFConfig(name="ef", normalise_update=False).normalise_update is False
    assert [IEFConfig(name=m).lr for m in ("ief", "ef", "sf")] == [IEF_DEFAULT_LR[m] for m in ("ief", "ef", "sf")]
    cfg = IEFConfig(name="sf", sf_samples=2)
    assert cfg.name == "sf" and cfg.sf_samples == 2 and cfg.lr == IEF_DEFAULT_LR["sf"]


@pytest.mark.parametrize("key,value", [
    ("lr", 0.0), ("damping_rel", -1e-3), ("damping_ref", "median"), ("per_sample_loss", "max"),
    ("normalise_update", "yes"), ("clip_norm", 0.0), ("sf_samples", 0), ("chunk_size", 0),
    ("jacobian", "disk"), ("memory_budget_mb", 0),
])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^optim\.{key}=") as err:
        IEFConfig(**{key: value})
    assert "\n" not in str(err.value)


def test_bad_name_is_rejected():
    with pytest.raises(ConfigError, match=r"^optim\.name=kfac"):
        IEFConfig(name="kfac")


# --- memory ---------------------------------------------------------------------------------------

def test_memory_budget_is_checked_before_any_work():
    model = tiny(dtype=torch.float32)
    before = flat(model)
    x, y = batch(64, T)
    opt = natural(model)
    store = opt.memory_estimate(64, T, 1)["total"]
    recompute = opt.memory_estimate(64, T, 1, dataclasses.replace(opt.cfg, jacobian="recompute"))["total"]
    assert recompute < store  # a 64-row J is the big term at chunk 1
    opt.cfg.memory_budget_mb = (store + recompute) / 2 / 2**20
    with pytest.raises(ConfigError, match=r"^optim\.memory_budget_mb=\S+ is too small for optim=ief on batches of 64 x 6: "
                                          r".*use optim\.jacobian=recompute \(fits with chunks of \d+ sequences\)") as err:
        opt.natural_step(x, y)
    assert "\n" not in str(err.value)
    assert torch.equal(flat(model), before)


def test_chunk_is_planned_from_the_budget():
    x, y = batch(16, T)
    opt = natural(tiny(dtype=torch.float32))
    assert opt.plan_chunk(16, T) == 16  # a generous budget: the whole batch in one vmap call
    per_chunk = opt.memory_estimate(16, T, 2)["total"] - opt.memory_estimate(16, T, 1)["total"]
    opt.cfg.memory_budget_mb = (opt.memory_estimate(16, T, 5)["total"] + per_chunk / 2) / 2**20
    assert opt.plan_chunk(16, T) == 5
    opt.natural_step(x, y)
    assert opt.chunk == 5
    # an explicit chunk that does not fit is an error that names the one that does
    fixed = natural(tiny(dtype=torch.float32), chunk_size=12, memory_budget_mb=opt.cfg.memory_budget_mb)
    with pytest.raises(ConfigError, match=r"set optim\.chunk_size=5 \(or null\)"):
        fixed.natural_step(x, y)


def test_memory_estimate_follows_the_formula():
    opt = natural(tiny(dtype=torch.float32), chunk_size=8)
    P = opt.n_params
    small, big = opt.memory_estimate(16, 64), opt.memory_estimate(64, 64)
    assert small["jacobian"] == 16 * P * 4 and big["jacobian"] == 64 * P * 4
    rec = natural(tiny(dtype=torch.float32), chunk_size=8, jacobian="recompute")
    # recompute: the Jacobian term does not grow with the batch
    assert rec.memory_estimate(16, 64)["jacobian"] == rec.memory_estimate(64, 64)["jacobian"] == 2 * 8 * P * 4
    sf = natural(tiny(dtype=torch.float32), name="sf", sf_samples=3, chunk_size=8)
    assert sf.memory_estimate(16, 64)["jacobian"] == 48 * P * 4


# --- helpers --------------------------------------------------------------------------------------

def test_gram_blocks_match_float64():
    a = torch.randn(6, 40000, generator=torch.Generator().manual_seed(0))
    exact = a.double() @ a.double().T
    assert rel_err(ief.gram(a), exact) < 1e-6
    b = torch.randn(3, 40000, generator=torch.Generator().manual_seed(1))
    assert rel_err(ief.gram(a, b), a.double() @ b.double().T) < 1e-6


def test_sample_labels_follow_the_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1, 0.0]]).repeat(4000, 1)
    torch.manual_seed(0)
    draws = ief.sample_labels(probs, 2)
    assert draws.shape == (4000, 2)
    freq = torch.bincount(draws.reshape(-1), minlength=4).double() / draws.numel()
    assert torch.allclose(freq, probs[0].double(), atol=0.02)
    assert freq[3] == 0


# --- it trains ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,lr", [("ief", 0.05), ("ef", 0.1), ("sf", 0.1)])
def test_loss_decreases_on_a_fixed_batch_at_4_bits(mode, lr):
    model = tiny(4, dtype=torch.float32)
    x, y = batch(8, 16)
    opt = natural(model, name=mode, lr=lr)
    losses = [float(opt.natural_step(x, y)) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.3, losses
    # the returned loss is the mean token loss of the weights entering the step
    with torch.no_grad():
        assert float(lm_loss(model(x), y)) < losses[-1]
