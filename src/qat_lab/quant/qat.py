"""Which weights are quantised, QAT wrapping, and evaluation-time weight swaps.

The quantised set is every 2-D ``nn.Linear`` inside the transformer blocks (q, k, v, attn-out,
mlp-in, mlp-out); with ``quant.quantise_embedding`` the embedding and head too. The same set is
used for QAT, post-training quantisation (PTQ) and the weight-to-grid distance, so an FP16 run
is always measured against exactly the matrices a QAT run would quantise.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from qat_lab.models.gpt import GPT
from qat_lab.quant.config import QuantConfig
from qat_lab.quant.fake_quant import fake_quantise, quantise_dequantise


class FakeQuantLinear(nn.Linear):
    """An nn.Linear whose forward uses the fake-quantised weight; the Parameter is unchanged."""

    qcfg: QuantConfig
    enabled: bool

    @classmethod
    def wrap(cls, lin: nn.Linear, qcfg: QuantConfig) -> "FakeQuantLinear":
        # Re-class in place: keeps the very same Parameter objects (tying, optimiser routing).
        lin.__class__ = cls
        lin.qcfg, lin.enabled = qcfg, True
        return lin  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantise(self.weight, self.qcfg.bits, self.qcfg) if self.enabled else self.weight
        return F.linear(x, w.to(x.dtype) if w.dtype != x.dtype else w)


class FakeQuantEmbedding(nn.Embedding):
    """Embedding lookup through the fake-quantised table (only with quant.quantise_embedding)."""

    qcfg: QuantConfig
    enabled: bool

    @classmethod
    def wrap(cls, emb: nn.Embedding, qcfg: QuantConfig) -> "FakeQuantEmbedding":
        emb.__class__ = cls
        emb.qcfg, emb.enabled = qcfg, True
        return emb  # type: ignore[return-value]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        w = fake_quantise(self.weight, self.qcfg.bits, self.qcfg) if self.enabled else self.weight
        return F.embedding(idx, w)


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
    return [m for m in model.modules() if isinstance(m, (FakeQuantLinear, FakeQuantEmbedding))]


@contextmanager
def latent_weights(model: GPT) -> Iterator[None]:
    """Run the model on its latent (unquantised) weights: fake quantisation switched off."""
    mods = _fake_quant_modules(model)
    before = [m.enabled for m in mods]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m, was in zip(mods, before):
            m.enabled = was


@contextmanager
def round_trip_weights(model: GPT, qcfg: QuantConfig) -> Iterator[None]:
    """Replace the quantised set by its quantise -> dequantise round trip at qcfg.bits, then restore.

    This is how a deployed model would run; for a QAT run with the same settings it equals the
    fake-quantised forward pass exactly. At bits=16 it is the latent model. (Post-training
    quantisation at another bit-width passes dataclasses.replace(qcfg, bits=b).)
    """
    with latent_weights(model), torch.no_grad():
        if not qcfg.quantised:
            yield
            return
        saved = {}
        try:  # the swap itself is inside the try: a failure half-way still restores what was swapped
            for mod in quant_targets(model, qcfg).values():
                saved[mod] = mod.weight.detach().clone()
                mod.weight.copy_(quantise_dequantise(mod.weight, qcfg.bits, qcfg))
            yield
        finally:
            for mod, w in saved.items():
                mod.weight.copy_(w)
