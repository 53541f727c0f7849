"""A small decoder-only transformer in the modded-nanogpt / parameter-golf family.

Pre-norm RMSNorm blocks, rotary position embedding, QK-norm, ReLU^2 MLP, no biases, a tied
input/output embedding, zero-initialised output projections and an optional tanh logit softcap.
Every 2-D weight inside a block is an ``nn.Linear``: those are the matrices the quantiser wraps
and the ones Muon updates (see ``qat_lab.quant.qat`` and ``qat_lab.optim.routing``).

Small-width CPU training spends much of a step in elementwise ops (docs/benchmarks_cpu_profile.md),
so three of them do less work than autograd's default: the rotary rotation (below), and RMSNorm's
backward on CPU and ReLU^2's backward (hand-written in cpu_ops.py). Each computes the same values
as the plain formulation, forward and gradients, bit for bit (tests/test_model_numerics.py keeps
the plain formulation and compares): under QAT a gradient that differs in its last bit moves a
weight across a rounding boundary now and then, and a few steps later the loss differs in its
fourth digit.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qat_lab.models.config import GPTConfig
from qat_lab.models.cpu_ops import relu_squared, rms_norm_cpu


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose gain follows the input's dtype. Under bf16 autocast the matmuls hand it
    bf16 activations while the gain is an fp32 master weight; torch then refuses its fused kernel
    (with a warning on every call) and takes the slow path. Casting the gain, a vector of ~1s,
    to bf16 costs nothing in accuracy (tested against fp32) and keeps the fused kernel.
    On CPU, where torch's RMSNorm is a composite rather than a kernel, cpu_ops.rms_norm_cpu does the work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight is None or self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        if x.device.type == "cpu" and w is not None and self.eps is not None and len(self.normalized_shape) == 1:
            return rms_norm_cpu(x, w, self.eps)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


class Rotary(nn.Module):
    """Rotary position embedding. Each head's two halves (x1, x2) are rotated as complex pairs:
        (x1, x2) -> (x1*cos + x2*sin, x2*cos - x1*sin) = x * [cos, cos] + swap(x) * [sin, -sin]
    with swap(x) = (x2, x1). The right-hand form is two full-width products, an add and a roll
    instead of four half-width products, an add, a sub, a cat and the slicing that chunk needs in
    backward, and it is the same arithmetic: x1*(-sin) = -(x1*sin) exactly, and a + (-b) = a - b.

    The tables are built once per (sequence length, heads, device, dtype): already in the
    activations' dtype (rounding to bf16 is sign-symmetric, so [sin, -sin] in bf16 is the bf16 sin
    negated), and materialised over the heads. A (1, T, 1, D) table broadcast against (B, T, H, D)
    leaves TensorIterator an inner loop of D elements; a contiguous (1, T, H, D) one gives it T*H*D,
    about 4x faster at D = 32 on CPU, for T*H*D floats of memory."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, seq_len: int, n_heads: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """([cos, cos], [sin, -sin]), each (1, seq_len, n_heads, head_dim) and contiguous."""
        key = (seq_len, n_heads, torch.device(device), dtype)
        hit = self._cache.get(key)
        # Tables built under torch.inference_mode (e.g. Lightning's validation loop) are inference
        # tensors that autograd refuses to save, so they are rebuilt once training resumes.
        if hit is None or (hit[0].is_inference() and not torch.is_inference_mode_enabled()):
            t = torch.arange(seq_len, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device))
            cos, sin = freqs.cos(), freqs.sin()
            shape = (1, seq_len, n_heads, 2 * cos.shape[-1])
            cos2 = torch.cat((cos, cos), dim=-1).to(dtype)[None, :, None, :].expand(shape).contiguous()
            sin2 = torch.cat((sin, -sin), dim=-1).to(dtype)[None, :, None, :].expand(shape).contiguous()
            if len(self._cache) >= 4:  # q and k (two entries under GQA), and an odd evaluation length
                self._cache.clear()
            self._cache[key] = hit = (cos2, sin2)
        return hit

    @staticmethod
    def rotate(x: torch.Tensor, cos2: torch.Tensor, sin2: torch.Tensor) -> torch.Tensor:
        # x: (B, T, H, D); rolling the last dim by D/2 swaps the halves (and its backward is a roll).
        return x * cos2 + x.roll(x.shape[-1] // 2, dims=-1) * sin2


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.k = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        # QK-norm keeps attention logits bounded, which matters once weights are quantised.
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_norm(self.q(x).view(B, T, self.n_head, self.hd))
        k = self.k_norm(self.k(x).view(B, T, self.n_kv, self.hd))
        v = self.v(x).view(B, T, self.n_kv, self.hd)
        q = Rotary.rotate(q, *self.rotary.tables(T, self.n_head, x.device, q.dtype))
        k = Rotary.rotate(k, *self.rotary.tables(T, self.n_kv, x.device, k.dtype))
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            is_causal=True, enable_gqa=self.n_kv != self.n_head,
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(relu_squared(self.fc(x)))  # ReLU^2, as in the modded-nanogpt lineage


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.embed_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        # The head is an nn.Linear even when tied, so the quantiser can wrap it like any matrix.
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.d_model ** -0.5
        nn.init.normal_(self.wte.weight, std=std)
        if self.lm_head.weight is not self.wte.weight:  # zeroing a tied head would zero the embedding
            nn.init.zeros_(self.lm_head.weight)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc):
                nn.init.normal_(lin.weight, std=lin.in_features ** -0.5)
            # Zero-initialised output projections: every block starts as the identity.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab) in float32."""
        x = self.embed_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.final_norm(x)).float()
        cap = self.cfg.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy in nats; reduction 'none' gives one loss per token."""
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
    return loss.view(targets.shape) if reduction == "none" else loss


def count_parameters(model: GPT) -> dict[str, int]:
    """Parameter counts. Size is reported as non-embedding parameters (METHOD section 2)."""
    embedding_ids = {id(model.wte.weight), id(model.lm_head.weight)}
    seen: set[int] = set()
    total = embedding = 0
    for p in model.parameters():  # parameters() already yields a tied tensor once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in embedding_ids:
            embedding += p.numel()
    return {"non_embedding": total - embedding, "embedding": embedding, "total": total}


__all__ = ["GPT", "GPTConfig", "lm_loss", "count_parameters"]
