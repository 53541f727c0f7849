"""Fake quantisation with a straight-through estimator (METHOD section 3).

Signed symmetric integer grid with qmax = 2^(bits-1) - 1. For each scale group (a row by default)
s = max|W| / qmax, and the forward pass sees W_q = clamp(round(W / s), qmin, qmax) * s.
The backward pass treats quantisation as the identity (STE).

Two details are chosen to match PyTorch's ``torch.fake_quantize_per_channel_affine`` bit for bit
(tests/test_fake_quant.py checks it): W / s is computed as W * (1 / s) in the weight's dtype, and
rounding is half-to-even. The STE is written as ``q.detach() + (w - w.detach())`` rather than a
custom autograd.Function: its value is exactly q, its gradient is exactly 1, and it works under
torch.func.vmap (needed by the iEF optimiser's per-sample gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qat_lab.errors import ConfigError
from qat_lab.quant.bits import FP_BITS, validate_bits

TINY_SCALE = 1e-8
"""Scale floor for all-zero groups (the zero-initialised output projections at step 0)."""


@dataclass
class QuantConfig:
    """How weights are fake-quantised. The bit-width itself is the top-level `bits` axis."""

    range: str = "narrow"
    """'narrow': codes -qmax..qmax (symmetric); 'full': -qmax-1..qmax (one extra negative code)."""
    scale_rule: str = "absmax"
    """'absmax': s = max|W| / qmax; 'percentile': s = percentile(|W|) / qmax (clips outliers)."""
    percentile: float = 99.9
    """Percentile of |W| used when scale_rule='percentile'."""
    granularity: str = "row"
    """One scale per output 'row', per 'group' of group_size inputs within a row, or per 'tensor'."""
    group_size: int = 64
    """Inputs per scale group when granularity='group' (must divide the matrix's input width)."""
    scale_floor: str = "tiny"
    """'tiny': floor s at 1e-8; 'inv_qmax': floor s at 1/qmax (a parameter-golf variant)."""
    quantize_embedding: bool = False
    """Also quantise the token embedding and output head (off in the paper's setup)."""
    probe_bits: int = 6
    """Grid used for the weight-to-grid distance of unquantised (bits=16) runs."""

    def __post_init__(self) -> None:
        choices = {"range": ("narrow", "full"), "scale_rule": ("absmax", "percentile"),
                   "granularity": ("row", "group", "tensor"), "scale_floor": ("tiny", "inv_qmax")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"quant.{key}={getattr(self, key)} is not one of {', '.join(allowed)}")
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"quant.percentile={self.percentile} must be in (0, 100]")
        if self.group_size <= 0:
            raise ConfigError(f"quant.group_size={self.group_size} must be positive")
        if validate_bits(self.probe_bits, "quant.probe_bits") == FP_BITS:
            raise ConfigError("quant.probe_bits=16 is not a grid: use 2..8")


def code_range(bits: int, cfg: QuantConfig) -> tuple[int, int]:
    """(qmin, qmax) of the integer codes."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax - 1 if cfg.range == "full" else -qmax), qmax


def _grouped(w: torch.Tensor, cfg: QuantConfig) -> torch.Tensor:
    """View w so that the last dim is one scale group."""
    if cfg.granularity == "row":
        return w.reshape(w.shape[0], -1)
    if cfg.granularity == "tensor":
        return w.reshape(1, -1)
    if w.shape[-1] % cfg.group_size:
        raise ConfigError(f"quant.group_size={cfg.group_size} does not divide a matrix of width {w.shape[-1]}")
    return w.reshape(w.shape[0], -1, cfg.group_size)


def scales(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """Per-group scale, shaped to broadcast against ``_grouped(w)``. No gradient flows through it."""
    g = _grouped(w.detach(), cfg).abs()
    if cfg.scale_rule == "absmax":
        amax = g.amax(dim=-1, keepdim=True)
    else:
        amax = torch.quantile(g.float(), cfg.percentile / 100.0, dim=-1, keepdim=True).to(g.dtype)
    qmax = 2 ** (bits - 1) - 1
    floor = 1.0 / qmax if cfg.scale_floor == "inv_qmax" else TINY_SCALE
    return (amax / qmax).clamp_min(floor)


def quantize_dequantize(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """The quantise -> dequantise round trip, without any gradient trick."""
    s = scales(w, bits, cfg)
    qmin, qmax = code_range(bits, cfg)
    g = _grouped(w, cfg)
    q = torch.clamp(torch.round(g * (1.0 / s)), qmin, qmax) * s
    return q.reshape(w.shape)


def fake_quantize(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """Forward value is the round trip; the gradient w.r.t. w is the identity (STE)."""
    q = quantize_dequantize(w.detach(), bits, cfg)
    return q + (w - w.detach())


def grid_residuals(w: torch.Tensor, bits: int, cfg: QuantConfig) -> torch.Tensor:
    """|u - round(u)| with u = W / s: distance of every weight to its nearest grid point, in [0, 0.5]."""
    w = w.detach().float()
    u = _grouped(w, cfg) * (1.0 / scales(w, bits, cfg))
    return (u - torch.round(u)).abs().reshape(w.shape)
