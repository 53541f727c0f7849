"""Validation losses of a trained model under the weight variants the study compares.

- val: the model as it would be deployed at the run's bits (quantise -> dequantise round trip;
  equal to the fake-quantised forward of a QAT run; the latent model for bits=16);
- latent: the unquantised master weights;
- ptq/<b>: post-training quantisation of the final weights at b bits (ptq.bits, 8/6/4 by
  default) by round to nearest, so an FP16 run yields the PTQ baselines QAT is compared against;
- ptq_clip/<b>, ptq_gptq/<b>: the strong PTQ arms (quant/ptq.py, docs/ptq.md): a per-row clip
  search, and GPTQ with those scales from Hessians of `calibration` batches of the training split;
  `ptq_cost` says what calibration they used and how long each took.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, ContextManager, Iterable

import torch

from qat_lab.models.gpt import GPT, lm_loss
from qat_lab.quant import FP_BITS, QuantConfig, latent_weights, round_trip_weights
from qat_lab.quant.config import PTQConfig

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
                     autocast: Callable[[], ContextManager] = nullcontext, ptq: PTQConfig | None = None,
                     calibration: list | None = None) -> dict:
    """All end-of-run losses at the run's quantiser settings (qcfg, bit-width included); see the
    module docstring. Returns a flat dict for the run record."""
    ptq = ptq or PTQConfig(methods=["rtn"])
    with latent_weights(model):
        latent = mean_loss(model, batches, autocast)
    losses = {FP_BITS: latent}
    ptq_bits = sorted({qcfg.bits, *ptq.bits} - {FP_BITS}, reverse=True)
    for b in ptq_bits:
        with round_trip_weights(model, replace(qcfg, bits=b)):
            losses[b] = mean_loss(model, batches, autocast)
    val = losses[qcfg.bits]
    out = {
        "val_loss": val, "val_bpb": to_bpb(val),
        "latent_val_loss": latent, "latent_val_bpb": to_bpb(latent),
        # In-run gap: what the round trip costs the weights this run actually learned.
        "quant_gap": val - latent,
        "ptq": {str(b): {"val_loss": losses[b], "val_bpb": to_bpb(losses[b])} for b in ptq_bits if b in ptq.bits
                or b == qcfg.bits},
        "finite": all(math.isfinite(v) for v in losses.values()),
    }
    strong = [m for m in ptq.methods if m != "rtn"]
    if strong:
        out.update(strong_ptq(model, qcfg, batches, to_bpb, autocast, ptq_bits, strong, calibration or []))
    return out


def strong_ptq(model: GPT, qcfg: QuantConfig, batches: list, to_bpb, autocast, bits: list[int], methods: list[str],
               calibration: list) -> dict:
    """ptq_clip / ptq_gptq losses at every bit-width, and what they cost (ptq_cost)."""
    from qat_lab.quant.ptq import calibrate, ptq_weights

    cost = {"calibration_batches": len(calibration), "calibration_tokens": sum(int(x.numel()) for x, _ in calibration),
            "hessian_s": 0.0, "eval_s": 0.0}
    hessians = None
    if "gptq" in methods:
        if not calibration:
            raise ValueError("GPTQ needs calibration batches of the training split")
        calib = calibrate(model, replace(qcfg, bits=bits[0]), calibration)
        hessians, cost["hessian_s"] = calib.hessians, calib.seconds
    out: dict = {}
    for method in methods:
        cost[f"{method}_s"] = 0.0
        arm = out.setdefault(f"ptq_{method}", {})
        for b in bits:
            with ptq_weights(model, replace(qcfg, bits=b), b, method, hessians) as info:
                start = time.perf_counter()
                loss = mean_loss(model, batches, autocast)
                cost["eval_s"] += time.perf_counter() - start
            cost[f"{method}_s"] += info.seconds
            arm[str(b)] = {"val_loss": loss, "val_bpb": to_bpb(loss)}
    out["ptq_cost"] = cost
    return out
