"""Optimiser builders: base LRs and lr_mult, per-step hyperparameters, validation, and that each
optimiser really trains (Muon really orthogonalises the matrix updates)."""

import math

import pytest
import torch

from qat_lab.errors import ConfigError
from qat_lab.models.gpt import GPT, GPTConfig, lm_loss
from qat_lab.optim import AdamWConfig, IEFConfig, MuonConfig, apply_step_hparams, build_optimisers, param_group_names
from qat_lab.optim.build import BUILDERS
from qat_lab.validation import build_dataclass
from qat_lab.quant import QuantConfig, apply_qat

VOCAB = 256


def tiny(tie: bool = True) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(d_model=32, n_layer=2, n_head=2, tie_embeddings=tie), VOCAB)


def groups(optimisers) -> dict[str, dict]:
    return {g["group"]: g for opt in optimisers for g in opt.param_groups}


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(1))


# --- group names and base LRs ---------------------------------------------------------------------

def test_one_builder_per_config_class():
    assert set(BUILDERS) == {MuonConfig, AdamWConfig, IEFConfig}


@pytest.mark.parametrize("tie,cfg,expected", [
    (True, MuonConfig(), ["muon/matrices", "adamw/embed", "adamw/scalars"]),
    (False, MuonConfig(), ["muon/matrices", "adamw/embed", "adamw/head", "adamw/scalars"]),
    (True, AdamWConfig(), ["adamw/matrices", "adamw/embed", "adamw/scalars"]),
    (False, AdamWConfig(), ["adamw/matrices", "adamw/embed", "adamw/head", "adamw/scalars"]),
])
def test_group_names(tie, cfg, expected):
    assert param_group_names(build_optimisers(tiny(tie), cfg, 1.0)) == expected


def test_muon_base_lrs_follow_config_and_lr_mult():
    cfg = MuonConfig(matrix_lr=0.03, embed_lr=0.1, head_lr=0.01, scalar_lr=0.05)
    for mult in (1.0, 2.5):
        g = groups(build_optimisers(tiny(tie=False), cfg, mult))
        expected = {"muon/matrices": 0.03, "adamw/embed": 0.1, "adamw/head": 0.01, "adamw/scalars": 0.05}
        for name, lr in expected.items():
            assert g[name]["base_lr"] == pytest.approx(lr * mult)
            assert g[name]["lr"] == pytest.approx(lr * mult)  # initial lr == base_lr


def test_adamw_base_lrs_and_weight_decay():
    cfg = AdamWConfig(lr=1e-3, embed_lr=2e-3, scalar_lr=4e-3, weight_decay=0.1)
    g = groups(build_optimisers(tiny(tie=False), cfg, 0.5))
    assert g["adamw/matrices"]["base_lr"] == pytest.approx(5e-4)
    assert g["adamw/embed"]["base_lr"] == pytest.approx(1e-3)
    assert g["adamw/head"]["base_lr"] == pytest.approx(1e-3)
    assert g["adamw/scalars"]["base_lr"] == pytest.approx(2e-3)
    # decay on the hidden matrices only
    assert g["adamw/matrices"]["weight_decay"] == 0.1
    assert g["adamw/embed"]["weight_decay"] == g["adamw/head"]["weight_decay"] == g["adamw/scalars"]["weight_decay"] == 0.0


def test_muon_weight_decay_is_the_configured_one_not_torch_default():
    g = groups(build_optimisers(tiny(), MuonConfig(), 1.0))
    assert g["muon/matrices"]["weight_decay"] == 0.0  # torch.optim.Muon would default to 0.1
    assert g["adamw/scalars"]["weight_decay"] == 0.0


def test_apply_step_hparams_scales_every_group():
    optimisers = build_optimisers(tiny(tie=False), MuonConfig(), 3.0)
    apply_step_hparams(optimisers, 10, 0.25)
    for g in groups(optimisers).values():
        assert g["lr"] == pytest.approx(g["base_lr"] * 0.25)
    apply_step_hparams(optimisers, 11, 0.0)
    assert all(g["lr"] == 0.0 for g in groups(optimisers).values())


# --- momentum warmup ------------------------------------------------------------------------------

def muon_group(optimisers) -> dict:
    return groups(optimisers)["muon/matrices"]


def test_momentum_warmup_is_linear_then_constant():
    cfg = MuonConfig(momentum=0.95, momentum_warmup_start=0.85, momentum_warmup_steps=100)
    optimisers = build_optimisers(tiny(), cfg, 1.0)
    assert muon_group(optimisers)["momentum"] == pytest.approx(0.85)  # before the first call
    for step, expected in [(0, 0.85), (50, 0.90), (100, 0.95), (500, 0.95)]:
        apply_step_hparams(optimisers, step, 1.0)
        assert muon_group(optimisers)["momentum"] == pytest.approx(expected), step


