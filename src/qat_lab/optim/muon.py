"""torch.optim.Muon with the precision of its Newton-Schulz iteration as a setting.

torch's Muon orthogonalises every update in bfloat16: on a GPU that is a tensor-core matmul
and the reason the method is cheap. A CPU without native bfloat16 matmul (no AVX512-BF16/AMX,
like the 2-core machines this project's CPU presets target) emulates it, and the emulation is
slow: a 128 x 512 bfloat16 product takes ~20 ms here against ~0.5 ms in float32, which made
the Newton-Schulz iteration three quarters of a cpu-s training step. `ns_dtype="auto"` keeps
torch's bfloat16 on accelerators and uses float32 on CPU, which is both faster and closer to
the exact orthogonalisation the bfloat16 iteration approximates.

`step()` computes torch's update in torch's order (momentum, Nesterov blend, Newton-Schulz with
torch's coefficients and normalisation, torch's LR adjustment, decoupled weight decay); only the
iteration's dtype is chosen here. tests/test_muon_precision.py checks it against
torch.optim.Muon bit for bit with ns_dtype="bfloat16", over several steps.
"""

from __future__ import annotations

import torch
from torch.optim import Muon as TorchMuon
from torch.optim._muon import _adjust_lr  # torch's LR scaling for the matrix shape (pinned torch)

from qat_lab.optim.config import NS_DTYPES


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    if ns_dtype == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, ns_dtype)


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon (approximately U V^T of the
    update's SVD U S V^T), run in `dtype`; returned in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x.div(x.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2
        x = torch.addmm(x, poly, x, beta=a)                    # a X + (b G + c G^2) X
    return x.T if tall else x


class Muon(TorchMuon):
    """torch.optim.Muon plus `ns_dtype` (see the module docstring); same groups, state and options."""

    def __init__(self, params, ns_dtype: str = "auto", **kwargs):
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"ns_dtype={ns_dtype} is not one of {', '.join(NS_DTYPES)}")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.ndim != 2 or grad.is_sparse or torch.is_complex(p):
                    raise ValueError("Muon takes real 2-D parameters with dense gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       resolve_ns_dtype(self.ns_dtype, p.device))
                lr = group["lr"]
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
