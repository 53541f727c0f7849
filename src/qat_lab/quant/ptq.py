"""Strong post-training quantisation (METHOD section 9): clip search and GPTQ.

Everything here lands on exactly the grid of ``qat_lab.quant.fake_quant`` (signed symmetric codes,
qmax = 2^(bits-1) - 1, narrow or full range, one scale per row / group / tensor), and rounds the
same way (W * (1/s), round half to even, clamp), so a PTQ'd model is a model the QAT quantiser
could have produced. Only the choice of scales (clip search) and of the codes (GPTQ) changes.

- rtn:  round to nearest with the config's own scales: today's round trip.
- clip: per scale group, s = c * max|W_g| / qmax with c searched on a grid in (0, 1] to minimise
        the group's squared round-trip error. No data needed.
- gptq: Frantar et al. 2022 (arXiv 2210.17323): scales fixed first (clip search by default, or
        RTN's), then columns are quantised one at a time and each column's rounding error is
        pushed onto the columns not yet quantised, weighted by the inverse Hessian of the layer's
        output error. Needs H = 2 X^T X / n from calibration inputs (``collect_hessians``).

docs/ptq.md has the maths and every choice made here. ``gptq_reference`` is the same algorithm
written the slow, obvious way; the tests hold the fast one to it exactly.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from qat_lab.models.gpt import GPT
from qat_lab.quant.config import FP_BITS, QuantConfig
from qat_lab.quant.fake_quant import code_range, grouped, quantise_dequantise, quantise_with_scales, scale_floor, scales
from qat_lab.quant.qat import latent_weights, quant_targets, swapped_weights

PTQ_METHODS = ("rtn", "clip", "gptq")
"""The PTQ variants ``ptq_weights`` knows (see the module docstring)."""

GPTQ_SCALES = ("clip", "rtn")
"""Where GPTQ's fixed scales come from: the clip search, or the config's own RTN scales."""

CLIP_GRID: tuple[float, ...] = tuple(k / 100 for k in range(100, 0, -1))
"""Clip factors c tried by the clip search: 1.00, 0.99, ..., 0.01 (100 points, step 0.01).

c = 1 (plain absmax, no clipping) comes first: ties go to the earliest candidate, so the search
only clips when clipping strictly lowers the error, and can never do worse than absmax RTN.
"""

CLIP_CHUNK_ELEMENTS = 1 << 22
"""Clip search works on (groups x candidates x group size) tensors; this caps one chunk (16 MiB
of float32), so a large matrix is searched a few candidates at a time instead of all at once."""

GPTQ_DAMP = 0.01
"""Damping: H += GPTQ_DAMP * mean(diag H) * I, the paper's default (keeps H invertible)."""

GPTQ_BLOCK_SIZE = 128
"""Columns per lazy-update block, the paper's default. It changes the speed, and the result only
by float rounding of the running weights (not at all in the float64 tests)."""


# ---------------------------------------------------------------------------------------------
# Scales: the round trip with given scales, and the clip search


