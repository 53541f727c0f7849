"""Validation losses of a trained model under the weight variants the study compares.

- val: the model as it would be deployed at the run's bits (quantise -> dequantise round trip;
  equal to the fake-quantised forward of a QAT run; the latent model for bits=16);
- latent: the unquantised master weights;
- ptq/<b>: post-training quantisation of the final weights at b bits (8/6/4 by default), so an
  FP16 run yields the PTQ baselines that QAT is compared against.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, ContextManager, Iterable

import torch

from qat_lab.models.gpt import GPT, lm_loss
from qat_lab.quant import FP_BITS, QuantConfig, latent_weights, round_trip_weights

PTQ_BITS = (8, 6, 4)


@torch.no_grad()
def mean_loss(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              autocast: Callable[[], ContextManager] = nullcontext) -> float:
    """Token-weighted mean next-token loss (nats) over `batches`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            logits = model(x)
        total += float(lm_loss(logits.float(), y, reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1)


def final_evaluation(model: GPT, qcfg: QuantConfig, batches: list, to_bpb: Callable[[float], float],
                     autocast: Callable[[], ContextManager] = nullcontext, ptq_bits: Iterable[int] = PTQ_BITS) -> dict:
    """All end-of-run losses at the run's quantiser settings (qcfg, bit-width included); see the
    module docstring. Returns a flat dict for the run record."""
    with latent_weights(model):
        latent = mean_loss(model, batches, autocast)
    losses = {FP_BITS: latent}
    for b in sorted({qcfg.bits, *ptq_bits} - {FP_BITS}, reverse=True):
        with round_trip_weights(model, replace(qcfg, bits=b)):
            losses[b] = mean_loss(model, batches, autocast)
    val = losses[qcfg.bits]
    out = {
        "val_loss": val, "val_bpb": to_bpb(val),
        "latent_val_loss": latent, "latent_val_bpb": to_bpb(latent),
        # In-run gap: what the round trip costs the weights this run actually learned.
        "quant_gap": val - latent,
        "ptq": {str(b): {"val_loss": losses[b], "val_bpb": to_bpb(losses[b])} for b in ptq_bits},
        "finite": all(math.isfinite(v) for v in losses.values()),
    }
    return out
