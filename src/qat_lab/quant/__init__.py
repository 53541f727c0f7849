"""Fake quantiser (STE), QAT wrapping, round-trip evaluation, PTQ and the weight-to-grid distance.

    config.py         QuantConfig (bit-width included), validate_bits, FP_BITS: no torch
    fake_quant.py     scales, the round trip, the STE fake quantiser, grid residuals
    qat.py            which matrices are quantised; QAT wrapping; latent / round-trip weight swaps
    grid_distance.py  weight-to-grid distance
    ptq.py            post-training quantisation: round to nearest, clip search, GPTQ

The torch-based names load on first use (PEP 562), so `from qat_lab.quant import FP_BITS`
stays cheap for code that never touches a tensor (the analysis, the sweep summary).
"""

from importlib import import_module

from qat_lab.quant.config import FP_BITS, QuantConfig, validate_bits

_LAZY = {
    "fake_quantise": "fake_quant", "quantise_dequantise": "fake_quant",
    "grid_distance": "grid_distance",
    "apply_qat": "qat", "latent_weights": "qat", "quant_targets": "qat", "round_trip_weights": "qat",
    "set_qat": "qat", "qat_is_on": "qat",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'qat_lab.quant' has no attribute {name!r}")
    module = import_module(f"qat_lab.quant.{_LAZY[name]}")
    # Bind every name of that submodule here. Importing a submodule binds its own name on the
    # package (qat_lab.quant.grid_distance would be the module, not the function), so this
    # must overwrite it.
    for other, where in _LAZY.items():
        if where == _LAZY[name]:
            globals()[other] = getattr(module, other)
    return globals()[name]


__all__ = ["FP_BITS", "QuantConfig", "validate_bits", *_LAZY]
