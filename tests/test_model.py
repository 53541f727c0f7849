"""The decoder LM (METHOD section 2)."""

import pytest
import torch
import torch.nn as nn

from qat_lab.errors import ConfigError
from qat_lab.models.gpt import GPT, GPTConfig, count_parameters, lm_loss

VOCAB = 24


def _model(seed: int = 0, randomise: bool = True, **overrides) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(d_model=32, n_layer=2, n_head=2)
    cfg.update(overrides)
    model = GPT(GPTConfig(**cfg), vocab_size=VOCAB)
    if randomise:  # non-zero projections, so that blocks actually mix positions
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(std=0.3)
    return model


def _tokens(B: int = 2, T: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_dtype():
    model = _model()
    logits = model(_tokens(3, 7))
    assert logits.shape == (3, 7, VOCAB) and logits.dtype == torch.float32
    loss = lm_loss(logits, _tokens(3, 7))
    assert loss.shape == () and torch.isfinite(loss)
    per_token = lm_loss(logits, _tokens(3, 7), reduction="none")
    assert per_token.shape == (3, 7) and torch.allclose(per_token.mean(), loss)


@pytest.mark.parametrize("j", [0, 4, 9])
def test_causal(j):
    model = _model()
    x = _tokens(1, 10)
    y = x.clone()
    y[0, j] = (x[0, j] + 1) % VOCAB
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :j], b[:, :j], atol=1e-6)
    assert not torch.allclose(a[:, j:], b[:, j:])  # the changed position and later ones do see it


def test_positions_matter():
    # Rotary embedding: the same token at different positions after a shared prefix differs.
    model = _model()
    x = torch.tensor([[3, 5, 5, 5]])
    logits = model(x)
    assert not torch.allclose(logits[0, 2], logits[0, 3])


