"""iEF, EF and SF: natural-gradient descent from per-sample gradients (METHOD section 5).

Wu, Yu, Zhang, Woodland, "An Improved Empirical Fisher Approximation for Natural Gradient
Descent" (NeurIPS 2024). For a decoder LM a *sample is a sequence*: with N sequences in the
batch, l_n = sum of sequence n's token losses and J the N x P matrix of per-sample gradients
(row n = d l_n / d theta, every trainable parameter, embedding included), one step is

    iEF: dtheta = J^T (J J^T + lambda I)^-1 s      s_n = sum_t ||softmax(z_nt) - onehot(y_nt)||^2
    EF:  dtheta = J^T (J J^T + lambda I)^-1 1
    SF:  dtheta = (F_s + lambda I)^-1 g            g = J^T 1, F_s = (1/M) J_s^T J_s
    theta <- theta - lr * dtheta

z are the logits the cross-entropy sees (after the softcap), so s_n = ||d l_n / d z_n||^2. J_s holds
the per-sample gradients of labels sampled from the model's own predictive distribution (M draws
per token, `sf_samples`); SF goes through the Woodbury identity, so only (N M) x (N M) systems are
solved: (F_s + lambda I)^-1 g = (g - J_s^T (J_s J_s^T + M lambda I)^-1 J_s g) / lambda.
lambda = damping_rel * mean (or max) of diag(J J^T), i.e. relative to the per-sample squared
gradient norms, so one damping value means the same thing at every loss scale and bit-width.
The systems are solved in float64. No momentum, no weight decay: the exact method.

Per-sample gradients come from torch.func: vmap over grad of a functional_call of the model, in
chunks of `chunk_size` sequences (by default the largest chunk whose estimated step memory fits
`memory_budget_mb`; a step that cannot fit at all is a ConfigError before it starts). They go
through the fake quantiser like any backward pass (its STE is vmap-safe). Two ways to get the
Gram matrix G = J J^T (docs/ief.md has the memory formula):

- jacobian='store' (default): J is kept (N x P in the parameters' dtype), G is accumulated in
  float64 over column blocks, and J^T w is a matrix-vector product. One per-sample pass per step.
- jacobian='recompute': only two chunks of J are held at a time; G is built chunk pair by chunk
  pair (K(K+1)/2 chunk passes for K chunks), and J^T w is one weighted backward of
  sum_n w_n l_n. The Jacobian memory no longer grows with N; the time grows as (N / chunk)^2.

The optimiser needs the batch, so it does not have a plain `step()`: the training loop calls
`natural_step(x, y)` (it advertises this with `needs_batch = True`), which returns the mean
token loss of the weights entering the step, like the loss a first-order loop would log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.optim import Optimizer

from qat_lab.errors import ConfigError
from qat_lab.optim.config import IEFConfig

MB = 2**20
GRAM_BLOCK = 16384
"""Columns (parameters) per block when accumulating the Gram matrix (see `gram`)."""


def gram(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b.T in float64 (b defaults to a).

    Float64 inputs: one exact product. Otherwise the product of each block of GRAM_BLOCK columns
    is taken in the inputs' dtype and the blocks are summed in float64: each entry's rounding
    error is that of a GRAM_BLOCK-long float32 dot product (~1e-7 relative, the precision the
    per-sample gradients themselves have), at the float32 matmul's speed (4x the float64 one
    on CPU) and without a float64 copy of J.
    """
    b = a if b is None else b
    if a.dtype == torch.float64 and b.dtype == torch.float64:
        return a @ b.T
    out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for j in range(0, a.shape[1], GRAM_BLOCK):
        out += (a[:, j:j + GRAM_BLOCK] @ b[:, j:j + GRAM_BLOCK].T).double()
    return out


