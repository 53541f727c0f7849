"""The bit-width axis, without torch: the analysis and the sweep summary read it too, and
importing torch costs seconds there."""

from __future__ import annotations

import math

from qat_lab.errors import ConfigError

FP_BITS = 16
"""bits=16 is the unquantised baseline ("FP16": fp32 masters, bf16 autocast on GPU)."""


def validate_bits(bits: object, key: str = "bits") -> int:
    """Return bits as an int if it is 2..8 or 16, else raise a one-line ConfigError."""
    if (isinstance(bits, bool) or not isinstance(bits, (int, float)) or not math.isfinite(bits)
            or float(bits) != int(bits)):
        raise ConfigError(f"{key}={bits} is not valid: use an integer in 2..8, or 16 for no quantisation")
    b = int(bits)
    if b != FP_BITS and not 2 <= b <= 8:
        raise ConfigError(f"{key}={b} is not valid: use an integer in 2..8, or 16 for no quantisation")
    return b
