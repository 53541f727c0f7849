"""Weight-to-grid distance (METHOD section 6).

For each quantised matrix, u = W / s with s from the quantiser's own scale rule at the probe
bits, and d = |u - round(u)| in [0, 0.5]. Uniformly spread residuals give a mean of 0.25; weights
sitting on the grid give 0. We report the element-weighted mean over all matrices and the mean
per matrix. Unquantised (bits=16) runs are measured against the grid they would be quantised to.
"""

from __future__ import annotations

import torch

from qat_lab.models.gpt import GPT
from qat_lab.quant.config import QuantConfig
from qat_lab.quant.fake_quant import grid_residuals
from qat_lab.quant.qat import quant_targets


@torch.no_grad()
def grid_distance(model: GPT, qcfg: QuantConfig) -> tuple[float, dict[str, float]]:
    """(element-weighted mean distance, {matrix name: mean distance}) on the run's grid
    (qcfg.grid_bits: its own bits, the probe bits for bits=16)."""
    total, count, per_layer = 0.0, 0, {}
    for name, mod in quant_targets(model, qcfg).items():
        d = grid_residuals(mod.weight, qcfg.grid_bits, qcfg)
        s = float(d.sum())
        per_layer[name] = s / d.numel()
        total += s
        count += d.numel()
    return (total / count if count else float("nan")), per_layer
