"""Hand-written backward passes for two of the model's elementwise ops, for CPU training.

At the CPU presets' widths a step spends a third of its time in elementwise ops, and autograd's
backward of these two makes several full-size passes where two suffice. Both compute exactly the
values of the plain formulation, forward and gradients, bit for bit (tests/test_model_numerics.py):
    rms_norm_cpu(x, w, eps)  ==  F.rms_norm(x, (D,), w, eps) on CPU (torch's composite there)
    relu_squared(x)          ==  F.relu(x).square()
Both work under torch.func.vmap (iEF's per-sample gradients): generate_vmap_rule, and what
backward needs is saved from outputs in setup_context.
"""

from __future__ import annotations

import torch


def _opmath(t: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32, others unchanged: the precision torch's RMSNorm computes in."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _RMSNormCPU(torch.autograd.Function):
    """F.rms_norm with a hand-written backward, for CPU training: the same values, bit for bit.

    On CPU torch's "fused" RMSNorm is a composite (pow, mean, add, rsqrt, two muls) that autograd
    differentiates op by op, with several full-size passes only to broadcast a per-row number
    (mean's backward expands it to the input's shape, pow's copies x and doubles it). The forward
    here is that composite, term for term; the backward is autograd's chain with the per-row
    factors kept per row:
        dx = (g*w) * rstd  +  c * x,   c = 2 * (-0.5 * sum(g*w * x) * rstd^3) / D
        dw = sum over rows of g * xhat
    Each product is one autograd forms (a power-of-two factor moved between operands is exact), so
    the gradients equal autograd's bit for bit in about half the passes. Two details keep them so:
    x is passed twice and gets its two terms as two gradients, which autograd then sums in the
    order it sums the composite's (residual stream first: a + b + c is not c + a + b in floating
    point); in bf16 the two terms meet in fp32, before the cast back, as in the composite.
    xhat and rstd are outputs only so that setup_context can save them (the form torch.func's vmap
    needs: iEF's per-sample gradients)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, _x_again, weight, eps):
        xf = _opmath(x)
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        xhat = xf * rstd
        return (xhat * _opmath(weight)).to(x.dtype), xhat, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, weight, _ = inputs
        _, xhat, rstd = output
        ctx.mark_non_differentiable(xhat, rstd)
        ctx.set_materialize_grads(False)  # else autograd zero-fills a gradient for xhat and rstd
        ctx.save_for_backward(x, xhat, rstd, weight)

    @staticmethod
    def backward(ctx, g, _xhat_grad, _rstd_grad):
        if g is None:
            return None, None, None, None
        x, xhat, rstd, weight = ctx.saved_tensors
        gf, xf = _opmath(g), _opmath(x)
        dx = dx_again = dw = None
        if ctx.needs_input_grad[0]:
            gw = gf * _opmath(weight)
            c = ((-0.5 * (gw * xf).sum(-1, keepdim=True)) * rstd.pow(3)) / xf.shape[-1] * 2
            dx, dx_again = gw * rstd, c * xf
            if xf is not x:  # bf16: the two terms meet in fp32
                dx, dx_again = (dx + dx_again).to(x.dtype), None
        if ctx.needs_input_grad[2]:
            dw = (gf * xhat).sum(dim=tuple(range(g.dim() - 1))).to(weight.dtype)
        return dx, dx_again, dw, None


class _ReLUSquared(torch.autograd.Function):
    """relu(x)^2 with the backward 2*relu(x)*g in two passes. Autograd's own, through
    relu(x).square(), takes five: pow(h, 1) (a copy), 2*, *g and relu's threshold mask. Bit for bit
    the same gradient: scaling by 2 is exact, and relu(x) = 0 wherever the mask would zero it."""

    generate_vmap_rule = True  # torch.func (iEF's per-sample gradients); h is an output so it can be saved

    @staticmethod
    def forward(x):
        h = torch.relu(x)
        return h * h, h

    @staticmethod
    def setup_context(ctx, inputs, output):
        h = output[1]
        ctx.mark_non_differentiable(h)
        ctx.set_materialize_grads(False)  # else autograd zero-fills a gradient for h
        ctx.save_for_backward(h)

    @staticmethod
    def backward(ctx, g, _h_grad):
        if g is None:
            return None
        (h,) = ctx.saved_tensors
        return (g * h).mul_(2.0)


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim with gain `weight` (see _RMSNormCPU)."""
    return _RMSNormCPU.apply(x, x, weight, eps)[0]


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """relu(x)^2 (see _ReLUSquared)."""
    return _ReLUSquared.apply(x)[0]
