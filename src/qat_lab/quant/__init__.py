"""Fake quantiser (STE), QAT wrapping, round-trip evaluation and the weight-to-grid distance."""

from qat_lab.quant.fake_quant import FP_BITS, QuantConfig, fake_quantize, quantize_dequantize, validate_bits
from qat_lab.quant.grid_distance import grid_bits_for, grid_distance
from qat_lab.quant.qat import apply_qat, latent_weights, quant_targets, round_trip_weights

__all__ = [
    "FP_BITS", "QuantConfig", "fake_quantize", "quantize_dequantize", "validate_bits",
    "grid_bits_for", "grid_distance", "apply_qat", "latent_weights", "quant_targets", "round_trip_weights",
]