@contextlib.contextmanager
def _quiet_vmap():
    """CPU flash attention has no vmap batching rule: torch loops over the sequences of a chunk
    instead (measured: no slower than the math kernel here) and warns about it; silence that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*performance drop because we have not yet implemented the batching rule")
        yield


def sample_labels(probs: torch.Tensor, samples: int) -> torch.Tensor:
    """`samples` draws from each row of probs (rows x V) by inverting the CDF: (rows x samples).

    Same distribution as torch.multinomial(probs, samples, replacement=True), ~10x faster on CPU
    for a batch's worth of 256-way distributions.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], samples, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_max_(probs.shape[-1] - 1)


ACTIVATION_FACTOR = 3.5
"""Peak autograd memory of a vmapped forward + backward per float the forward keeps (calibrated on
cpu-xs: measured ~7.5 MB per sequence of 128 tokens against 2.4 MB of kept forward tensors; the
backward's transients and vmap's per-sample copies make up the rest). docs/benchmarks_ief.md."""


def activation_bytes_per_sequence(model: nn.Module, seq_len: int, elem_bytes: int = 4) -> int:
    """Estimated autograd memory of one sequence's per-sample forward + backward (docs/ief.md).

    Per token and layer the forward keeps ~10 d + 4 kv + 3 f + H floats (norms, q/k/v and their
    norms and rotations, attention output and log-sum-exp, residuals, the MLP's three hidden
    tensors), plus ~4 V + 4 d at the embedding and the logits; ACTIVATION_FACTOR times that covers
    the backward. Models other than qat_lab's GPT get 0 (only the Jacobian terms are budgeted).
    """
    cfg = getattr(model, "cfg", None)
    vocab = getattr(model, "vocab_size", None)
    if cfg is None or vocab is None or not hasattr(cfg, "d_model"):
        return 0
    d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
    f = int(cfg.mlp_ratio * cfg.d_model)
    per_token = cfg.n_layer * (10 * d + 4 * kv + 3 * f + cfg.n_head) + 4 * vocab + 4 * d
    return int(ACTIVATION_FACTOR * seq_len * per_token * elem_bytes)


