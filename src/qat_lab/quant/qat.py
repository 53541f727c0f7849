"""Which weights are quantised, QAT wrapping, and evaluation-time weight swaps.

The quantised set is every 2-D ``nn.Linear`` inside the transformer blocks (q, k, v, attn-out,
mlp-in, mlp-out); with ``quant.quantise_embedding`` the embedding and head too. The same set is
used for QAT, post-training quantisation (PTQ) and the weight-to-grid distance, so an FP16 run
is always measured against exactly the matrices a QAT run would quantise.

Whether fake quantisation is on is a 0-d bool *buffer* of each wrapped module (`qat_on`), read
with torch.where in forward, not a Python flag: torch.compile specialises on Python values, and
a speed-run record found afterwards that its compiled "late QAT" never switched on. A buffer is
an input of the compiled graph, so `set_qat` switches the compiled model too (tested against
eager), and vmap (iEF's per-sample gradients) and DDP (buffers are broadcast from rank 0) see it.
The price is that the round trip is computed also while QAT is off (late-QAT runs only).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from qat_lab.models.gpt import GPT
from qat_lab.quant.config import QuantConfig
from qat_lab.quant.fake_quant import fake_quantise, quantise_dequantise


class FakeQuantised:
    """What a wrapped module adds to its torch class: the quantiser's config, the `qat_on` switch,
    and the weight its forward sees (fake-quantised while qat_on, latent otherwise). The Parameter
    itself is never replaced."""

    qcfg: QuantConfig
    qat_on: torch.Tensor

    @classmethod
    def wrap(cls, mod: nn.Module, qcfg: QuantConfig) -> nn.Module:
        # Re-class in place: keeps the very same Parameter objects (tying, optimiser routing).
        mod.__class__ = cls
        mod.qcfg = qcfg
        # Not persistent: the state is a function of the step (QuantConfig.start_step), and a
        # state_dict keeps the same keys with QAT on, off, or absent (bits=16).
        mod.register_buffer("qat_on", torch.ones((), dtype=torch.bool, device=mod.weight.device), persistent=False)
        return mod

    def seen_weight(self) -> torch.Tensor:
        return torch.where(self.qat_on, fake_quantise(self.weight, self.qcfg.bits, self.qcfg), self.weight)


class FakeQuantLinear(FakeQuantised, nn.Linear):
    """An nn.Linear whose forward uses the fake-quantised weight while `qat_on`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.seen_weight()
        return F.linear(x, w.to(x.dtype) if w.dtype != x.dtype else w)


class FakeQuantEmbedding(FakeQuantised, nn.Embedding):
    """Embedding lookup through the fake-quantised table (only with quant.quantise_embedding)."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.seen_weight())


def quant_targets(model: GPT, qcfg: QuantConfig) -> dict[str, nn.Module]:
    """name -> module for every module whose weight is quantised (deduplicated by weight)."""
    targets: dict[str, nn.Module] = {}
    for name, mod in model.blocks.named_modules():
        if isinstance(mod, nn.Linear):
            targets[f"blocks.{name}"] = mod
    if qcfg.quantise_embedding:
        targets["wte"] = model.wte
        if model.lm_head.weight is not model.wte.weight:
            targets["lm_head"] = model.lm_head
    return targets


def apply_qat(model: GPT, qcfg: QuantConfig) -> list[str]:
    """Wrap the quantised set for QAT at qcfg.bits (no-op at bits=16). Returns the wrapped names."""
    if not qcfg.quantised:
        return []
    names = []
    for name, mod in quant_targets(model, qcfg).items():
        (FakeQuantEmbedding if isinstance(mod, nn.Embedding) else FakeQuantLinear).wrap(mod, qcfg)
        names.append(name)
    if qcfg.quantise_embedding and model.lm_head.weight is model.wte.weight:
        # The tied head reads the same table: quantise its matmul too.
        FakeQuantLinear.wrap(model.lm_head, qcfg)
        names.append("lm_head")
    return names


def _fake_quant_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, FakeQuantised)]


@torch.no_grad()
def set_qat(model: nn.Module, on: bool) -> None:
    """Switch fake quantisation on or off in every wrapped module (compiled models included)."""
    for m in _fake_quant_modules(model):
        m.qat_on.fill_(on)


def qat_is_on(model: nn.Module) -> bool | None:
    """Whether fake quantisation is on (None: nothing is wrapped, a bits=16 model)."""
    mods = _fake_quant_modules(model)
    return bool(mods[0].qat_on) if mods else None


@contextmanager
def latent_weights(model: GPT) -> Iterator[None]:
    """Run the model on its latent (unquantised) weights: fake quantisation switched off."""
    mods = _fake_quant_modules(model)
    before = [bool(m.qat_on) for m in mods]
    set_qat(model, False)
    try:
        yield
    finally:
        with torch.no_grad():
            for m, was in zip(mods, before):
                m.qat_on.fill_(was)


@contextmanager
def swapped_weights(model: GPT, qcfg: QuantConfig,
                    new_weight: Callable[[str, nn.Module], torch.Tensor]) -> Iterator[None]:
    """Replace each quantised matrix's weight by new_weight(name, module) (computed on the latent
    weights, fake quantisation off, no grad), and restore the exact originals on exit, even when
    the body or the swap itself raises half-way. The one weight swap of the project: the round
    trip below and the PTQ methods (quant/ptq.py) use it."""
    with latent_weights(model), torch.no_grad():
        saved = {}
        try:
            for name, mod in quant_targets(model, qcfg).items():
                replacement = new_weight(name, mod)
                saved[mod] = mod.weight.detach().clone()
                mod.weight.copy_(replacement)
            yield
        finally:
            for mod, w in saved.items():
                mod.weight.copy_(w)


@contextmanager
def round_trip_weights(model: GPT, qcfg: QuantConfig) -> Iterator[None]:
    """Replace the quantised set by its quantise -> dequantise round trip at qcfg.bits, then restore.

    This is how a deployed model would run; for a QAT run with the same settings it equals the
    fake-quantised forward pass exactly. At bits=16 it is the latent model. (Post-training
    quantisation at another bit-width passes dataclasses.replace(qcfg, bits=b).)
    """
    if not qcfg.quantised:
        with latent_weights(model):
            yield
        return
    with swapped_weights(model, qcfg, lambda name, mod: quantise_dequantise(mod.weight, qcfg.bits, qcfg)):
        yield
