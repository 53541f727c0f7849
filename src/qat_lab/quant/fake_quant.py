"""Fake quantisation with a straight-through estimator (METHOD section 3).

Signed symmetric integer grid with qmax = 2^(bits-1) - 1. For each scale group (a row by default)
s = max|W| / qmax, and the forward pass sees W_q = clamp(round(W / s), qmin, qmax) * s.
The backward pass treats quantisation as the identity (STE).

Two details are chosen to match PyTorch's ``torch.fake_quantize_per_channel_affine`` bit for bit
(tests/test_fake_quant.py checks it): W / s is computed as W * (1 / s) in the weight's dtype, and
rounding is half-to-even. The STE is written as ``q.detach() + (w - w.detach())`` rather than a
custom autograd.Function: its value is exactly q, its gradient is exactly 1, and it works under
torch.func.vmap (needed by the iEF optimiser's per-sample gradients). That is also why the
quantiser is written here rather than called from torch's fused op: the fused op has no vmap rule.

These functions take the bit-width explicitly (post-training quantisation asks for other
bit-widths than the run's); everything above them reads it from QuantConfig.bits.
"""

from __future__ import annotations

import torch

from qat_lab.errors import ConfigError
from qat_lab.quant.config import FP_BITS, QuantConfig, qmax_of, validate_bits

TINY_SCALE = 1e-8
"""Scale floor for all-zero groups (the zero-initialised output projections at step 0)."""


def code_range(bits: int, cfg: QuantConfig) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes."""
    qmax = qmax_of(bits)
    return (-qmax - 1 if cfg.range == "full" else -qmax), qmax


def grouped(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """View w so that the last dim is one scale group."""
    if cfg.granularity == "row":
        return w.reshape(w.shape[0], -1)
    if cfg.granularity == "tensor":
        return w.reshape(1, -1)
    if w.shape[-1] % cfg.group_size:
        raise ConfigError(f"quant.group_size={cfg.group_size} does not divide a matrix of width {w.shape[-1]}")
    return w.reshape(w.shape[0], -1, cfg.group_size)


def scale_floor(bits: int, cfg: QuantConfig) -> float:
    return 1.0 / qmax_of(bits) if cfg.scale_floor == "inv_qmax" else TINY_SCALE


def scales(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """Per-group scale, shaped to broadcast against ``grouped(w)``. No gradient flows through it."""
    g = grouped(w.detach(), cfg).abs()
    if cfg.scale_rule == "absmax":
        amax = g.amax(dim=-1, keepdim=True)
    else:
        amax = torch.quantile(g.float(), cfg.percentile / 100.0, dim=-1, keepdim=True).to(g.dtype)
    return (amax / qmax_of(bits)).clamp_min(scale_floor(bits, cfg))


def quantise_with_scales(w: torch.Tensor, s: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """The round trip clamp(round(W * (1/s)), qmin, qmax) * s with given scales, shaped like
    scales(w, bits, cfg) (the clip search and GPTQ choose their own)."""
    g = grouped(w, cfg)
    if s.shape != g.shape[:-1] + (1,):
        raise ValueError(f"scales of shape {tuple(s.shape)} do not fit a {tuple(w.shape)} weight with "
                         f"granularity={cfg.granularity}: expected {tuple(g.shape[:-1] + (1,))}")
    qmin, qmax = code_range(bits, cfg)
    q = torch.clamp(torch.round(g * (1.0 / s)), qmin, qmax) * s
    return q.reshape(w.shape)


def quantise_dequantise(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """The quantise -> dequantise round trip, without any gradient trick."""
    return quantise_with_scales(w, scales(w, bits, cfg), bits, cfg)


def fake_quantise(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """Forward value is the round trip; the gradient w.r.t. w is the identity (STE)."""
    q = quantise_dequantise(w.detach(), bits, cfg)
    return q + (w - w.detach())


def grid_residuals(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """|u - round(u)| with u = W / s: distance of every weight to its nearest grid point, in [0, 0.5]."""
    w = w.detach().float()
    u = grouped(w, cfg) * (1.0 / scales(w, bits, cfg))
    return (u - torch.round(u)).abs().reshape(w.shape)


__all__ = ["FP_BITS", "QuantConfig", "TINY_SCALE", "code_range", "grouped", "scales", "quantise_with_scales",
           "quantise_dequantise", "fake_quantise", "grid_residuals", "validate_bits"]