def test_tied_embedding_is_one_tensor():
    model = _model(randomise=False)
    assert model.lm_head.weight is model.wte.weight
    names = [n for n, _ in model.named_parameters()]
    assert "wte.weight" in names and "lm_head.weight" not in names
    untied = _model(randomise=False, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight
    assert torch.equal(untied.lm_head.weight, torch.zeros_like(untied.lm_head.weight))
    # A gradient step on the tied table moves the head too.
    lm_loss(model(_tokens()), _tokens(seed=2)).backward()
    assert model.wte.weight.grad is model.lm_head.weight.grad


def test_reset_parameters_keeps_tied_embedding():
    model = _model(randomise=False)
    model.reset_parameters()
    assert model.wte.weight.abs().sum() > 0 and model.lm_head.weight is model.wte.weight


def test_zero_init_projections_make_blocks_identity():
    model = _model(randomise=False)
    h = torch.randn(2, 6, 32)
    for block in model.blocks:
        assert torch.equal(block.attn.proj.weight, torch.zeros_like(block.attn.proj.weight))
        assert torch.equal(block.mlp.proj.weight, torch.zeros_like(block.mlp.proj.weight))
        assert torch.equal(block(h), h)
    # So at init the logits are those of the model with no blocks at all.
    x = _tokens()
    no_blocks = model.lm_head(model.final_norm(model.embed_norm(model.wte(x))))
    assert torch.allclose(model(x), 30.0 * torch.tanh(no_blocks / 30.0), atol=1e-6)


def test_softcap_bounds_logits_and_is_cap_tanh():
    capped = _model(logit_softcap=5.0)
    raw = GPT(GPTConfig(d_model=32, n_layer=2, n_head=2, logit_softcap=None), vocab_size=VOCAB)
    raw.load_state_dict(capped.state_dict())
    with torch.no_grad():
        capped.wte.weight.mul_(50)  # huge logits
        raw.wte.weight.mul_(50)
    x = _tokens()
    a, b = capped(x), raw(x)
    assert a.abs().max() <= 5.0 and b.abs().max() > 5.0
    assert torch.allclose(a, 5.0 * torch.tanh(b / 5.0), atol=1e-5)


def test_gqa_runs_and_equals_multi_head_with_repeated_kv_heads():
    gqa = _model(d_model=64, n_head=4, n_kv_head=2)
    hd = 16
    assert gqa.blocks[0].attn.k.weight.shape == (2 * hd, 64) and gqa.blocks[0].attn.q.weight.shape == (64, 64)
    mha = GPT(GPTConfig(d_model=64, n_layer=2, n_head=4), vocab_size=VOCAB)
    state = gqa.state_dict()
    for key in list(state):
        if key.endswith(("attn.k.weight", "attn.v.weight")):  # query head h reads kv head h // 2
            state[key] = state[key].view(2, hd, 64).repeat_interleave(2, dim=0).reshape(4 * hd, 64)
    mha.load_state_dict(state)
    x = _tokens()
    out = gqa(x)
    assert torch.allclose(out, mha(x), atol=1e-5)
    lm_loss(out, _tokens(seed=3)).backward()
    assert gqa.blocks[0].attn.k.weight.grad.abs().sum() > 0


def test_training_after_inference_mode_evaluation():
    # Rotary tables cached under inference_mode (Lightning's validation) must not break training.
    model = _model()
    x = _tokens()
    with torch.inference_mode():
        model(x)
    lm_loss(model(x), x).backward()
    assert model.blocks[0].attn.q.weight.grad is not None


@pytest.mark.parametrize("kwargs, key", [
    ({"d_model": 30, "n_head": 4}, "model.d_model"),
    ({"d_model": 12, "n_head": 4}, "head_dim"),
    ({"n_head": 4, "d_model": 32, "n_kv_head": 3}, "model.n_kv_head"),
    ({"n_layer": 0}, "model.n_layer"),
    ({"n_head": -2}, "model.n_head"),
    ({"n_kv_head": -2}, "model.n_kv_head"),
    ({"d_model": 32.5}, "model.d_model"),
    ({"mlp_ratio": 0.0}, "model.mlp_ratio"),
])
def test_bad_shapes_raise_one_line_config_error(kwargs, key):
    cfg = dict(d_model=32, n_layer=2, n_head=2)
    cfg.update(kwargs)
    with pytest.raises(ConfigError) as e:
        GPTConfig(**cfg)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("tie", [True, False])
def test_count_parameters(tie):
    d, L, hd = 32, 3, 16
    model = GPT(GPTConfig(d_model=d, n_layer=L, n_head=2, tie_embeddings=tie), vocab_size=VOCAB)
    counts = count_parameters(model)
    # Blocks: 4 d^2 attention + 8 d^2 MLP + 2 pre-norms (d) + QK-norms (hd each); plus 2 outer norms.
    assert counts["non_embedding"] == 12 * L * d * d + L * (2 * d + 2 * hd) + 2 * d
    assert counts["embedding"] == VOCAB * d * (1 if tie else 2)
    assert counts["total"] == sum(p.numel() for p in model.parameters()) == counts["non_embedding"] + counts["embedding"]
    assert model.cfg.matmul_params(VOCAB) == 12 * L * d * d + VOCAB * d
    assert model.cfg.parameter_counts(VOCAB) == counts  # the arithmetic the preflight uses
    assert all(isinstance(m, nn.Linear) and m.bias is None for m in model.modules() if isinstance(m, nn.Linear))


def test_bf16_autocast_on_cpu_matches_fp32_and_keeps_the_fused_norm():
    """The norms' gains follow the activations' dtype, so torch's fused RMSNorm runs under bf16
    autocast (no 'Mismatch dtype ... Cannot dispatch to fused implementation' warning)."""
    import warnings

    torch.manual_seed(0)
    model = GPT(GPTConfig(d_model=64, n_layer=2, n_head=2), VOCAB)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.1)
    x = torch.randint(0, VOCAB, (2, 17))
    fp32 = lm_loss(model(x[:, :-1]), x[:, 1:])
    with warnings.catch_warnings(record=True) as caught, torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("always")
        bf16 = lm_loss(model(x[:, :-1]), x[:, 1:])
    assert not [w for w in caught if "Mismatch dtype" in str(w.message)]
    assert bf16.item() == pytest.approx(fp32.item(), rel=2e-3)