def test_no_momentum_warmup_by_default():
    optimisers = build_optimisers(tiny(), MuonConfig(momentum=0.9), 1.0)
    for step in (0, 5):
        apply_step_hparams(optimisers, step, 1.0)
        assert muon_group(optimisers)["momentum"] == pytest.approx(0.9)


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,key,value", [
    (MuonConfig, "matrix_lr", -1),
    (MuonConfig, "embed_lr", 0.0),
    (MuonConfig, "head_lr", -0.1),
    (MuonConfig, "scalar_lr", float("nan")),
    (MuonConfig, "momentum", 1.0),
    (MuonConfig, "momentum_warmup_start", -0.1),
    (MuonConfig, "momentum_warmup_steps", -5),
    (MuonConfig, "ns_steps", 0),
    (MuonConfig, "weight_decay", -0.1),
    (MuonConfig, "adjust_lr_fn", "moonshot"),
    (MuonConfig, "adam_betas", (0.9, 1.0)),
    (MuonConfig, "adam_betas", [0.9]),
    (MuonConfig, "adam_eps", 0.0),
    (MuonConfig, "nesterov", "yes"),
    (AdamWConfig, "lr", -3e-3),
    (AdamWConfig, "embed_lr", "fast"),
    (AdamWConfig, "scalar_lr", 0),
    (AdamWConfig, "betas", (-0.1, 0.95)),
    (AdamWConfig, "weight_decay", -1.0),
])
def test_bad_values_name_the_key(cls, key, value):
    with pytest.raises(ConfigError, match=rf"^optim\.{key}=") as err:
        cls(**{key: value})
    assert "\n" not in str(err.value)


def test_adamw_group_lrs_follow_lr_unless_set():
    cfg = AdamWConfig(lr=1e-3)
    assert cfg.embed_lr == cfg.scalar_lr == 1e-3
    assert AdamWConfig(lr=1e-3, embed_lr=5e-3).embed_lr == 5e-3


def test_betas_accept_a_yaml_list():
    assert MuonConfig(adam_betas=[0.8, 0.99]).adam_betas == (0.8, 0.99)
    assert AdamWConfig(betas=[0.8, 0.99]).betas == (0.8, 0.99)


def test_the_config_group_names_its_dataclass():
    cfg = build_dataclass({"_target_": "qat_lab.optim.config.AdamWConfig", "lr": 1e-3, "betas": [0.9, 0.99]}, "optim")
    assert isinstance(cfg, AdamWConfig) and cfg.lr == 1e-3 and cfg.betas == (0.9, 0.99)
    with pytest.raises(ConfigError, match=r"^optim\.lr is not an option of MuonConfig; known: .*matrix_lr"):
        build_dataclass({"_target_": "qat_lab.optim.config.MuonConfig", "lr": 0.1}, "optim")


def test_wrong_config_name_is_rejected():
    with pytest.raises(ConfigError, match=r"^optim\.name=adamw is not one of muon$"):
        MuonConfig(name="adamw")


# --- the optimisers work --------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [MuonConfig(), AdamWConfig()], ids=["muon", "adamw"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_loss_decreases_on_a_fixed_batch(cfg, tie):
    model, x = tiny(tie), batch()
    optimisers = build_optimisers(model, cfg, 1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(20):
        apply_step_hparams(optimisers, step, 1.0)
        loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        for opt in optimisers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses
    # every parameter was trained by some optimiser (none silently left out)
    for n, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n


def one_step_update(cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """Update of blocks[0].mlp.proj after one step, and that weight's gradient."""
    model, x = tiny(), batch()
    optimisers = build_optimisers(model, cfg, 1.0)
    # mlp.proj: its gradient is non-zero at init (the *input* side of a zero-init projection
    # gets a zero gradient), and 64 tokens give a full-rank 32 x 128 gradient.
    w = model.blocks[0].mlp.proj.weight
    w0 = w.detach().clone()
    lm_loss(model(x[:, :-1]), x[:, 1:]).backward()
    grad = w.grad.detach().clone()
    for opt in optimisers:
        opt.step()
    return w.detach() - w0, grad


def test_muon_update_is_orthogonalised():
    update, grad = one_step_update(MuonConfig(matrix_lr=0.02))
    sv = torch.linalg.svdvals(update.double())
    sg = torch.linalg.svdvals(grad.double())
    assert sg.max() / sg.min() > 5, "gradient too well-conditioned for this test to mean anything"
    # Newton-Schulz maps every singular value to ~1 (the quintic lands in roughly [0.5, 1.5]), then
    # the update is scaled by lr * sqrt(max(1, rows/cols)) = 0.02 for this 32 x 128 matrix.
    assert sv.max() / sv.min() < 2.5
    assert torch.all((sv > 0.3 * 0.02) & (sv < 1.7 * 0.02)), sv


def test_adamw_update_is_not_orthogonalised():
    # Contrast for the test above: AdamW's first step is ~lr * sign(grad), far from orthogonal,
    # so a routing bug that sent matrices to AdamW would fail the Muon test.
    update, _ = one_step_update(AdamWConfig(weight_decay=0.0))
    sv = torch.linalg.svdvals(update.double())
    assert sv.max() / sv.min() > 4


def test_muon_trains_a_qat_model():
    model, x = tiny(), batch()
    apply_qat(model, QuantConfig(bits=4))
    optimisers = build_optimisers(model, MuonConfig(), 1.0)
    assert groups(optimisers)["muon/matrices"]["param_names"][0].startswith("blocks.")
    losses = []
    for step in range(8):
        apply_step_hparams(optimisers, step, 1.0)
        loss = lm_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        for opt in optimisers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_group_metadata_survives_a_checkpoint_round_trip():
    cfg = MuonConfig(momentum_warmup_steps=10)
    saved = [opt.state_dict() for opt in build_optimisers(tiny(), cfg, 2.0)]
    fresh = build_optimisers(tiny(), cfg, 1.0)
    for opt, sd in zip(fresh, saved):
        opt.load_state_dict(sd)
    g = groups(fresh)
    assert g["muon/matrices"]["base_lr"] == pytest.approx(0.04)
    apply_step_hparams(fresh, 5, 1.0)
    assert g["muon/matrices"]["momentum"] == pytest.approx(0.90)
