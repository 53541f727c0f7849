"""The quantiser's settings (the `quant` config group), bit-width included, without torch.

`bits` is the study's main axis: the top-level `bits` value reaches this config through
`quant.bits: ${bits}` (conf/quant/default.yaml), is validated here, and every module that
quantises reads it from here (apply_qat, the round trip, the grid distance, PTQ).
bits = 16 means "no fake quantisation" (the FP16 baseline: fp32 masters, bf16 autocast on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from qat_lab import validation as v
from qat_lab.errors import ConfigError

FP_BITS = 16
"""bits=16 is the unquantised baseline ("FP16")."""


def validate_bits(bits: object, key: str = "bits") -> int:
    """bits as an int if it is 2..8 or 16 (16.0 is 16), else a one-line ConfigError."""
    ok = v.is_number(bits) and float(bits).is_integer() and (int(bits) == FP_BITS or 2 <= int(bits) <= 8)
    if not ok:
        raise ConfigError(f"{key}={bits} is not valid: use an integer in 2..8, or 16 for no quantisation")
    return int(bits)


@dataclass
class QuantConfig:
    """How weights are fake-quantised (METHOD section 3)."""

    bits: int = FP_BITS
    """Bit-width: 2..8, or 16 for no quantisation. Set from the top-level `bits` axis."""
    range: Literal["narrow", "full"] = "narrow"
    """'narrow': codes -qmax..qmax (symmetric); 'full': -qmax-1..qmax (one extra negative code)."""
    scale_rule: Literal["absmax", "percentile"] = "absmax"
    """'absmax': s = max|W| / qmax; 'percentile': s = percentile(|W|) / qmax (clips outliers)."""
    percentile: float = 99.9
    """Percentile of |W| used when scale_rule='percentile'."""
    granularity: Literal["row", "group", "tensor"] = "row"
    """One scale per output 'row', per 'group' of group_size inputs within a row, or per 'tensor'."""
    group_size: int = 64
    """Inputs per scale group when granularity='group' (must divide every quantised matrix's input width)."""
    scale_floor: Literal["tiny", "inv_qmax"] = "tiny"
    """'tiny': floor s at 1e-8; 'inv_qmax': floor s at 1/qmax (a parameter-golf variant)."""
    quantise_embedding: bool = False
    """Also quantise the token embedding and output head (off in the paper's setup)."""
    probe_bits: int = 6
    """Grid used for the weight-to-grid distance of unquantised (bits=16) runs."""

    def __post_init__(self) -> None:
        self.bits = validate_bits(self.bits, "bits")
        v.check_choices(self, "quant")
        v.in_range("quant.percentile", self.percentile, 0.0, 100.0, low_open=True)
        self.group_size = v.integer("quant.group_size", self.group_size, 1)
        v.boolean("quant.quantise_embedding", self.quantise_embedding)
        if validate_bits(self.probe_bits, "quant.probe_bits") == FP_BITS:
            raise ConfigError("quant.probe_bits=16 is not a grid: use 2..8")
        self.probe_bits = int(self.probe_bits)

    @property
    def quantised(self) -> bool:
        """False for the FP16 baseline."""
        return self.bits != FP_BITS

    @property
    def grid_bits(self) -> int:
        """The grid a run is measured against: its own bits, or the probe bits for bits=16."""
        return self.probe_bits if self.bits == FP_BITS else self.bits

    def check_widths(self, widths: dict[str, int]) -> None:
        """With granularity=group, group_size must divide the input width of every quantised
        matrix (name -> width): a ConfigError in preflight instead of a failure in every job."""
        if self.granularity != "group":
            return
        bad = {name: w for name, w in widths.items() if w % self.group_size}
        if bad:
            name, width = next(iter(bad.items()))
            divisors = [d for d in range(1, width + 1) if all(w % d == 0 for w in widths.values())]
            raise ConfigError(f"quant.group_size={self.group_size} does not divide the input width {width} of {name}; "
                              f"group sizes that divide every quantised matrix: {', '.join(map(str, divisors[-6:]))}")


def qmax_of(bits: int) -> int:
    """The largest code of a signed symmetric grid: 2^(bits-1) - 1 (INT8 127, INT6 31, INT4 7)."""
    return 2 ** (bits - 1) - 1