def clip_scales(w: torch.Tensor, bits: int, cfg: QuantConfig, grid: Sequence[float] = CLIP_GRID) -> torch.Tensor:
    """Per-group scales s = c * max|W_g| / qmax, with c in `grid` minimising ||W_g - Q(W_g)||^2.

    Groups follow cfg.granularity (row, group or tensor); the codes follow cfg.range and the scale
    is floored as cfg.scale_floor says. cfg.scale_rule is not used: the search starts from absmax
    (c = 1 is absmax exactly, and is always a candidate). Returns a tensor shaped exactly like
    ``scales(w, bits, cfg)``, for ``quantise_with_scales`` or ``gptq``.
    """
    cs = sorted({float(c) for c in grid}, reverse=True)
    if not cs or cs[0] != 1.0 or cs[-1] <= 0.0:
        raise ValueError("the clip grid must lie in (0, 1] and contain 1.0 (so the search is never worse than absmax)")
    w = w.detach()
    g = grouped(w, cfg)
    flat = g.reshape(-1, g.shape[-1])  # (groups, group size): one row per scale
    qmin, qmax = code_range(bits, cfg)
    floor = scale_floor(bits, cfg)
    # The same expression as scales() with scale_rule='absmax', so c = 1 reproduces it bit for bit.
    base = flat.abs().amax(dim=-1, keepdim=True) / qmax
    cands = torch.tensor(cs, dtype=w.dtype, device=w.device)

    best_err = torch.full((flat.shape[0],), float("inf"), dtype=w.dtype, device=w.device)
    best_s = base.squeeze(-1).clamp_min(floor)
    per_chunk = max(1, CLIP_CHUNK_ELEMENTS // max(flat.numel(), 1))
    for k0 in range(0, len(cs), per_chunk):
        s = (base * cands[k0:k0 + per_chunk]).clamp_min(floor)  # (groups, k): candidate scales
        # Round trip of every group under every candidate scale at once: (groups, k, group size).
        q = torch.clamp(torch.round(flat[:, None, :] * (1.0 / s)[..., None]), qmin, qmax) * s[..., None]
        err = (flat[:, None, :] - q).square().sum(dim=-1)  # (groups, k)
        # argmin returns the first minimum, i.e. the largest c among equals (the grid is descending);
        # the strict < keeps an earlier chunk's winner on a tie, for the same reason.
        idx = err.argmin(dim=-1, keepdim=True)
        chunk_err = err.gather(-1, idx).squeeze(-1)
        better = chunk_err < best_err
        best_err = torch.where(better, chunk_err, best_err)
        best_s = torch.where(better, s.gather(-1, idx).squeeze(-1), best_s)
    return best_s.reshape(g.shape[:-1] + (1,))


# ---------------------------------------------------------------------------------------------
# GPTQ


def _compute_dtype(w: torch.Tensor) -> torch.dtype:
    # float32 for speed; float64 only when asked for (the tests compare two algorithms exactly).
    return torch.float64 if w.dtype == torch.float64 else torch.float32


def _prepare(w: torch.Tensor, h: torch.Tensor, bits: int, cfg: QuantConfig, s: torch.Tensor | None,
             damp: float, act_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The steps GPTQ and its reference share: returns (W, H, S, perm) in the (permuted) column order.

    S holds every weight's scale (out x in), so the column loop reads column j's scales as
    S[:, j] whatever the granularity: one scale per row, the scale of the group that column j
    belongs to (in the ORIGINAL column order, so act-order never mixes groups), or one scale.
    """
    if w.dim() != 2:
        raise ValueError(f"GPTQ quantises a 2-D Linear weight (out x in), got shape {tuple(w.shape)}")
    n_in = w.shape[1]
    if h.shape != (n_in, n_in):
        raise ValueError(f"the Hessian must be {n_in} x {n_in} for a weight of shape {tuple(w.shape)}, "
                         f"got {tuple(h.shape)}")
    if damp < 0:
        raise ValueError(f"damp={damp} must be >= 0")
    dtype = _compute_dtype(w)
    W = w.detach().to(dtype).clone()
    H = h.detach().to(dtype=dtype, device=W.device).clone()
    # Scales are fixed here, from the original weights, before anything is changed: GPTQ moves the
    # weights column by column, and the grid must not move with them.
    s = scales(W, bits, cfg) if s is None else s.detach().to(dtype=dtype, device=W.device)
    if s.shape != grouped(W, cfg).shape[:-1] + (1,):
        raise ValueError(f"scales of shape {tuple(s.shape)} do not fit a {tuple(W.shape)} weight with "
                         f"granularity={cfg.granularity}: expected {tuple(grouped(W, cfg).shape[:-1] + (1,))}")
    S = s.expand(grouped(W, cfg).shape).reshape(W.shape).clone()

    # Dead inputs (always zero in the calibration data) carry no information about the output:
    # as in the reference implementation, give them H_jj = 1 so H stays invertible, and zero
    # their weights (they never reach the output, so any value is exact; 0 is the cheapest).
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    W[:, dead] = 0.0
    diag += damp * diag.mean()

    perm = None
    if act_order:
        # Columns with the largest input energy first, while there are still many columns left to
        # absorb their error. Stable, so ties keep the natural order (and both algorithms agree).
        perm = torch.argsort(diag, descending=True, stable=True)
        W, H, S = W[:, perm], H[perm][:, perm], S[:, perm]
    return W, H, S, perm


def _quantise_column(w: torch.Tensor, s: torch.Tensor, s_inv: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    # The round trip of fake_quant, for one column with its own scales (and their reciprocals).
    return torch.clamp(torch.round(w * s_inv), qmin, qmax) * s


def _finish(Q: torch.Tensor, perm: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(like.dtype)


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int, cfg: QuantConfig, s: torch.Tensor | None = None, *,
         damp: float = GPTQ_DAMP, block_size: int = GPTQ_BLOCK_SIZE, act_order: bool = False) -> torch.Tensor:
    """GPTQ of one Linear weight `w` (out x in) given its Hessian `h` = 2 X^T X / n (in x in).

    `s` are the fixed scales, shaped like ``scales(w, bits, cfg)`` (e.g. ``clip_scales``); None
    means ``scales(w, bits, cfg)``, the RTN scales. H is damped by damp * mean(diag H); dead
    inputs (H_jj = 0) get H_jj = 1 and a zero weight. act_order quantises columns by decreasing
    H_jj (any granularity: groups stay those of the original column order). Returns the
    dequantised weight, every value on the grid, with w's shape and dtype. Computed in float64
    if w is float64, else float32.
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    W, H, S, perm = _prepare(w, h, bits, cfg, s, damp, act_order)
    qmin, qmax = code_range(bits, cfg)
    S_inv = 1.0 / S

    # U: upper Cholesky factor of H^-1 (H^-1 = U^T U). Row j of U, from the diagonal on, is row j
    # of the inverse Hessian of the columns not yet quantised (after eliminating columns < j),
    # divided by the square root of its diagonal: all of OBS's updates, precomputed at once.
    L, info = torch.linalg.cholesky_ex(H)
    if int(info):
        raise ValueError(f"the damped Hessian is not positive definite (damp={damp}): raise damp")
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)

    n_in = W.shape[1]
    Q = torch.zeros_like(W)
    for i1 in range(0, n_in, block_size):
        i2 = min(i1 + block_size, n_in)
        W1 = W[:, i1:i2]  # a view: updates inside the block land in W
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            q = _quantise_column(W1[:, i], S[:, j], S_inv[:, j], qmin, qmax)
            Q[:, j] = q
            e = (W1[:, i] - q) / U1[i, i]
            E1[:, i] = e
            # Compensate the error on the block's columns not yet quantised...
            W1[:, i + 1:] -= e[:, None] * U1[i, i + 1:][None, :]
        # ...and on everything after the block in one matrix product (the "lazy batch" update:
        # the same sum of rank-1 updates, grouped so most of the work is a matmul).
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    return _finish(Q, perm, w)


def gptq_reference(w: torch.Tensor, h: torch.Tensor, bits: int, cfg: QuantConfig, s: torch.Tensor | None = None, *,
                   damp: float = GPTQ_DAMP, act_order: bool = False) -> torch.Tensor:
    """GPTQ written the slow, obvious way (the OBS/OBQ form), for the tests and to document the maths.

    Keep the whole inverse Hessian Hinv. For each column j in order: q_j = Q(w_j); the optimal
    compensation of the other weights (OBS) is w_k -= (w_j - q_j) / Hinv_jj * Hinv_jk for the
    columns k > j not yet quantised; then column j is removed from the problem by Gaussian
    elimination, Hinv -= Hinv[:, j] Hinv[j, :] / Hinv_jj. Same arguments and result as ``gptq``
    (which computes the same updates from a Cholesky factor, in blocks). O(in^3) per call.
    """
    W, H, S, perm = _prepare(w, h, bits, cfg, s, damp, act_order)
    qmin, qmax = code_range(bits, cfg)
    S_inv = 1.0 / S
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for j in range(W.shape[1]):
        Q[:, j] = _quantise_column(W[:, j], S[:, j], S_inv[:, j], qmin, qmax)
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]
        W[:, j + 1:] -= err[:, None] * Hinv[j, j + 1:][None, :]
        Hinv = Hinv - torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return _finish(Q, perm, w)