class NaturalGradient(Optimizer):
    """iEF / EF / SF natural-gradient descent (mode = cfg.name); see the module docstring.

        opt = NaturalGradient(model, [{"params": list(model.named_parameters()), "lr": 0.1}], IEFConfig())
        loss = opt.natural_step(x, y)      # x, y: (N, T) token ids and next-token targets

    `model` maps token ids (B, T) to logits (B, T, V); the loss is next-token cross-entropy. Every
    parameter of every group is updated by the same dtheta, scaled by its group's "lr" (which
    apply_step_hparams sets from "base_lr" and the schedule). `last_stats` holds diagnostics of the
    last step: damping, Gram scale, how far J dtheta is from its target, the update's norm and its
    cosine with the ordinary gradient.
    """

    needs_batch = True
    """The training loop must call natural_step(x, y) instead of backward + step()."""

    def __init__(self, model: nn.Module, params: Any, cfg: IEFConfig):
        super().__init__(params, {"lr": cfg.lr})
        self.model, self.cfg, self.mode = model, cfg, cfg.name
        names = {id(p): n for n, p in model.named_parameters()}
        self._params: list[torch.Tensor] = [p for g in self.param_groups for p in g["params"]]
        missing = [i for i, p in enumerate(self._params) if id(p) not in names]
        if missing:
            raise ValueError("NaturalGradient's parameters must all belong to `model`")
        self._names = [names[id(p)] for p in self._params]
        self._sizes = [p.numel() for p in self._params]
        self.n_params = sum(self._sizes)
        self.last_stats: dict[str, float] = {}
        self.chunk: int | None = cfg.chunk_size
        """Sequences per vmap call: cfg.chunk_size, or planned from the memory budget at the first step."""
        self._planned: tuple[int, int] | None = None

    # --- the public interface ------------------------------------------------------------------

    def step(self, closure=None):  # noqa: D102 - torch's signature, deliberately unusable
        raise RuntimeError("NaturalGradient needs the batch: call natural_step(x, y) instead of backward() + step()")

    def natural_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One update from the batch (x, y) of shape (N, T); returns the batch's mean token loss."""
        if x.ndim != 2 or x.shape != y.shape:
            raise ValueError(f"natural_step wants token ids x, y of equal shape (N, T); got {tuple(x.shape)}, {tuple(y.shape)}")
        if self._planned != tuple(x.shape):
            self.chunk = self.plan_chunk(*x.shape)
            self._planned = tuple(x.shape)
        params = {n: p.detach() for n, p in zip(self._names, self._params)}
        with _quiet_vmap():
            if self.mode == "sf":
                dtheta, loss = self._sf_direction(params, x, y)
            else:
                dtheta, loss = self._ief_direction(params, x, y)
        self._apply(dtheta)
        return loss

    @property
    def param_names(self) -> list[str]:
        """Names of the parameters in the order of J's columns."""
        return list(self._names)

    def per_sample_gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(J, l, s) of the batch at the current weights: J is (N x P), columns in `param_names`
        order; l_n the per-sample losses; s_n = ||d l_n / d z_n||^2 (zeros unless mode is iEF)."""
        if self.chunk is None:
            self.chunk = self.plan_chunk(*x.shape)
        params = {n: p.detach() for n, p in zip(self._names, self._params)}
        J = torch.empty(x.shape[0], self.n_params, dtype=self._params[0].dtype, device=x.device)
        loss = torch.empty(x.shape[0], dtype=J.dtype, device=x.device)
        s = torch.empty_like(loss)
        with _quiet_vmap():
            for c in self._chunks(x.shape[0]):
                _, loss[c], s[c] = self._jacobian(params, x[c], y[c], out=J[c])
        return J, loss, s

    def memory_estimate(self, batch_size: int, seq_len: int, chunk: int | None = None,
                        cfg: IEFConfig | None = None) -> dict[str, int]:
        """Estimated peak bytes of one step on (batch_size, seq_len) with `chunk` sequences per
        vmap call (default: the configured or planned chunk, else the whole batch), by term."""
        elem = self._params[0].element_size() if self._params else 4
        return memory_estimate(cfg or self.cfg, self.n_params, elem, batch_size, seq_len,
                               activation_bytes_per_sequence(self.model, seq_len, elem),
                               getattr(self.model, "vocab_size", 0), chunk or self.chunk)

    def _fit_chunk(self, batch_size: int, seq_len: int, cfg: IEFConfig) -> int | None:
        """The largest chunk (at most the batch's rows) whose estimate fits the budget, or None."""
        budget = cfg.memory_budget_mb * MB
        rows = batch_size * (cfg.sf_samples if cfg.name == "sf" else 1)
        fits = lambda c: self.memory_estimate(batch_size, seq_len, c, cfg)["total"] <= budget  # noqa: E731
        if not fits(1):
            return None
        lo, hi = 1, rows  # the estimate grows with the chunk: bisect for the last one that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    def plan_chunk(self, batch_size: int, seq_len: int) -> int:
        """The chunk size a step on (batch_size, seq_len) will use; ConfigError if it cannot fit
        optim.memory_budget_mb. Called before the first step on a new batch shape."""
        cfg = self.cfg
        budget = cfg.memory_budget_mb * MB
        if cfg.chunk_size is not None:
            est = self.memory_estimate(batch_size, seq_len, cfg.chunk_size)
            if est["total"] <= budget:
                return cfg.chunk_size
        else:
            chunk = self._fit_chunk(batch_size, seq_len, cfg)
            if chunk is not None:
                return chunk
            est = self.memory_estimate(batch_size, seq_len, 1)
        hints = []
        smaller = self._fit_chunk(batch_size, seq_len, cfg) if cfg.chunk_size is not None else None
        if smaller is not None:
            hints.append(f"set optim.chunk_size={smaller} (or null)")
        if cfg.jacobian == "store":
            other = dataclasses.replace(cfg, jacobian="recompute", chunk_size=None)
            fit = self._fit_chunk(batch_size, seq_len, other)
            if fit is not None:
                hints.append(f"use optim.jacobian=recompute (fits with chunks of {fit} sequences)")
        hints += ["lower data.batch_size", "raise optim.memory_budget_mb"]
        raise ConfigError(
            f"optim.memory_budget_mb={cfg.memory_budget_mb:g} is too small for optim={self.mode} on batches of "
            f"{batch_size} x {seq_len}: a step needs ~{est['total'] / MB:.0f} MB (Jacobian {est['jacobian'] / MB:.0f} MB "
            f"for {est['jacobian_rows']} x {self.n_params}, activations of {est['chunk']} sequences "
            f"{est['activations'] / MB:.0f} MB); " + ", or ".join([", ".join(hints[:-1]), hints[-1]])
        )

    # --- per-sample gradients ------------------------------------------------------------------

    def _loss_scale(self, seq_len: int) -> float:
        return 1.0 if self.cfg.per_sample_loss == "sum" else 1.0 / seq_len

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """(l_n, logits) of one sequence (x, y: (T,)) through the functional model."""
        logits = functional_call(self.model, params, (x.unsqueeze(0),))[0]  # (T, V), float32 from GPT
        return F.cross_entropy(logits, y, reduction="sum") * self._loss_scale(y.shape[0]), logits

    def _sample_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """l_n of one sequence, with (l_n, s_n) as aux: the function vmap(grad(.)) differentiates."""
        loss, logits = self._forward(params, x, y)
        if self.mode == "ief":
            # ||softmax(z) - onehot(y)||^2 = ||p||^2 - 2 p_y + 1, summed over tokens; d l_n / d z
            # carries the loss scale, so s_n carries its square. (No one_hot: it is not vmap-safe.)
            p = logits.detach().double().softmax(-1)  # cheap (T x V), and s is exact to float64
            p_y = p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            s = (p.square().sum(-1) - 2 * p_y + 1).sum() * self._loss_scale(y.shape[0]) ** 2
        else:
            s = torch.zeros((), dtype=torch.float64, device=loss.device)
        return loss, (loss.detach(), s)

    def _weighted_total(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor):
        """sum_n w_n l_n over rows, with (l, logits) as aux. Its gradient is J^T w: one backward
        through the same per-sequence (vmapped) forward whose per-sample gradients make J, so the
        product uses exactly the J whose Gram matrix was solved."""
        losses, logits = vmap(self._forward, in_dims=(None, 0, 0))(params, x, y)
        return (losses * weights.to(losses.dtype)).sum(), (losses.detach(), logits.detach())

    def _jacobian(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample gradients of the rows (x, y) as a (rows x P) matrix, with l_n and s_n."""
        grads, (loss, s) = vmap(grad(self._sample_loss, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
        rows = x.shape[0]
        if out is None:
            out = torch.empty(rows, self.n_params, dtype=self._params[0].dtype, device=x.device)
        offset = 0
        for name, size in zip(self._names, self._sizes):
            out[:, offset:offset + size] = grads.pop(name).reshape(rows, size)
            offset += size
        return out, loss, s

    def _chunks(self, rows: int) -> list[slice]:
        c = self.chunk or rows
        return [slice(i, min(i + c, rows)) for i in range(0, rows, c)]

    def _gram_and_aux(self, params, x, y, vec: torch.Tensor | None = None):
        """G = J J^T (float64), per-sample losses and s, J if stored, and J @ vec if vec is given."""
        rows = x.shape[0]
        chunks = self._chunks(rows)
        loss = torch.empty(rows, dtype=torch.float64, device=x.device)
        s = torch.empty_like(loss)
        jv = torch.empty_like(loss) if vec is not None else None
        if self.cfg.jacobian == "store":
            J = torch.empty(rows, self.n_params, dtype=self._params[0].dtype, device=x.device)
            for c in chunks:
                _, loss[c], s[c] = self._jacobian(params, x[c], y[c], out=J[c])
            if vec is not None:
                jv.copy_(J @ vec.to(J.dtype))
            return gram(J), loss, s, J, jv
        G = torch.empty(rows, rows, dtype=torch.float64, device=x.device)
        for i, a in enumerate(chunks):
            Ja, loss[a], s[a] = self._jacobian(params, x[a], y[a])
            G[a, a] = gram(Ja)
            if vec is not None:
                jv[a] = Ja @ vec.to(Ja.dtype)
            for b in chunks[i + 1:]:
                Jb, _, _ = self._jacobian(params, x[b], y[b])
                G[a, b] = gram(Ja, Jb)
                G[b, a] = G[a, b].T
                del Jb
            del Ja
        return G, loss, s, None, jv

    def _weighted_grad(self, params, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """J^T w = d/dtheta sum_n w_n l_n: one weighted backward per chunk, J never formed."""
        out = torch.zeros(self.n_params, dtype=self._params[0].dtype, device=x.device)
        for c in self._chunks(x.shape[0]):
            grads, _ = grad(self._weighted_total, has_aux=True)(params, x[c], y[c], weights[c])
            out += self._flatten(grads)
        return out

    def _flatten(self, grads: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([grads[n].reshape(-1) for n in self._names])

    def _damping(self, G: torch.Tensor) -> float:
        diag = G.diagonal()
        ref = float(diag.mean() if self.cfg.damping_ref == "mean" else diag.max())
        # An all-zero Jacobian has nothing to precondition: any positive lambda gives dtheta = 0
        # (iEF/EF) or g (SF) without dividing by zero.
        return self.cfg.damping_rel * ref if ref > 0 else 1.0

    # --- the directions ------------------------------------------------------------------------

    def _ief_direction(self, params, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        G, loss, s, J, _ = self._gram_and_aux(params, x, y)
        target = s if self.mode == "ief" else torch.ones_like(s)
        lam = self._damping(G)
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        w = torch.linalg.solve(G + lam * eye, target)
        dtheta = (J.T @ w.to(J.dtype)) if J is not None else self._weighted_grad(params, x, y, w)
        # Diagnostics from G alone: J dtheta = G w; the ordinary gradient is g = J^T 1.
        Gw = G @ w
        ones = torch.ones_like(w)
        g_dot, g_sq, d_sq = float(ones @ Gw), float(ones @ G @ ones), float(w @ Gw)
        self.last_stats = {
            "damping": lam, "gram_diag_mean": float(G.diagonal().mean()),
            "target_residual": float((Gw - target).norm() / target.norm()),
            "update_norm": math.sqrt(max(d_sq, 0.0)),
            "cos_grad": g_dot / math.sqrt(g_sq * d_sq) if g_sq > 0 and d_sq > 0 else 0.0,
        }
        return dtheta, self._mean_token_loss(loss, y)

    def _sf_direction(self, params, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        M = self.cfg.sf_samples
        N, T = y.shape
        # One forward + backward per chunk gives the gradient g = J^T 1 of the true labels, the
        # losses to log, and the logits that the labels are sampled from.
        g = torch.zeros(self.n_params, dtype=self._params[0].dtype, device=x.device)
        true_loss = torch.empty(N, dtype=torch.float64, device=x.device)
        samples = []
        for c in self._chunks(N):
            ones = torch.ones(y[c].shape[0], dtype=torch.float64, device=x.device)
            grads, (true_loss[c], logits) = grad(self._weighted_total, has_aux=True)(params, x[c], y[c], ones)
            g += self._flatten(grads)
            probs = logits.softmax(-1).reshape(-1, logits.shape[-1])
            samples.append(sample_labels(probs, M).view(-1, T, M))
            del logits, probs
        # Sample m of sequence n is row m * N + n.
        ys = torch.cat(samples).permute(2, 0, 1).reshape(M * N, T)
        xs = x.repeat(M, 1)
        G, _, _, J, jg = self._gram_and_aux(params, xs, ys, vec=g)
        lam = self._damping(G)
        eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        v = torch.linalg.solve(G + M * lam * eye, jg)
        jtv = (J.T @ v.to(J.dtype)) if J is not None else self._weighted_grad(params, xs, ys, v)
        dtheta = (g - jtv) / lam
        d_norm, g_norm = float(dtheta.norm()), float(g.norm())
        self.last_stats = {
            "damping": lam, "gram_diag_mean": float(G.diagonal().mean()),
            "target_residual": math.nan, "update_norm": d_norm,
            "cos_grad": float(g @ dtheta) / (g_norm * d_norm) if g_norm > 0 and d_norm > 0 else 0.0,
        }
        return dtheta, self._mean_token_loss(true_loss, y)

    def _mean_token_loss(self, per_sample: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = self._loss_scale(y.shape[1])
        return (per_sample.sum() / (scale * y.numel())).to(torch.float32)

    # --- the update ----------------------------------------------------------------------------

    @torch.no_grad()
    def _apply(self, dtheta: torch.Tensor) -> None:
        if self.cfg.normalise_update:
            norm = dtheta.norm()
            if norm > 0:
                dtheta = dtheta / norm
        lrs = [g["lr"] for g in self.param_groups for _ in g["params"]]
        factor = 1.0
        if self.cfg.clip_norm is not None:
            step_sq = 0.0
            offset = 0
            for lr, size in zip(lrs, self._sizes):
                step_sq += lr**2 * float(dtheta[offset:offset + size].square().sum())
                offset += size
            step_norm = math.sqrt(step_sq)
            if step_norm > self.cfg.clip_norm:
                factor = self.cfg.clip_norm / step_norm
        self.last_stats["step_norm_factor"] = factor
        offset = 0
        for p, lr, size in zip(self._params, lrs, self._sizes):
            p.add_(dtheta[offset:offset + size].view_as(p).to(p.dtype), alpha=-lr * factor)
            offset += size


def memory_estimate(cfg: IEFConfig, n_params: int, elem_bytes: int, batch_size: int, seq_len: int,
                    activation_bytes: int, vocab_size: int = 0, chunk: int | None = None) -> dict[str, int]:
    """Estimated peak bytes of one natural-gradient step, by term (docs/ief.md, "Memory").

    R = N rows (N x sf_samples for SF), c = min(chunk, R) sequences per vmap call (chunk defaults
    to cfg.chunk_size, else R), b = bytes per parameter element, P parameters, A =
    activation_bytes of one sequence:
        store:     R P b  +  c P b  +  c A  +  48 R^2  +  3 P b
        recompute: 2 c P b  +  c P b  +  c A  +  48 R^2  +  3 P b
    (J or two chunks of it; vmap's per-sample gradients of the chunk being computed; autograd
    memory of the chunk; the float64 Gram, its damped copy, the solver's workspace and a block
    product; dtheta, g and the update). SF adds the probabilities of one chunk for sampling: 2 c T V 4.
    """
    rows = batch_size * (cfg.sf_samples if cfg.name == "sf" else 1)
    c = min(chunk or cfg.chunk_size or rows, rows)
    P, b = n_params, elem_bytes
    est = {
        "jacobian": rows * P * b if cfg.jacobian == "store" else 2 * c * P * b,
        "vmap_grads": c * P * b,
        "activations": c * activation_bytes,
        "gram": 6 * rows * rows * 8,
        "vectors": 3 * P * b,
    }
    if cfg.name == "sf":
        est["vectors"] += 2 * min(c, batch_size) * seq_len * vocab_size * 4
    est["total"] = sum(est.values())
    return {**est, "jacobian_rows": rows, "chunk": c}


__all__ = ["NaturalGradient", "gram", "sample_labels", "activation_bytes_per_sequence", "memory_estimate"]
