"""Weight-to-grid distance (METHOD section 6).

For each quantised matrix, u = W / s with s from the quantiser's own scale rule at the probe
bits, and d = |u - round(u)| in [0, 0.5]. Uniformly spread residuals give a mean of 0.25; weights
sitting on the grid give 0. We report the element-weighted mean over all matrices and the mean
per matrix. Unquantised (bits=16) runs are measured against the grid they would be quantised to.
"""

from __future__ import annotations

import torch

from qat_lab.models.gpt import GPT
from qat_lab.quant.fake_quant import FP_BITS, QuantConfig, grid_residuals
from qat_lab.quant.qat import quant_targets


def grid_bits_for(run_bits: int, qcfg: QuantConfig) -> int:
    """The grid a run is measured against: its own bits, or the probe bits for bits=16."""
    return qcfg.probe_bits if run_bits == FP_BITS else run_bits


@torch.no_grad()
def grid_distance(model: GPT, bits: int, qcfg: QuantConfig) -> tuple[float, dict[str, float]]:
    """(element-weighted mean distance, {matrix name: mean distance}) at grid `bits`."""
    total, count, per_layer = 0.0, 0, {}
    for name, mod in quant_targets(model, qcfg).items():
        d = grid_residuals(mod.weight, bits, qcfg)
        s = float(d.sum())
        per_layer[name] = s / d.numel()
        total += s
        count += d.numel()
    return (total / count if count else float("nan")), per_layer