# ---------------------------------------------------------------------------------------------
# Calibration: one Hessian per quantised Linear


@torch.no_grad()
def collect_hessians(model: GPT, targets: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """{name: H = 2 X^T X / n} for every nn.Linear in `targets` (``quant_targets(model, qcfg)``).

    X is every token's input to the layer over `batches` ((x, y) token tensors; y is unused),
    n the number of tokens. One forward pass per batch over the model as it is, in eval mode:
    the caller must give the latent weights (inside ``latent_weights(model)`` if fake quantisation
    is on), which makes this the one-shot variant (see docs/ptq.md). Each batch's X^T X is formed
    in `dtype` and summed over batches in float64; H is returned in `dtype`. Embeddings in
    `targets` have no input matrix and are skipped. The hooks are removed whatever happens.
    """
    linears = {name: mod for name, mod in targets.items() if isinstance(mod, nn.Linear)}
    device = next(model.parameters()).device
    sums = {name: torch.zeros(mod.in_features, mod.in_features, dtype=torch.float64, device=device)
            for name, mod in linears.items()}
    rows = dict.fromkeys(linears, 0)
    # q, k and v read the very same input tensor: form its X^T X once and reuse it. The cache holds
    # the tensor itself, so the identity test cannot be fooled by a freed and reused id.
    cache: dict[str, object] = {"x": None}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if cache["x"] is not x:
                flat = x.detach().reshape(-1, x.shape[-1]).to(dtype)
                cache.update(x=x, xtx=flat.T @ flat, n=flat.shape[0])
            sums[name] += cache["xtx"]  # type: ignore[operator]
            rows[name] += cache["n"]  # type: ignore[operator]
        return hook

    # Forward PRE-hooks see the layer's input before its forward runs, so they work the same on a
    # plain nn.Linear and on a FakeQuantLinear (an nn.Linear subclass with its own forward).
    handles = [mod.register_forward_pre_hook(hook_for(name)) for name, mod in linears.items()]
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            # Eager forward (the undecorated call), also when trainer.compile=true compiled the model
            # in place: a compiled graph runs the layers without calling their Python hooks.
            model._call_impl(x.to(device))
            cache["x"] = cache["xtx"] = None  # let the batch's activations go
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unseen = [name for name, n in rows.items() if n == 0]
    if unseen:
        raise ValueError(f"no calibration input reached {', '.join(unseen)} (empty batches?)")
    return {name: (2.0 * sums[name] / rows[name]).to(dtype) for name in linears}


@dataclass
class Calibration:
    """Hessians of one calibration pass, with what it cost (for the run record)."""

    hessians: dict[str, torch.Tensor]
    batches: int
    tokens: int
    seconds: float

    def record(self) -> dict:
        return {"calib_batches": self.batches, "calib_tokens": self.tokens, "hessian_s": self.seconds}


def calibrate(model: GPT, qcfg: QuantConfig, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
              dtype: torch.dtype = torch.float32) -> Calibration:
    """``collect_hessians`` over the model's quantised set on its latent weights, timed."""
    start = time.perf_counter()
    with latent_weights(model):
        hessians = collect_hessians(model, quant_targets(model, qcfg), batches, dtype)
    seconds = time.perf_counter() - start
    return Calibration(hessians, len(batches), sum(int(x.numel()) for x, _ in batches), seconds)


# ---------------------------------------------------------------------------------------------
# Whole-model swaps


@dataclass
class PTQRecord:
    """What one ``ptq_weights`` swap did: the method, and the seconds spent computing the weights."""

    method: str
    """'rtn', 'clip' or 'gptq'."""
    bits: int
    gptq_scales: str
    """GPTQ's per-row scales: 'absmax' or 'clip' (the clip search's); recorded for every method."""
    seconds: float
    """Computing the quantised weights (Hessians excluded: they are shared by every GPTQ swap)."""
    matrices: int
    """Matrices swapped."""

    def record(self) -> dict:
        return asdict(self)


def ptq_weight(w: torch.Tensor, bits: int, cfg: QuantConfig, method: str, h: torch.Tensor | None = None, *,
               gptq_scales: str = "clip", damp: float = GPTQ_DAMP, block_size: int = GPTQ_BLOCK_SIZE,
               act_order: bool = False) -> torch.Tensor:
    """One matrix through one PTQ method ('rtn', 'clip' or 'gptq'); the dequantised result.

    'gptq' needs the Hessian `h`; without one (an embedding table) it falls back to round to
    nearest with the scales GPTQ would have used (`gptq_scales`: 'clip' or 'rtn').
    """
    _check_method(method, gptq_scales)
    if method == "rtn":
        return quantise_dequantise(w, bits, cfg)
    s = clip_scales(w, bits, cfg) if method == "clip" or gptq_scales == "clip" else scales(w, bits, cfg)
    if method == "clip" or h is None:
        return quantise_with_scales(w, s, bits, cfg)
    return gptq(w, h, bits, cfg, s, damp=damp, block_size=block_size, act_order=act_order)


def _check_method(method: str, gptq_scales: str) -> None:
    if method not in PTQ_METHODS:
        raise ValueError(f"PTQ method {method!r} is not one of {', '.join(PTQ_METHODS)}")
    if gptq_scales not in GPTQ_SCALES:
        raise ValueError(f"gptq_scales={gptq_scales!r} is not one of {', '.join(GPTQ_SCALES)}")


@contextmanager
def ptq_weights(model: GPT, qcfg: QuantConfig, bits: int, method: str,
                hessians: Mapping[str, torch.Tensor] | None = None, *, gptq_scales: str = "clip",
                damp: float = GPTQ_DAMP, block_size: int = GPTQ_BLOCK_SIZE,
                act_order: bool = False) -> Iterator[PTQRecord]:
    """Replace the quantised set by its PTQ'd weights (`method` in PTQ_METHODS), then restore them.

    Like ``round_trip_weights``: runs on the latent weights (fake quantisation off), under no_grad,
    restores the exact original weights on exit even after an exception, and is the latent model
    at bits=16. 'gptq' needs `hessians` from ``calibrate`` / ``collect_hessians`` for every
    quantised Linear. Yields a PTQRecord whose `seconds` is the time spent computing the weights.
    """
    _check_method(method, gptq_scales)
    targets = quant_targets(model, qcfg)
    if method == "gptq" and bits != FP_BITS:
        missing = [n for n, m in targets.items()
                   if isinstance(m, nn.Linear) and (hessians is None or n not in hessians)]
        if missing:
            raise ValueError(f"GPTQ needs a Hessian for every quantised Linear; missing: {', '.join(missing)}")
    info = PTQRecord(method, bits, gptq_scales, 0.0, 0)
    if bits == FP_BITS:
        with latent_weights(model):
            yield info
        return

    def new_weight(name: str, mod: nn.Module) -> torch.Tensor:
        start = time.perf_counter()
        h = hessians.get(name) if (method == "gptq" and hessians is not None) else None
        out = ptq_weight(mod.weight, bits, qcfg, method, h, gptq_scales=gptq_scales, damp=damp,
                         block_size=block_size, act_order=act_order)
        info.seconds += time.perf_counter() - start
        info.matrices += 1
        return out

    with swapped_weights(model, qcfg, new_weight):
        yield info


def ptq_costs(model: GPT, qcfg: QuantConfig, bits: int, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
              methods: Sequence[str] = PTQ_METHODS, **options) -> dict:
    """Seconds each PTQ method takes on the model's quantised set, and the calibration it used.

    Returns a flat dict for the run record: calib_batches, calib_tokens, hessian_s (0 and no pass
    when no method needs data), and '<method>_s' per method. `options` go to ``ptq_weights``
    (gptq_scales, damp, block_size, act_order). The model's weights are left as they were.
    """
    out: dict = {"calib_batches": 0, "calib_tokens": 0, "hessian_s": 0.0}
    hessians = None
    if "gptq" in methods:
        calib = calibrate(model, qcfg, batches)
        hessians = calib.hessians
        out.update(calib.record())
    for method in methods:
        with ptq_weights(model, qcfg, bits, method, hessians, **options) as info:
            pass
        out[f"{method}_s"] = info.seconds
    return out


__all__ = [
    "CLIP_GRID", "GPTQ_BLOCK_SIZE", "GPTQ_DAMP", "GPTQ_SCALES", "PTQ_METHODS", "Calibration", "PTQRecord",
    "calibrate", "clip_scales", "collect_hessians", "gptq", "gptq_reference", "ptq_costs", "ptq_weight",
    "ptq_weights",
]
