"""Fake quantiser (STE), QAT wrapping, round-trip evaluation and the weight-to-grid distance.

The torch-based names load on first use (PEP 562), so `from qat_lab.quant import FP_BITS`
stays cheap for code that never touches a tensor (the analysis, the sweep summary).
"""

from importlib import import_module

from qat_lab.quant.bits import FP_BITS, validate_bits

_LAZY = {
    "QuantConfig": "fake_quant", "fake_quantize": "fake_quant", "quantize_dequantize": "fake_quant",
    "grid_bits_for": "grid_distance", "grid_distance": "grid_distance",
    "apply_qat": "qat", "latent_weights": "qat", "quant_targets": "qat", "round_trip_weights": "qat",
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


__all__ = ["FP_BITS", "validate_bits", *_LAZY]
