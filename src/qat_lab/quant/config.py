"""The quantiser's settings (the `quant` config group), bit-width included, without torch.

`bits` is the study's main axis: the top-level `bits` value reaches this config through
`quant.bits: ${bits}` (conf/quant/default.yaml), is validated here, and every module that
quantises reads it from here (apply_qat, the round trip, the grid distance, PTQ).
bits = 16 means "no fake quantisation" (the FP16 baseline: fp32 masters, bf16 autocast on GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    start: float = 0.0
    """Fraction of training before fake quantisation turns on: 0 = from initialisation (the
    study's setting); 1 = never: the run trains unquantised and is quantised after training (its
    val loss is then post-training quantisation, its latent loss an FP16 run's)."""
    start_lr_below: float | None = None
    """Instead of `start`: turn fake quantisation on at the first step whose LR multiplier is below
    this (speed-run practice: 0.15; with WSD this ties QAT to the warmdown). None = use `start`."""

    def __post_init__(self) -> None:
        self.bits = validate_bits(self.bits, "bits")
        v.check_choices(self, "quant")
        v.in_range("quant.percentile", self.percentile, 0.0, 100.0, low_open=True)
        self.group_size = v.integer("quant.group_size", self.group_size, 1)
        v.boolean("quant.quantise_embedding", self.quantise_embedding)
        if validate_bits(self.probe_bits, "quant.probe_bits") == FP_BITS:
            raise ConfigError("quant.probe_bits=16 is not a grid: use 2..8")
        self.probe_bits = int(self.probe_bits)
        self.start = v.in_range("quant.start", self.start, 0.0, 1.0,
                                hint="is not valid: use a fraction of training in [0, 1] (1 = never: PTQ)")
        if self.start_lr_below is not None:
            v.in_range("quant.start_lr_below", self.start_lr_below, 0.0, 1.0, low_open=True,
                       hint="is not valid: use an LR multiplier in (0, 1]")
            if self.start:
                raise ConfigError(f"quant.start={self.start:g} and quant.start_lr_below={self.start_lr_below:g}: "
                                  "set one of the two")
        if self.bits == FP_BITS and (self.start or self.start_lr_below is not None):
            key = "quant.start" if self.start else "quant.start_lr_below"
            raise ConfigError(f"{key}={self.start or self.start_lr_below:g} has no effect at bits=16 (nothing is "
                              "fake-quantised): leave it unset for the FP16 baseline")

    @classmethod
    def of_record(cls, config: dict, axes: dict) -> QuantConfig:
        """The quantiser a run record describes: its resolved `config`'s quant group.

        Records carry the bit-width as quant.bits. Records written before the quant group read
        `${bits}` (the first qatlab) hold it only as the `bits` axis: this is the one place that
        pairs that axis with the quantiser's settings, and only when quant.bits is missing.
        """
        quant = dict(config.get("quant") or {})
        if "bits" not in quant:
            quant["bits"] = axes["bits"]
        return v.build_dataclass(quant, "quant", cls)

    @property
    def quantised(self) -> bool:
        """False for the FP16 baseline."""
        return self.bits != FP_BITS

    @property
    def grid_bits(self) -> int:
        """The grid a run is measured against: its own bits, or the probe bits for bits=16."""
        return self.probe_bits if self.bits == FP_BITS else self.bits

    @property
    def start_label(self) -> str:
        """The QAT-start arm, readable: 'init', '0.5', 'lr<0.15', 'never' ('-' at bits=16)."""
        if not self.quantised:
            return "-"
        if self.start_lr_below is not None:
            return f"lr<{self.start_lr_below:g}"
        return "init" if self.start == 0 else "never" if self.start == 1 else f"{self.start:g}"

    def start_step(self, total_steps: int, multiplier) -> int | None:
        """The first step trained with fake quantisation on (None at bits=16; total_steps when it
        never turns on). `multiplier(t)` is the schedule's LR multiplier of update t (the trigger is
        deterministic: batch, schedule and step decide it, so a resumed run switches at the same step)."""
        if not self.quantised:
            return None
        if self.start_lr_below is not None:
            return next((t for t in range(total_steps) if multiplier(t) < self.start_lr_below), total_steps)
        return min(total_steps, round(self.start * total_steps))

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




PTQMethod = Literal["rtn", "clip", "gptq"]


@dataclass
class PTQConfig:
    """Post-training quantisation of every run's final weights (the `ptq` group; docs/ptq.md).

    Evaluation only: training never sees it. An FP16 run's PTQ losses are the PTQ arms QAT is
    compared with; a QAT run's show how its weights fare under another quantiser.
    """

    bits: list[int] = field(default_factory=lambda: [8, 6, 4])
    """Bit-widths quantised after training (the run's own bits are added)."""
    methods: list[PTQMethod] = field(default_factory=lambda: ["rtn", "clip", "gptq"])
    """'rtn' round to nearest (absmax scales), 'clip' per-row clip search, 'gptq' GPTQ with clip scales."""
    calibration_batches: int = 4
    """Training-split batches whose layer inputs give GPTQ its Hessians (a few suffice at CPU scale)."""

    def __post_init__(self) -> None:
        self.bits = [validate_bits(b, "ptq.bits") for b in self.bits]
        if FP_BITS in self.bits:
            raise ConfigError("ptq.bits=16 is not a grid: use 2..8")
        self.methods = [v.choice("ptq.methods", m, ("rtn", "clip", "gptq")) for m in self.methods]
        if "rtn" not in self.methods:
            raise ConfigError("ptq.methods must include rtn (the round trip every run's val loss is)")
        self.calibration_batches = v.integer("ptq.calibration_batches", self.calibration_batches, 1)
